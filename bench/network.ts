// The network collector's cost: per-packet cost of our TC programs against
// an empty TC program and against a plain per-CPU counter classifier (kernel
// run-time statistics), and iperf3 TCP throughput
// and 64-byte UDP packets/s over a veth with the collector attached versus
// without, in interleaved rounds; and the 5-tuple flow table's share of
// both (the collector with collectors.network.flowTable off as the peer).
import path from 'node:path';
import { bpfObjectDir, type BpfObject, type NativeAddon, type ProgramInfo } from '../src/bpf/addon.js';
import { dnsCollector } from '../src/collectors/dns.js';
import { NetworkCollector } from '../src/collectors/network.js';
import { createTestNetwork, type Pod } from '../test/helpers/pods.js';
import { runIperf } from '../test/helpers/iperf.js';
import { collectorContext, medianRow, withTarget, nsPerRun, runTotals, type BenchOptions, type BenchSection } from './common.js';

interface Attached {
  programs(): ProgramInfo[];
  detach(): Promise<void>;
}

/** A benchmark classifier (bench/bpf/NAME.bpf.o, program pp_NAME) on the same hooks: the empty one is the floor, the counter the peer. */
function attachClassifier(addon: NativeAddon, pods: readonly Pod[], name: 'empty_tc' | 'counter_tc'): Attached {
  const object: BpfObject = new addon.BpfObject(path.join(bpfObjectDir, `${name}.bpf.o`));
  object.load();
  for (const pod of pods) {
    const ifindex = addon.listLinks().find((l) => l.name === pod.hostVeth)?.ifindex;
    if (ifindex === undefined) throw new Error(`${pod.hostVeth} not found`);
    for (const direction of ['ingress', 'egress'] as const) object.attachTc(`pp_${name}`, ifindex, direction, 'tcx');
  }
  return { programs: () => object.programs(), detach: async () => object.close() };
}

/** The real collector, exactly as the agent runs it, limited to the benchmark's veths. */
async function attachCollector(addon: NativeAddon, pods: readonly Pod[], flowTable = true): Promise<Attached> {
  const network = { attachMode: 'tcx', interfaces: { include: pods.map((p) => p.hostVeth) }, flowTable: { enabled: flowTable } } as const;
  const collector = new NetworkCollector(collectorContext(addon, { collectors: { network } }));
  await collector.start();
  return { programs: () => collector.programs(), detach: () => collector.stop() };
}

/** The DNS collector on the same veths: what it adds per packet that is not DNS (parse, port check). */
async function attachDns(addon: NativeAddon, pods: readonly Pod[]): Promise<Attached> {
  const collector = dnsCollector(collectorContext(addon, { collectors: { network: { attachMode: 'tcx', interfaces: { include: pods.map((p) => p.hostVeth) } } } }));
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
    const cost = { empty: [] as number[], counter: [] as number[], noFlowTable: [] as number[], collector: [] as number[], dns: [] as number[] };
    const throughput = { without: [] as number[], with: [] as number[] };
    const pps = { without: [] as number[], noFlowTable: [] as number[], with: [] as number[] };

    // Per-packet cost, with run-time statistics on only for this phase.
    const stats = addon.enableStats();
    try {
      for (let round = 0; round < opts.rounds; round++) {
        for (const variant of ['empty', 'counter', 'noFlowTable', 'collector', 'dns'] as const) {
          const attached =
            variant === 'empty' || variant === 'counter'
              ? attachClassifier(addon, pods, variant === 'empty' ? 'empty_tc' : 'counter_tc')
              : variant === 'dns'
                ? await attachDns(addon, pods)
                : await attachCollector(addon, pods, variant === 'collector');
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
      const withoutTable = await attachCollector(addon, pods, false);
      try {
        pps.noFlowTable.push(await smallUdpPps(opts, a, b));
      } finally {
        await withoutTable.detach();
      }
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
        withTarget(medianRow('TC cost per packet vs a counter (ns, bpf_stats)', 'per-CPU counter TC program', cost.counter, cost.collector), 'ratio ≤ 1', (r) => r.ratio <= 1),
        medianRow('DNS TC cost per non-DNS packet (ns, bpf_stats)', 'empty TC program', cost.empty, cost.dns),
        medianRow('iperf3 TCP over veth (Gbit/s)', 'no agent', throughput.without, throughput.with),
        withTarget(medianRow('64-byte UDP over veth (packets/s)', 'no agent', pps.without, pps.with), 'ratio ≥ 0.97', (r) => r.ratio >= 0.97),
        medianRow('TC cost per packet (ns, bpf_stats), flow table on', 'flow table off', cost.noFlowTable, cost.collector),
        medianRow('64-byte UDP over veth (packets/s), flow table on', 'flow table off', pps.noFlowTable, pps.with),
      ],
      samples: { cost, throughput, pps },
    };
  } finally {
    await net.destroy();
  }
}
