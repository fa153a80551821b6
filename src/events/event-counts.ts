// Counters fed by events rather than read from kernel maps (security events,
// rule matches): counts by label set, exported through the series governor
// (cardinality limit, folded identity labels) at each collection. Each count
// remembers the cgroups that made it; once all of them are gone it is retired
// into its series (which keeps it for the grace period, and adds it up again
// should the workload come back) and dropped, so pod churn leaves nothing behind.
import type { AgentConfig } from '../config.js';
import type { Labels, ScalarSample } from '../metrics/model.js';
import { CounterSeries } from '../metrics/series.js';

export class EventCounts {
  private readonly counts = new Map<string, { labels: Labels; count: number; cgroups: Set<bigint> }>();
  private readonly series: CounterSeries;

  constructor(
    /** Every label of the family, in order: they make the key. */
    private readonly labelNames: readonly string[],
    config: Pick<AgentConfig, 'seriesGraceSeconds' | 'seriesLimit'>,
    identityLabels: readonly string[],
  ) {
    this.series = new CounterSeries(1, config.seriesGraceSeconds * 1000, { limit: config.seriesLimit, foldedLabels: identityLabels });
  }

  add(labels: Labels, cgroupId: bigint): void {
    const key = this.labelNames.map((name) => labels[name] ?? '').join('\0');
    const entry = this.counts.get(key);
    if (entry) {
      entry.count++;
      entry.cgroups.add(cgroupId);
    } else this.counts.set(key, { labels, count: 1, cgroups: new Set([cgroupId]) });
  }

  /** Label sets counted and not yet retired. */
  get size(): number {
    return this.counts.size;
  }

  /** `gone` says whether a cgroup id no longer exists (id 0, no cgroup, never goes). */
  samples(gone: (cgroupId: bigint) => boolean, now = Date.now()): ScalarSample[] {
    this.series.beginCollection();
    for (const [key, entry] of this.counts) {
      for (const id of entry.cgroups) if (id !== 0n && gone(id)) entry.cgroups.delete(id);
      if (entry.cgroups.size) this.series.addLive(key, key, entry.labels, [entry.count], now);
      else {
        this.series.retire(key, key, entry.labels, [entry.count], now);
        this.counts.delete(key);
      }
    }
    return this.series.finishCollection(now).map(({ labels, values }) => ({ labels, value: values[0]! }));
  }
}
