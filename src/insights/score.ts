// Scoring one signal of one workload: how far its present stands from its
// own baseline (in standard deviations), when the excursion began, and how
// many times its usual level it reached. Pure: explain.ts feeds it the
// points Prometheus returned.
import type { SignalDefinition } from './signals.js';

/** A signal's points: [Unix seconds, value]; NaN where the expression had no value (a histogram without observations). */
export type Points = ReadonlyArray<readonly [number, number]>;

/** Above this many standard deviations a signal is abnormal, as in the anomaly alerts. */
export const zThreshold = 3;
/** A finding must also be this many times the baseline mean: 3σ of a very steady signal can be a trivial change. */
export const minimumChange = 1.5;
/** Fewer baseline points than this and the workload has no usual to compare with. */
export const minimumBaselinePoints = 10;
/** The present is the median of this long at the end of the window (a single spike is not a state). */
export const presentSeconds = 300;

export interface SignalScore {
  baselineMean: number;
  baselineStddev: number;
  /** The spread the score divides by: the baseline's, or the signal's noise floor when the baseline is steadier. */
  scale: number;
  baselinePoints: number;
  present: number;
  /** (present − mean) / scale; for a 'both' signal its absolute value. */
  z: number;
  /** present / mean; Infinity from a baseline of 0. */
  change: number;
  /** Start of the excursion that lasts until the end of the window, or null when the present is not beyond the threshold. */
  onset: number | null;
  /** The first point beyond the threshold: the value the excursion began with. */
  onsetValue: number | null;
}

const finite = (points: Points) => points.filter(([, v]) => Number.isFinite(v));

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * Scores `points` at `at`: the baseline is every point before `windowStart`,
 * the window the points from `windowStart` to `at`. Undefined when there is no
 * baseline or no present to score.
 */
export function scoreSignal(points: Points, windowStart: number, at: number, signal: Pick<SignalDefinition, 'direction' | 'noiseFloor'>): SignalScore | undefined {
  const baseline = finite(points.filter(([t]) => t < windowStart)).map(([, v]) => v);
  const window = points.filter(([t]) => t >= windowStart && t <= at);
  const recent = finite(window.filter(([t]) => t > at - presentSeconds)).map(([, v]) => v);
  if (baseline.length < minimumBaselinePoints || recent.length === 0) return undefined;
  const mean = baseline.reduce((a, b) => a + b, 0) / baseline.length;
  const stddev = Math.sqrt(baseline.reduce((a, v) => a + (v - mean) ** 2, 0) / baseline.length);
  const scale = Math.max(stddev, signal.noiseFloor);
  const present = median(recent);
  const signed = (present - mean) / scale;
  const z = signal.direction === 'both' ? Math.abs(signed) : signed;
  const change = mean === 0 ? (present === 0 ? 1 : Infinity) : present / mean;
  // Walk back from the end while the signal stays beyond its threshold; one
  // point back inside (a 5m rate wobbling at the edge) does not end the excursion.
  const beyond = (v: number) => (signed >= 0 ? v > mean + zThreshold * scale : v < mean - zThreshold * scale);
  let onset: number | null = null;
  let onsetValue: number | null = null;
  if (z >= zThreshold) {
    let inside = 0;
    for (let i = window.length - 1; i >= 0; i--) {
      const [t, v] = window[i]!;
      if (Number.isFinite(v) && beyond(v)) {
        onset = t;
        onsetValue = v;
        inside = 0;
      } else if (++inside >= 2) break;
    }
  }
  return { baselineMean: mean, baselineStddev: stddev, scale, baselinePoints: baseline.length, present, z, change, onset, onsetValue };
}

/** Abnormal: beyond 3σ, a real change against the mean (either way for a 'both' signal), and an onset inside the window. */
export function isAbnormal(score: SignalScore): boolean {
  if (score.z < zThreshold || score.onset === null) return false;
  const rose = score.present >= score.baselineMean;
  return rose ? score.change >= minimumChange : score.change <= 1 / minimumChange;
}
