// npm run bench: what the network collector costs, as ratios taken in one
// run on this machine (never absolute targets: the machine is shared).
//   * per-packet cost of our TC programs against an empty TC program, from
//     the kernel's run-time statistics;
//   * iperf3 TCP throughput and 64-byte UDP packets/s over a veth with the
//     collector attached versus without, in interleaved rounds (median).
// Options: --quick (1 round of 1 s, for CI), --rounds N, --seconds S.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bpfObjectDir, loadAddon, type BpfObject, type NativeAddon, type ProgramInfo } from '../src/bpf/addon.js';
import { resolveConfig } from '../src/config.js';
import { createLogger } from '../src/log.js';
import { CgroupPaths } from '../src/identity/cgroups.js';
import { NetnsWorkloads } from '../src/identity/netns.js';
import { StandaloneIdentity } from '../src/identity/identity.js';
import { NetworkCollector } from '../src/collectors/network.js';
import { findCgroup2Mount } from '../src/system/mounts.js';
import { createTestNetwork, type Pod } from '../test/helpers/pods.js';
import { runIperf } from '../test/helpers/iperf.js';

const { values: options } = parseArgs({
  options: { quick: { type: 'boolean', default: false }, rounds: { type: 'string' }, seconds: { type: 'string' } },
});
const rounds = Number(options.rounds ?? (options.quick ? 1 : 5));
const seconds = Number(options.seconds ?? (options.quick ? 1 : 4));

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
  const config = resolveConfig({ file: { collectors: { network: { attachMode: 'tcx', interfaces: { include: pods.map((p) => p.hostVeth) } } } } });
  const identity = new StandaloneIdentity(new CgroupPaths(findCgroup2Mount() ?? '/nonexistent'), new NetnsWorkloads((p) => addon.netnsId(p)));
  const collector = new NetworkCollector({ config, log: createLogger('warn'), addon, identity });
  await collector.start();
  return { programs: () => collector.programs(), detach: () => collector.stop() };
}

function runTotals(programs: ProgramInfo[]): { runs: number; timeNs: number } {
  return { runs: programs.reduce((n, p) => n + p.runCount, 0), timeNs: programs.reduce((n, p) => n + p.runTimeNs, 0) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function smallUdpPps(client: Pod, server: Pod): Promise<number> {
  const r = await runIperf({ client, server, protocol: 'udp', seconds, bitrate: '0', length: 64 });
  return ((r.packetsSent ?? 0) - (r.lostPackets ?? 0)) / r.seconds;
}

async function tcpGbps(client: Pod, server: Pod): Promise<number> {
  const r = await runIperf({ client, server, protocol: 'tcp', seconds });
  return (r.bytesReceived * 8) / r.seconds / 1e9;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the benchmark loads BPF programs and creates network namespaces: run it as root');
  const addon = loadAddon();
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
      for (let round = 0; round < rounds; round++) {
        for (const variant of ['empty', 'collector'] as const) {
          const attached = variant === 'empty' ? attachEmpty(addon, pods) : await attachCollector(addon, pods);
          try {
            const before = runTotals(attached.programs());
            await smallUdpPps(a, b);
            const after = runTotals(attached.programs());
            cost[variant].push((after.timeNs - before.timeNs) / (after.runs - before.runs));
          } finally {
            await attached.detach();
          }
        }
      }
    } finally {
      addon.disableStats(stats);
    }

    // Workload slowdown, statistics off, interleaved.
    for (let round = 0; round < rounds; round++) {
      throughput.without.push(await tcpGbps(a, b));
      pps.without.push(await smallUdpPps(a, b));
      const attached = await attachCollector(addon, pods);
      try {
        throughput.with.push(await tcpGbps(a, b));
        pps.with.push(await smallUdpPps(a, b));
      } finally {
        await attached.detach();
      }
    }

    const rows = [
      { measure: 'TC cost per packet (ns, bpf_stats)', baseline: 'empty TC program', base: median(cost.empty), value: median(cost.collector) },
      { measure: 'iperf3 TCP over veth (Gbit/s)', baseline: 'no agent', base: median(throughput.without), value: median(throughput.with) },
      { measure: '64-byte UDP over veth (packets/s)', baseline: 'no agent', base: median(pps.without), value: median(pps.with) },
    ].map((r) => ({ ...r, ratio: r.value / r.base }));

    const format = (n: number): string => (n >= 1000 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2));
    console.log(`\nProbePilot network benchmark: ${rounds} round(s) of ${seconds} s, medians\n`);
    console.log('| measure | baseline | baseline value | with ProbePilot | ratio |');
    console.log('| --- | --- | ---: | ---: | ---: |');
    for (const r of rows) console.log(`| ${r.measure} | ${r.baseline} | ${format(r.base)} | ${format(r.value)} | ${r.ratio.toFixed(3)} |`);

    const results = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/results');
    mkdirSync(results, { recursive: true });
    const file = path.join(results, `network-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify({ rounds, seconds, samples: { cost, throughput, pps }, rows }, null, 2)}\n`);
    console.log(`\nraw samples: ${path.relative(process.cwd(), file)}`);
  } finally {
    await net.destroy();
  }
}

await main();
