// Kernel log2 histograms (bpf/probepilot.h, struct pp_hist) to Prometheus
// classic histograms in seconds.
import type { HistogramSample, Labels } from './model.js';

/** PP_HIST_SLOTS in bpf/probepilot.h. */
export const histogramSlots = 40;
/** Bytes of one struct pp_hist: the slots and sum_ns. */
export const histogramSize = (histogramSlots + 1) * 8;

/**
 * Exposed bucket bounds: le = 2^(k+1) ns for slots k in [minSlot, maxSlot].
 * Default 2^10 ns (≈1 µs) to 2^35 ns (≈34 s): 26 buckets plus +Inf.
 */
export interface HistogramRange {
  minSlot: number;
  maxSlot: number;
}

export const defaultHistogramRange: HistogramRange = { minSlot: 9, maxSlot: 34 };

const boundsOfRange = new Map<string, readonly number[]>();

/** The exposed bucket bounds in seconds: one shared array per range (exporters cache what they derive from it). */
export function histogramBounds(range: HistogramRange = defaultHistogramRange): readonly number[] {
  const key = `${range.minSlot}:${range.maxSlot}`;
  let bounds = boundsOfRange.get(key);
  if (!bounds) {
    const computed: number[] = [];
    for (let k = range.minSlot; k <= range.maxSlot; k++) computed.push(2 ** (k + 1) / 1e9);
    bounds = Object.freeze(computed);
    boundsOfRange.set(key, bounds);
  }
  return bounds;
}

/** Folds [slots…, sumNs] into a sample: slots below the range go to the first bucket, above it to +Inf. */
export function histogramSample(labels: Labels, values: readonly number[], range: HistogramRange = defaultHistogramRange): HistogramSample {
  const bounds = histogramBounds(range);
  const counts = new Array<number>(bounds.length + 1).fill(0);
  let count = 0;
  for (let slot = 0; slot < histogramSlots; slot++) {
    const n = values[slot] ?? 0;
    count += n;
    const bucket = Math.min(Math.max(slot - range.minSlot, 0), bounds.length);
    counts[bucket]! += n;
  }
  return { labels, bounds, counts, sum: (values[histogramSlots] ?? 0) / 1e9, count };
}

/** Per-bucket counts observed between two readings of one histogram; a bucket that went back (a restarted collector) reads as none. */
export function histogramDelta(now: readonly number[], then: readonly number[] | undefined): number[] {
  return now.map((n, i) => Math.max(0, n - (then?.[i] ?? 0)));
}

/**
 * The q-quantile of per-bucket (not cumulative) counts with these upper
 * bounds (the last count is +Inf), interpolated linearly inside its bucket as
 * Prometheus' histogram_quantile does; past the last bound it answers the
 * last bound. null when nothing was observed.
 */
export function histogramQuantile(q: number, bounds: readonly number[], counts: readonly number[]): number | null {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < counts.length; i++) {
    const inBucket = counts[i]!;
    if (below + inBucket >= rank && inBucket > 0) {
      if (i >= bounds.length) return bounds.at(-1) ?? null;
      const lower = i === 0 ? 0 : bounds[i - 1]!;
      return lower + (bounds[i]! - lower) * ((rank - below) / inBucket);
    }
    below += inBucket;
  }
  return bounds.at(-1) ?? null;
}
