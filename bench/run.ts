// npm run bench: what ProbePilot costs, as ratios taken in one run on this
// machine (never absolute targets: the machine is shared). Each section
// measures a collector against a floor or a peer in interleaved rounds:
//   * network: TC programs vs an empty TC program; iperf3 TCP and 64-byte
//     UDP over a veth with the collector vs without;
//   * sched: its programs vs an equivalent bpftrace run-queue-latency script;
//   * syscalls: its programs vs empty raw_syscalls programs; a getppid loop
//     with the collector vs without;
//   * api: GET /api/v1/flows over ~10,000 flow entries vs GET /healthz, and
//     the agent's longest event-loop stall while serving each;
//   * scrape: GET /metrics (gzip) at ~20k and ~100k series (synthetic
//     syscall entries) vs GET /healthz, /healthz meanwhile, and the stall.
// Options: --quick (1 short round, for CI), --rounds N, --seconds S,
// --only a,b (just those sections, e.g. --only api).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadAddon } from '../src/bpf/addon.js';
import type { BenchOptions, BenchSection } from './common.js';
import { benchApi } from './api.js';
import { benchNetwork } from './network.js';
import { benchScrape } from './scrape.js';
import { benchSched } from './sched.js';
import { benchSyscalls } from './syscalls.js';

const { values: args } = parseArgs({
  options: { quick: { type: 'boolean', default: false }, rounds: { type: 'string' }, seconds: { type: 'string' }, only: { type: 'string' } },
});
const opts: BenchOptions = {
  quick: args.quick ?? false,
  rounds: Number(args.rounds ?? (args.quick ? 1 : 5)),
  seconds: Number(args.seconds ?? (args.quick ? 1 : 4)),
};

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the benchmark loads BPF programs and creates network namespaces: run it as root');
  const addon = loadAddon();
  const runners: Record<string, () => Promise<BenchSection>> = {
    network: () => benchNetwork(addon, opts),
    sched: () => benchSched(addon, opts),
    syscalls: () => benchSyscalls(addon, opts),
    api: () => benchApi(opts),
    scrape: () => benchScrape(opts),
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
  console.log('| measure | baseline | baseline value | with ProbePilot | ratio |');
  console.log('| --- | --- | ---: | ---: | ---: |');
  for (const r of rows) console.log(`| ${r.measure} | ${r.baseline} | ${format(r.base)} | ${format(r.value)} | ${r.ratio.toFixed(3)} |`);

  const results = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/results');
  mkdirSync(results, { recursive: true });
  const file = path.join(results, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const samples = Object.fromEntries(Object.entries(sections).map(([name, s]) => [name, s.samples]));
  writeFileSync(file, `${JSON.stringify({ ...opts, samples, rows }, null, 2)}\n`);
  console.log(`\nraw samples: ${path.relative(process.cwd(), file)}`);
}

await main();
