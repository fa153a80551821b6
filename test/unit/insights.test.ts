// explain's arithmetic on hand-made series: the z-score against the baseline
// before the window, the noise floor, the onset of the excursion that lasts
// to the end, falls for two-way signals; and its input checks.
import t from 'tap';
import { isAbnormal, scoreSignal, type Points } from '../../src/insights/score.js';
import { parseDuration, parseTarget, parseTime } from '../../src/insights/explain.js';

/** One point a minute from 0; `at` is the last. */
const series = (values: number[]): Points => values.map((v, i) => [i * 60, v] as const);
const up = { direction: 'up' as const, noiseFloor: 0.001 };

t.test('a step up: z from the baseline before the window, onset at the step', async (t) => {
  // 60 baseline minutes alternating 1 and 3 (mean 2, σ 1), then the window: 20 at 2, then 10 at 12.
  const values = [...Array.from({ length: 60 }, (_, i) => (i % 2 ? 3 : 1)), ...Array(20).fill(2), ...Array(10).fill(12)];
  const score = scoreSignal(series(values), 60 * 60, 89 * 60, up)!;
  t.equal(score.baselineMean, 2);
  t.equal(score.baselineStddev, 1);
  t.equal(score.present, 12, 'median of the last 5 minutes');
  t.equal(score.z, 10, '(12 − 2) / 1');
  t.equal(score.change, 6);
  t.equal(score.onset, 80 * 60, 'the first minute at 12');
  t.ok(isAbnormal(score));
});

t.test('one dip back inside does not end the excursion; two do', async (t) => {
  const base = Array.from({ length: 60 }, (_, i) => (i % 2 ? 3 : 1));
  const oneDip = scoreSignal(series([...base, 2, 2, 12, 12, 2, 12, 12, 12, 12, 12]), 3600, 69 * 60, up)!;
  t.equal(oneDip.onset, 62 * 60);
  const twoDips = scoreSignal(series([...base, 2, 2, 12, 12, 2, 2, 12, 12, 12, 12, 12]), 3600, 70 * 60, up)!;
  t.equal(twoDips.onset, 66 * 60);
});

t.test('a flat baseline divides by the noise floor, not by 0', async (t) => {
  const score = scoreSignal(series([...Array(60).fill(0), ...Array(10).fill(0.01)]), 3600, 69 * 60, { direction: 'up', noiseFloor: 0.002 })!;
  t.equal(score.scale, 0.002);
  t.equal(score.z, 5);
  t.equal(score.change, Infinity);
  t.ok(isAbnormal(score));
});

t.test('within 3σ, a small change, a fall of an up-only signal: not abnormal', async (t) => {
  const base = Array.from({ length: 60 }, (_, i) => (i % 2 ? 3 : 1));
  t.notOk(isAbnormal(scoreSignal(series([...base, ...Array(10).fill(4.5)]), 3600, 69 * 60, up)!), '2.5σ');
  const steady = Array.from({ length: 60 }, (_, i) => (i % 2 ? 100.01 : 99.99));
  t.notOk(isAbnormal(scoreSignal(series([...steady, ...Array(10).fill(110)]), 3600, 69 * 60, up)!), '1000σ but only 1.1×');
  const fall = scoreSignal(series([...base, ...Array(10).fill(-20)]), 3600, 69 * 60, up)!;
  t.ok(fall.z < 0 && !isAbnormal(fall), 'an up-only signal falling');
  const both = scoreSignal(series([...Array.from({ length: 60 }, (_, i) => (i % 2 ? 0.81 : 0.79)), ...Array(10).fill(0.05)]), 3600, 69 * 60, { direction: 'both', noiseFloor: 0.02 })!;
  t.ok(both.z > 30 && isAbnormal(both), `a two-way signal falling: |z| ${both.z}`);
  t.equal(both.onset, 60 * 60);
});

t.test('too little baseline, or no present: nothing to score', async (t) => {
  t.equal(scoreSignal(series([1, 2, 3, 40, 40]), 180, 240, up), undefined);
  t.equal(scoreSignal(series([...Array(60).fill(1), NaN, NaN]), 3600, 61 * 60, up), undefined, 'a histogram without observations is NaN');
});

t.test('durations, times and targets: parsed, or an error naming the flag and the forms', async (t) => {
  t.equal(parseDuration('1h30m', '--window'), 5400);
  t.equal(parseDuration('90s', '--window'), 90);
  t.throws(() => parseDuration('1h 30m', '--window'), /--window: expected a duration such as 30m, 1h or 1h30m/);
  t.throws(() => parseDuration('0m', '--window'), /--window: must be longer than 0/);
  t.equal(parseTime('2026-12-01T14:05:00Z', '--at'), Date.UTC(2026, 11, 1, 14, 5) / 1000);
  t.equal(parseTime('1764597900', '--at'), 1764597900);
  t.throws(() => parseTime('Dec 1', '--at'), /--at: expected an RFC 3339 time/);
  t.same(parseTarget('shop/checkout'), { namespace: 'shop', workload: 'checkout' });
  t.same(parseTarget('/system.slice/kubelet.service'), { namespace: '', workload: '/system.slice/kubelet.service' }, 'a node service: its cgroup path, no namespace');
  for (const bad of ['checkout', '/', 'shop/', 'a/b/c']) t.throws(() => parseTarget(bad), /target: expected NAMESPACE\/WORKLOAD/, bad);
});
