// npm run bench: what ProbePilot costs, as ratios taken in one run on this
// machine (the machine is shared: issue #9's targets are a column of the
// table, pass or miss, never a test assertion). Each section measures a
// collector against a floor or a peer in interleaved rounds:
//   * network: TC programs vs an empty TC program and vs a plain per-CPU
//     counter classifier; iperf3 TCP and 64-byte UDP over a veth with the
//     collector vs without;
//   * sched: its programs vs an equivalent bpftrace run-queue-latency script;
//     a pipe ping-pong with the collector vs without;
//   * syscalls: its programs vs empty raw_syscalls programs and vs a bpftrace
//     per-cgroup syscall count; a getppid loop with the collector vs without;
//   * api: GET /api/v1/flows over ~10,000 flow entries vs GET /healthz, and
//     the agent's longest event-loop stall while serving each;
//   * scrape: GET /metrics (gzip) at ~20k and ~100k series (synthetic
//     syscall entries) vs GET /healthz, /healthz meanwhile, the stall, the
//     agent's CPU per scrape and per idle second, and its RSS;
//   * security: an exec loop and an open/close loop with the security probes
//     vs without, and vs a bpftrace script doing the same work.
//   * maps: the addon's batch read of a big syscall_stats per 10k entries
//     vs an empty map's read and vs bpftool map dump;
//   * otlp: the agent's CPU per OTLP push of ~20k points (vs an agent not
//     exporting, side by side) against a /metrics scrape of the same table;
//   * scale (with --scale): N kubelet-shaped pods with live processes, a
//     share of them with netns, veth and traffic, series in the syscalls,
//     sched and network collectors; scrape, stall, CPU, RSS, series.
// Options: --quick (1 short round, for CI), --rounds N, --seconds S,
// --only a,b (just those sections, e.g. --only api), --scale [--pods N]
// [--network-share F] (N pods, default 1,000; share F with a network,
// default 0.1).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadAddon } from '../src/bpf/addon.js';
import type { BenchOptions, BenchSection } from './common.js';
import { benchApi } from './api.js';
import { benchMaps } from './maps.js';
import { benchNetwork } from './network.js';
import { benchOtlp } from './otlp.js';
import { benchScale } from './scale.js';
import { benchScrape } from './scrape.js';
import { benchSched } from './sched.js';
import { benchSecurity } from './security.js';
import { benchSyscalls } from './syscalls.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    seconds: { type: 'string' },
    only: { type: 'string' },
    scale: { type: 'boolean', default: false },
    pods: { type: 'string' },
    'network-share': { type: 'string' },
  },
});
const opts: BenchOptions = {
  quick: args.quick ?? false,
  rounds: Number(args.rounds ?? (args.quick ? 1 : 5)),
  seconds: Number(args.seconds ?? (args.quick ? 1 : 4)),
};
const scale = { pods: Number(args.pods ?? 1000), networkShare: Number(args['network-share'] ?? 0.1) };
if (!Number.isInteger(scale.pods) || scale.pods < 1) throw new Error(`--pods: a whole number of pods ≥ 1, not ${args.pods}`);
if (!(scale.networkShare >= 0 && scale.networkShare <= 1)) throw new Error(`--network-share: a share between 0 and 1, not ${args['network-share']}`);
if (!args.scale && (args.pods !== undefined || args['network-share'] !== undefined)) throw new Error('--pods and --network-share go with --scale');

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the benchmark loads BPF programs and creates network namespaces: run it as root');
  const addon = loadAddon();
  const runners: Record<string, () => Promise<BenchSection>> = {
    network: () => benchNetwork(addon, opts),
    sched: () => benchSched(addon, opts),
    syscalls: () => benchSyscalls(addon, opts),
    api: () => benchApi(opts),
    scrape: () => benchScrape(opts),
    security: () => benchSecurity(addon, opts),
    maps: () => benchMaps(addon, opts),
    otlp: () => benchOtlp(opts),
    ...(args.scale ? { scale: () => benchScale(opts, scale) } : {}),
  };
  const only = args.only?.split(',') ?? Object.keys(runners);
  const unknown = only.filter((name) => !(name in runners));
  if (unknown.length) throw new Error(`--only: no section ${unknown.join(', ')}; the sections are ${Object.keys(runners).join(', ')}`);
  const sections: Record<string, BenchSection> = {};
  // One after another: sections running at once would measure each other.
  for (const name of only) sections[name] = await runners[name]!();
  const rows = Object.values(sections).flatMap((s) => s.rows);

  const format = (n: number): string => (n >= 1000 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2));
  console.log(`\nProbePilot benchmark: ${opts.rounds} round(s), ${opts.seconds} s per timed run, medians; ratio = with ProbePilot / baseline\n`);
  console.log('| measure | baseline | baseline value | with ProbePilot | ratio | target | met |');
  console.log('| --- | --- | ---: | ---: | ---: | --- | --- |');
  for (const r of rows) {
    const met = r.met === undefined ? '' : r.met ? 'pass' : 'miss';
    console.log(`| ${r.measure} | ${r.baseline} | ${format(r.base)} | ${format(r.value)} | ${r.ratio.toFixed(3)} | ${r.target ?? ''} | ${met} |`);
  }

  const results = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/results');
  mkdirSync(results, { recursive: true });
  const file = path.join(results, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const samples = Object.fromEntries(Object.entries(sections).map(([name, s]) => [name, s.samples]));
  writeFileSync(file, `${JSON.stringify({ ...opts, samples, rows }, null, 2)}\n`);
  console.log(`\nraw samples: ${path.relative(process.cwd(), file)}`);
}

await main();
