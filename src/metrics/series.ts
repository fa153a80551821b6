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

export class CounterSeries {
  private readonly series = new Map<string, Series>();

  constructor(
    /** Counters per series (e.g. 2 for bytes and packets). */
    private readonly width: number,
    private readonly graceMs: number,
  ) {}

  get size(): number {
    return this.series.size;
  }

  private entry(key: string, labels: Labels, now: number): Series {
    let s = this.series.get(key);
    if (!s) {
      s = { labels, live: new Array<number>(this.width).fill(0), retired: new Array<number>(this.width).fill(0), lastLive: now };
      this.series.set(key, s);
    }
    return s;
  }

  /** Starts a collection: live sums are rebuilt from the map dump that follows. */
  beginCollection(): void {
    for (const s of this.series.values()) s.live.fill(0);
  }

  addLive(key: string, labels: Labels, values: readonly number[], now: number): void {
    const s = this.entry(key, labels, now);
    for (let i = 0; i < this.width; i++) s.live[i]! += values[i] ?? 0;
    s.lastLive = now;
  }

  /** Final values of kernel entries about to be deleted. */
  retire(key: string, labels: Labels, values: readonly number[], now: number): void {
    const s = this.entry(key, labels, now);
    for (let i = 0; i < this.width; i++) s.retired[i]! += values[i] ?? 0;
    s.lastLive = Math.max(s.lastLive, now);
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
