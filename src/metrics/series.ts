// Counter series built from kernel map entries. Several entries can feed one
// series (a restarted container's new cgroup id, a pod's new veth), and
// entries are deleted from the kernel when what they count is gone: their
// last values are "retired" into the series so it never goes backwards, and
// a series with nothing live left disappears after a grace period.
import type { Labels } from './model.js';

interface Series {
  labels: Labels;
  live: number[];
  retired: number[];
  /** Last collection in which a live entry fed this series. */
  lastLive: number;
}

export interface SeriesValues {
  labels: Labels;
  values: number[];
}

/** The retired part of one series: what a restarted agent needs so the series never goes backwards. */
export interface RetiredTotals {
  key: string;
  labels: Labels;
  retired: number[];
}

export class CounterSeries {
  private readonly series = new Map<string, Series>();
  /** The series each live kernel entry (by an id of the caller's, e.g. its key bytes) fed last. */
  private readonly seriesOfEntry = new Map<string, string>();

  /** Kernel entries whose label set was refused because the limit was reached, each counted when first seen. */
  private refusedEntries = 0;

  constructor(
    /** Counters per series (e.g. 2 for bytes and packets). */
    private readonly width: number,
    private readonly graceMs: number,
    /** Most series kept at once; new label sets beyond it are dropped (and counted), existing ones keep counting. */
    private readonly limit = Infinity,
  ) {}

  get size(): number {
    return this.series.size;
  }

  /** Kernel entries not exported because the limit was reached. */
  get droppedSeries(): number {
    return this.refusedEntries;
  }

  private entry(key: string, labels: Labels, now: number): Series | undefined {
    let s = this.series.get(key);
    if (!s) {
      if (this.series.size >= this.limit) return undefined;
      s = { labels, live: new Array<number>(this.width).fill(0), retired: new Array<number>(this.width).fill(0), lastLive: now };
      this.series.set(key, s);
    }
    return s;
  }

  /** Starts a collection: live sums are rebuilt from the map dump that follows. */
  beginCollection(): void {
    for (const s of this.series.values()) s.live.fill(0);
  }

  /**
   * A live kernel entry's cumulative values. Returns false when the entry fed
   * another series before (its labels changed, e.g. its pod's metadata
   * arrived): its values are then retired into that series, which so never
   * goes backwards, and the caller must delete the kernel entry so the new
   * series counts from zero.
   */
  addLive(entryId: string, key: string, labels: Labels, values: readonly number[], now: number): boolean {
    const previous = this.seriesOfEntry.get(entryId);
    if (previous !== undefined && previous !== key) {
      const old = this.series.get(previous);
      this.retire(entryId, previous, old?.labels ?? labels, values, now);
      return false;
    }
    this.seriesOfEntry.set(entryId, key);
    const s = this.entry(key, labels, now);
    if (!s) {
      if (previous === undefined) this.refusedEntries++;
      return true;
    }
    for (let i = 0; i < this.width; i++) s.live[i]! += values[i] ?? 0;
    s.lastLive = now;
    return true;
  }

  /** Final values of a kernel entry about to be deleted. */
  retire(entryId: string, key: string, labels: Labels, values: readonly number[], now: number): void {
    this.seriesOfEntry.delete(entryId);
    const s = this.entry(key, labels, now);
    if (!s) return;
    for (let i = 0; i < this.width; i++) s.retired[i]! += values[i] ?? 0;
    s.lastLive = Math.max(s.lastLive, now);
  }

  /** Series holding final counts of deleted kernel entries. */
  retiredTotals(): RetiredTotals[] {
    const out: RetiredTotals[] = [];
    for (const [key, s] of this.series) {
      if (s.retired.some((v) => v !== 0)) out.push({ key, labels: s.labels, retired: [...s.retired] });
    }
    return out;
  }

  /** Final counts saved by an earlier run (the kernel entries they came from are gone); their grace starts now. */
  restoreRetired(totals: readonly RetiredTotals[], now: number): void {
    for (const { key, labels, retired } of totals) {
      const s = this.entry(key, labels, now);
      if (!s) continue;
      for (let i = 0; i < this.width; i++) s.retired[i]! += retired[i] ?? 0;
    }
  }

  /** Current totals; series with nothing live for longer than the grace period are dropped. */
  finishCollection(now: number): SeriesValues[] {
    const out: SeriesValues[] = [];
    for (const [key, s] of this.series) {
      if (now - s.lastLive > this.graceMs) {
        this.series.delete(key);
        continue;
      }
      out.push({ labels: s.labels, values: s.live.map((v, i) => v + s.retired[i]!) });
    }
    return out;
  }
}
