// What every benchmark section shares: its options, rows of the one table
// `npm run bench` prints, and the collector context the agent would build.
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
