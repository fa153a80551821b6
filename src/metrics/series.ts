// Counter series built from kernel map entries. Several entries can feed one
// series (a restarted container's new cgroup id, a pod's new veth), and
// entries are deleted from the kernel when what they count is gone: their
// last values are "retired" into the series so it never goes backwards, and
// a series with nothing live left disappears after a grace period.
//
// The cardinality governor: beyond the limit, a new label set does not get a
// series of its own but is folded into an overflow series whose identity
// labels are all `__overflow__` (the other labels, e.g. syscall or direction,
// kept), so sums over every series stay equal to what the kernel counted. A
// folded label set stays folded until it has been without a live entry for
// the grace period, even if room frees up meanwhile: counts never move from
// one series to another, so every series, the overflow included, is monotonic.
// Overflow series never expire (there is one per combination of the kept
// labels): one that came back from zero after a quiet spell would read as a
// counter reset of the same series.
import type { Labels } from './model.js';

/** The value of every identity label of an overflow series. */
export const overflowLabelValue = '__overflow__';

interface Series {
  labels: Labels;
  live: number[];
  retired: number[];
  /** Last collection in which a live entry fed this series. */
  lastLive: number;
  overflow: boolean;
}

/** A label set beyond the limit and the overflow series that counts for it. */
interface Fold {
  labels: Labels;
  into: Series;
  lastLive: number;
}

export interface SeriesValues {
  labels: Labels;
  values: number[];
}

export interface SeriesGovernor {
  /** Most series of their own kept at once; the overflow series come on top (one per combination of the labels kept). */
  limit: number;
  /** Labels replaced by `__overflow__` in an overflow series: the workload's identity (and for flows the peer's name). */
  foldedLabels: readonly string[];
}

/** The retired part of one series: what a restarted agent needs so the series never goes backwards. */
export interface RetiredTotals {
  key: string;
  labels: Labels;
  retired: number[];
}

/** A label set folded into an overflow series: kept across restarts, so its live kernel entry keeps counting there and not in a series of its own. */
export interface SavedFold {
  key: string;
  labels: Labels;
  /** The overflow series' key and labels. */
  intoKey: string;
  intoLabels: Labels;
}

/** Overflow series live in a key space of their own, so no real label set can share one. */
const overflowKeyPrefix = '\u0001overflow\0';

export class CounterSeries {
  /** Series by label-set key; overflow series by their own key space so no real label set can share one. */
  private readonly series = new Map<string, Series>();
  private readonly folds = new Map<string, Fold>();
  private ownSeries = 0;
  /** The label set (key) each live kernel entry (by an id of the caller's, e.g. its key bytes) fed last. */
  private readonly seriesOfEntry = new Map<string, string>();
  private foldedLabelSets = 0;
  private readonly limit: number;
  private readonly foldedLabels: ReadonlySet<string>;

  constructor(
    /** Counters per series (e.g. 2 for bytes and packets; a histogram's buckets and sum). */
    private readonly width: number,
    private readonly graceMs: number,
    governor: SeriesGovernor = { limit: Infinity, foldedLabels: [] },
  ) {
    this.limit = governor.limit;
    this.foldedLabels = new Set(governor.foldedLabels);
  }

  /** Series exported now, overflow series included. */
  get size(): number {
    return this.series.size;
  }

  /** Label sets folded into an overflow series so far, each counted when it is folded (again, if it returns after its grace period). */
  get foldedSeries(): number {
    return this.foldedLabelSets;
  }

  private newSeries(labels: Labels, now: number, overflow: boolean): Series {
    return { labels, live: new Array<number>(this.width).fill(0), retired: new Array<number>(this.width).fill(0), lastLive: now, overflow };
  }

  /** The series a label set counts in: its own, or (beyond the limit) the overflow series of its other labels. */
  private target(key: string, labels: Labels, now: number): Series {
    const own = this.series.get(key);
    if (own) return own;
    const fold = this.folds.get(key);
    if (fold) {
      fold.lastLive = Math.max(fold.lastLive, now);
      return fold.into;
    }
    if (this.ownSeries < this.limit) {
      const s = this.newSeries(labels, now, false);
      this.series.set(key, s);
      this.ownSeries++;
      return s;
    }
    const overflowLabels = Object.fromEntries(Object.entries(labels).map(([name, value]) => [name, this.foldedLabels.has(name) ? overflowLabelValue : value]));
    const overflowKey = `${overflowKeyPrefix}${Object.values(overflowLabels).join('\0')}`;
    let into = this.series.get(overflowKey);
    if (!into) {
      into = this.newSeries(Object.freeze(overflowLabels), now, true);
      this.series.set(overflowKey, into);
    }
    this.folds.set(key, { labels, into, lastLive: now });
    this.foldedLabelSets++;
    return into;
  }

