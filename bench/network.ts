// The network collector's cost: per-packet cost of our TC programs against
// an empty TC program (kernel run-time statistics), and iperf3 TCP throughput
// and 64-byte UDP packets/s over a veth with the collector attached versus
// without, in interleaved rounds.
import path from 'node:path';
import { bpfObjectDir, type BpfObject, type NativeAddon, type ProgramInfo } from '../src/bpf/addon.js';
import { NetworkCollector } from '../src/collectors/network.js';
import { createTestNetwork, type Pod } from '../test/helpers/pods.js';
import { runIperf } from '../test/helpers/iperf.js';
import { collectorContext, medianRow, nsPerRun, runTotals, type BenchOptions, type BenchSection } from './common.js';

interface Attached {
  programs(): ProgramInfo[];
  detach(): Promise<void>;
}

/** The floor: an empty classifier on the same hooks. */
function attachEmpty(addon: NativeAddon, pods: readonly Pod[]): Attached {
  const object: BpfObject = new addon.BpfObject(path.join(bpfObjectDir, 'empty_tc.bpf.o'));
  object.load();
  for (const pod of pods) {
    const ifindex = addon.listLinks().find((l) => l.name === pod.hostVeth)?.ifindex;
    if (ifindex === undefined) throw new Error(`${pod.hostVeth} not found`);
    for (const direction of ['ingress', 'egress'] as const) object.attachTc('pp_empty_tc', ifindex, direction, 'tcx');
  }
  return { programs: () => object.programs(), detach: async () => object.close() };
}

/** The real collector, exactly as the agent runs it, limited to the benchmark's veths. */
async function attachCollector(addon: NativeAddon, pods: readonly Pod[]): Promise<Attached> {
  const collector = new NetworkCollector(collectorContext(addon, { collectors: { network: { attachMode: 'tcx', interfaces: { include: pods.map((p) => p.hostVeth) } } } }));
  await collector.start();
  return { programs: () => collector.programs(), detach: () => collector.stop() };
}

async function smallUdpPps(opts: BenchOptions, client: Pod, server: Pod): Promise<number> {
  const r = await runIperf({ client, server, protocol: 'udp', seconds: opts.seconds, bitrate: '0', length: 64 });
  return ((r.packetsSent ?? 0) - (r.lostPackets ?? 0)) / r.seconds;
}

async function tcpGbps(opts: BenchOptions, client: Pod, server: Pod): Promise<number> {
  const r = await runIperf({ client, server, protocol: 'tcp', seconds: opts.seconds });
  return (r.bytesReceived * 8) / r.seconds / 1e9;
}

export async function benchNetwork(addon: NativeAddon, opts: BenchOptions): Promise<BenchSection> {
  const net = await createTestNetwork();
  try {
    const [a, b] = [await net.addPod({ layout: 'plain' }), await net.addPod({ layout: 'plain' })] as [Pod, Pod];
    const pods = [a, b];
    const cost = { empty: [] as number[], collector: [] as number[] };
    const throughput = { without: [] as number[], with: [] as number[] };
    const pps = { without: [] as number[], with: [] as number[] };

    // Per-packet cost, with run-time statistics on only for this phase.
    const stats = addon.enableStats();
    try {
      for (let round = 0; round < opts.rounds; round++) {
        for (const variant of ['empty', 'collector'] as const) {
          const attached = variant === 'empty' ? attachEmpty(addon, pods) : await attachCollector(addon, pods);
          try {
            const before = runTotals(attached.programs());
            await smallUdpPps(opts, a, b);
            const after = runTotals(attached.programs());
            cost[variant].push(nsPerRun(before, after));
          } finally {
            await attached.detach();
          }
        }
      }
    } finally {
      addon.disableStats(stats);
    }

    // Workload slowdown, statistics off, interleaved.
    for (let round = 0; round < opts.rounds; round++) {
      throughput.without.push(await tcpGbps(opts, a, b));
      pps.without.push(await smallUdpPps(opts, a, b));
      const attached = await attachCollector(addon, pods);
      try {
        throughput.with.push(await tcpGbps(opts, a, b));
        pps.with.push(await smallUdpPps(opts, a, b));
      } finally {
        await attached.detach();
      }
    }

    return {
      rows: [
        medianRow('TC cost per packet (ns, bpf_stats)', 'empty TC program', cost.empty, cost.collector),
        medianRow('iperf3 TCP over veth (Gbit/s)', 'no agent', throughput.without, throughput.with),
        medianRow('64-byte UDP over veth (packets/s)', 'no agent', pps.without, pps.with),
      ],
      samples: { cost, throughput, pps },
    };
  } finally {
    await net.destroy();
  }
}
