// Rates between two readings of the same counters: each query keeps its
// reading, and its rates are over the interval since the newest earlier
// reading at least a second old. Clients polling at any pace (the CLI, top,
// scripts) each get a rate over a real interval without the agent keeping a
// timer of its own.

/** Rates are over at least this long, against the newest snapshot at least this old. */
const minRateIntervalMs = 1000;
/** Queries closer together than this share a snapshot: a burst of queries keeps a handful, not one each. */
const snapshotSpacingMs = 250;

export interface RateBaseline<T> {
  /** When the baseline was read (ms): queries that find the same baseline can share what they derive from it. */
  at: number;
  values: T;
  intervalSeconds: number;
}

export class RateWindow<T> {
  /** Oldest first: recent snapshots, so every query finds one at least a second old. */
  private readonly kept: Array<{ at: number; values: T }> = [];

  /** Records the values read at `at` (ms); answers the earlier reading rates are over, or undefined when there is none yet. */
  advance(at: number, values: T): RateBaseline<T> | undefined {
    const baseline = this.kept.findLast((s) => at - s.at >= minRateIntervalMs);
    if (baseline) this.kept.splice(0, this.kept.indexOf(baseline));
    const newest = this.kept.at(-1);
    if (!newest || at - newest.at >= snapshotSpacingMs) this.kept.push({ at, values });
    return baseline ? { at: baseline.at, values: baseline.values, intervalSeconds: (at - baseline.at) / 1000 } : undefined;
  }
}

/** Per second over the interval; a counter that went back (its collector restarted) reads as none. */
export function ratePerSecond(now: number, then: number | undefined, intervalSeconds: number): number {
  return Math.max(0, now - (then ?? 0)) / intervalSeconds;
}
