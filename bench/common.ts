// What every benchmark section shares: its options, rows of the one table
// `npm run bench` prints, and the collector context the agent would build.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { NativeAddon, ProgramInfo } from '../src/bpf/addon.js';
import type { CollectorContext } from '../src/collectors/collector.js';
import { resolveConfig } from '../src/config.js';
import { CgroupPaths } from '../src/identity/cgroups.js';
import { StandaloneIdentity } from '../src/identity/identity.js';
import { NetnsWorkloads } from '../src/identity/netns.js';
import { createLogger } from '../src/log.js';
import { findCgroup2Mount } from '../src/system/mounts.js';

export interface BenchOptions {
  rounds: number;
  /** Length of one measurement, for sections that run for a time. */
  seconds: number;
  quick: boolean;
}

/** One line of the table: ratio = value / base, so > 1 means ProbePilot costs more or runs faster, as the measure says. */
export interface BenchRow {
  measure: string;
  baseline: string;
  base: number;
  value: number;
  ratio: number;
  /** Issue #9's target for this row, as printed, and whether this run met it (targets are benchmark rows, never test assertions). */
  target?: string;
  met?: boolean;
}

/** The row with its target: `text` as printed, `met` judged on the row. */
export function withTarget(row: BenchRow, text: string, met: (row: BenchRow) => boolean): BenchRow {
  return { ...row, target: text, met: met(row) };
}

export interface BenchSection {
  rows: BenchRow[];
  /** Raw samples, kept in the results file. */
  samples: Record<string, Record<string, number[]>>;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The p-th percentile (nearest rank). */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** A row from the medians of interleaved samples. */
export function medianRow(measure: string, baseline: string, base: readonly number[], value: readonly number[]): BenchRow {
  const row = { measure, baseline, base: median(base), value: median(value) };
  return { ...row, ratio: row.value / row.base };
}

export function runTotals(programs: readonly ProgramInfo[]): { runs: number; timeNs: number } {
  return { runs: programs.reduce((n, p) => n + p.runCount, 0), timeNs: programs.reduce((n, p) => n + p.runTimeNs, 0) };
}

/** Nanoseconds per program run between two snapshots of run-time statistics. */
export function nsPerRun(before: { runs: number; timeNs: number }, after: { runs: number; timeNs: number }): number {
  return (after.timeNs - before.timeNs) / (after.runs - before.runs);
}

/** The context the agent gives collectors, on its defaults plus `file` (config file content), pins off: a benchmark must neither reuse nor leave a running agent's state. */
export function collectorContext(addon: NativeAddon, file: unknown = {}): CollectorContext {
  const identity = new StandaloneIdentity(new CgroupPaths(findCgroup2Mount() ?? '/nonexistent'), new NetnsWorkloads((p) => addon.netnsId(p)));
  const config = resolveConfig({ file });
  return { config: { ...config, pins: { ...config.pins, enabled: false } }, log: createLogger('warn'), addon, identity };
}

/**
 * The agent's longest event-loop delay since its previous exposition
 * (prom-client's monitorEventLoopDelay, reset at each collection) and its CPU
 * time so far, in ms, from an exposition's text. A scan for the two
 * unlabelled samples, not a parse: parsing 100k series here after every
 * scrape took more CPU than the agent under measurement, on the same cores.
 */
export function agentGauges(exposition: Buffer): { stallMs: number; cpuMs: number } {
  const value = (name: string): number => {
    const at = exposition.indexOf(`\n${name} `);
    if (at < 0) return NaN;
    const end = exposition.indexOf('\n', at + 1);
    return Number(exposition.toString('latin1', at + name.length + 2, end < 0 ? exposition.length : end)) * 1000;
  };
  return { stallMs: value('probepilot_nodejs_eventloop_lag_max_seconds'), cpuMs: value('probepilot_process_cpu_seconds_total') };
}

/** CPU time (user + system) a process has used so far, in ms, from /proc/PID/stat. */
export function processCpuMs(pid: number): number {
  // Fields after the command name, which may hold spaces and parentheses: utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks();
}

let ticks: number | undefined;
function clockTicks(): number {
  ticks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  return ticks;
}

/** A process's resident set, in MB, from /proc/PID/status. */
export function processRssMb(pid: number): number {
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  if (kb === undefined) throw new Error(`/proc/${pid}/status has no VmRSS`);
  return Number(kb) / 1024;
}