  /** Starts a collection: live sums are rebuilt from the map dump that follows. */
  beginCollection(): void {
    for (const s of this.series.values()) s.live.fill(0);
  }

  /**
   * A live kernel entry's cumulative values. Returns false when the entry fed
   * another label set before (its labels changed, e.g. its pod's metadata
   * arrived): its values are then retired into that label set's series,
   * which so never goes backwards, and the caller must delete the kernel
   * entry so the new label set counts from zero.
   */
  addLive(entryId: string, key: string, labels: Labels, values: readonly number[], now: number): boolean {
    const previous = this.seriesOfEntry.get(entryId);
    if (previous !== undefined && previous !== key) {
      const previousLabels = this.series.get(previous)?.labels ?? this.folds.get(previous)?.labels ?? labels;
      this.retire(entryId, previous, previousLabels, values, now);
      return false;
    }
    this.seriesOfEntry.set(entryId, key);
    const s = this.target(key, labels, now);
    for (let i = 0; i < this.width; i++) s.live[i]! += values[i] ?? 0;
    s.lastLive = now;
    return true;
  }

  /** Final values of a kernel entry about to be deleted. */
  retire(entryId: string, key: string, labels: Labels, values: readonly number[], now: number): void {
    this.seriesOfEntry.delete(entryId);
    const s = this.target(key, labels, now);
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

  /** Label sets folded now, for a restarted agent (see SavedFold). */
  savedFolds(): SavedFold[] {
    const intoKeys = new Map<Series, string>();
    for (const [key, s] of this.series) if (s.overflow) intoKeys.set(s, key);
    return [...this.folds].map(([key, fold]) => ({ key, labels: fold.labels, intoKey: intoKeys.get(fold.into)!, intoLabels: fold.into.labels }));
  }

  /**
   * Folds of an earlier run whose kernel entries live on (reused maps): they
   * stay folded, else the overflow series would lose what they counted and a
   * new series of their own would start with all of it. Before restoreRetired.
   */
  restoreFolds(folds: readonly SavedFold[], now: number): void {
    for (const { key, labels, intoKey, intoLabels } of folds) {
      if (this.series.has(key) || this.folds.has(key) || !intoKey.startsWith(overflowKeyPrefix)) continue;
      let into = this.series.get(intoKey);
      if (!into) {
        into = this.newSeries(Object.freeze({ ...intoLabels }), now, true);
        this.series.set(intoKey, into);
      }
      this.folds.set(key, { labels, into, lastLive: now });
    }
  }

  /** Final counts saved by an earlier run (the kernel entries they came from are gone); their grace starts now. */
  restoreRetired(totals: readonly RetiredTotals[], now: number): void {
    for (const { key, labels, retired } of totals) {
      let s = this.series.get(key);
      if (!s && key.startsWith(overflowKeyPrefix)) {
        s = this.newSeries(Object.freeze({ ...labels }), now, true);
        this.series.set(key, s);
      }
      s ??= this.target(key, labels, now);
      for (let i = 0; i < this.width; i++) s.retired[i]! += retired[i] ?? 0;
      s.lastLive = Math.max(s.lastLive, now);
    }
  }

  /** Current totals; series of their own with nothing live for longer than the grace period are dropped. */
  finishCollection(now: number): SeriesValues[] {
    for (const [key, fold] of this.folds) if (now - fold.lastLive > this.graceMs) this.folds.delete(key);
    const out: SeriesValues[] = [];
    for (const [key, s] of this.series) {
      if (!s.overflow && now - s.lastLive > this.graceMs) {
        this.series.delete(key);
        this.ownSeries--;
        continue;
      }
      out.push({ labels: s.labels, values: s.live.map((v, i) => v + s.retired[i]!) });
    }
    return out;
  }
}
