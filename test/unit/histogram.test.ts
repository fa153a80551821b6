import t from 'tap';
import { histogramBounds, histogramSample, histogramSlots } from '../../src/metrics/histogram.js';

/** The BPF side's slot for a value (pp_log2 in bpf/probepilot.h). */
const slotOf = (ns: number): number => Math.min(ns < 2 ? 0 : Math.floor(Math.log2(ns)), histogramSlots - 1);

t.test('slots fold into le = 2^(k+1) ns buckets, underflow into the first, overflow into +Inf', async (t) => {
  const values = new Array<number>(histogramSlots + 1).fill(0);
  const recorded = [0, 500, 1500, 3000, 1e6, 40e9, 2e12];
  for (const ns of recorded) values[slotOf(ns)]! += 1;
  values[histogramSlots] = recorded.reduce((a, b) => a + b, 0);
  const sample = histogramSample({ cgroup: '/x' }, values, { minSlot: 9, maxSlot: 34 });
  t.equal(sample.bounds.length, 26);
  t.equal(sample.bounds[0], 1024e-9);
  t.equal(sample.count, recorded.length);
  t.equal(sample.sum, values[histogramSlots]! / 1e9);
  // Each recorded value must land in the first bucket whose bound is above it.
  const cumulative = (le: number): number => {
    let n = 0;
    sample.bounds.forEach((bound, i) => {
      if (bound <= le) n += sample.counts[i]!;
    });
    return n;
  };
  for (const ns of recorded) {
    const bound = sample.bounds.find((b) => b * 1e9 > ns);
    if (bound !== undefined) t.ok(cumulative(bound) >= recorded.filter((v) => v <= ns).length, `${ns} ns counted at or below le=${bound}`);
  }
  t.equal(sample.counts.at(-1), 2, '40 s and 2000 s are above the last bound (≈34 s)');
  t.equal(sample.counts.reduce((a, b) => a + b, 0), sample.count);
});

t.test('bounds are strictly increasing', async (t) => {
  const bounds = histogramBounds();
  t.ok(bounds.every((b, i) => i === 0 || b > bounds[i - 1]!));
});
