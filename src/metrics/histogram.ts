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
