import t from 'tap';
import { CounterSeries, overflowLabelValue, type SeriesValues } from '../../src/metrics/series.js';

t.test('retired entries keep a series monotonic and it expires after the grace period', async (t) => {
  const series = new CounterSeries(2, 1000);
  const labels = { cgroup: '/a' };
  series.beginCollection();
  series.addLive('e1', 'a', labels, [100, 1], 0);
  series.addLive('e2', 'a', labels, [50, 1], 0);
  t.same(series.finishCollection(0), [{ labels, values: [150, 2] }], 'two kernel entries feed one series');

  // one entry is retired (its kernel key deleted), the other keeps counting
  series.retire('e1', 'a', labels, [100, 1], 10);
  series.beginCollection();
  series.addLive('e2', 'a', labels, [60, 2], 20);
  t.same(series.finishCollection(20), [{ labels, values: [160, 3] }]);

  // everything gone: the final value stays for the grace period, then the series disappears
  series.retire('e2', 'a', labels, [60, 2], 30);
  series.beginCollection();
  t.same(series.finishCollection(1000), [{ labels, values: [160, 3] }]);
  series.beginCollection();
  t.same(series.finishCollection(1031), []);
  t.equal(series.size, 0);
});

t.test('an entry whose labels change leaves its counts with its old series', async (t) => {
  const series = new CounterSeries(1, 1000);
  const before = { pod: 'unknown' };
  const after = { pod: 'web' };
  series.beginCollection();
  t.equal(series.addLive('e', 'unknown', before, [40], 0), true);
  t.same(series.finishCollection(0), [{ labels: before, values: [40] }]);
  series.beginCollection();
  t.equal(series.addLive('e', 'web', after, [45], 10), false, 'the caller must delete the kernel entry');
  t.same(series.finishCollection(10), [{ labels: before, values: [45] }], 'the old series keeps all the entry counted, and does not go backwards');
  series.beginCollection();
  t.equal(series.addLive('e', 'web', after, [3], 20), true, 'the fresh kernel entry counts for the new series');
  t.same(series.finishCollection(20), [
    { labels: before, values: [45] },
    { labels: after, values: [3] },
  ]);
});

const governed = (limit: number) => new CounterSeries(1, 1000, { limit, foldedLabels: ['cgroup'] });
const byCgroup = (rows: SeriesValues[]) => Object.fromEntries(rows.map((r) => [`${r.labels.cgroup}/${r.labels.syscall}`, r.values[0]]));
const total = (rows: SeriesValues[]) => rows.reduce((sum, r) => sum + r.values[0]!, 0);

t.test('beyond the limit new label sets fold into an overflow series per kept label, and sums stay exact', async (t) => {
  const series = governed(2);
  series.beginCollection();
  series.addLive('a1', 'a\0read', { cgroup: '/a', syscall: 'read' }, [10], 0);
  series.addLive('b1', 'b\0read', { cgroup: '/b', syscall: 'read' }, [20], 0);
  series.addLive('c1', 'c\0read', { cgroup: '/c', syscall: 'read' }, [30], 0);
  series.addLive('c2', 'c\0write', { cgroup: '/c', syscall: 'write' }, [5], 0);
  series.addLive('d1', 'd\0read', { cgroup: '/d', syscall: 'read' }, [7], 0);
  const rows = series.finishCollection(0);
  t.same(byCgroup(rows), { '/a/read': 10, '/b/read': 20, '__overflow__/read': 37, '__overflow__/write': 5 }, 'the syscall label is kept: one overflow series per syscall');
  t.equal(total(rows), 10 + 20 + 30 + 5 + 7, 'sum over every series equals what the entries counted');
  t.equal(series.foldedSeries, 3, 'three label sets folded');
  t.equal(series.size, 4, 'two own series plus two overflow series');
  const overflow = rows.find((r) => r.labels.cgroup === overflowLabelValue && r.labels.syscall === 'read')!;
  t.same(overflow.labels, { cgroup: '__overflow__', syscall: 'read' });
});

t.test('a folded label set stays folded while it lives, even when room frees up; the overflow never goes backwards', async (t) => {
  const series = governed(1);
  let previousOverflow = 0;
  const round = (now: number, entries: Array<[string, number]>) => {
    series.beginCollection();
    for (const [name, value] of entries) series.addLive(name, name, { cgroup: `/${name}`, syscall: 'x' }, [value], now);
    const rows = series.finishCollection(now);
    const overflow = byCgroup(rows)['__overflow__/x'] ?? 0;
    t.ok(overflow >= previousOverflow, `at ${now}: overflow ${overflow} >= ${previousOverflow}`);
    previousOverflow = overflow;
    return rows;
  };
  round(0, [['a', 1], ['b', 100]]);
  t.same(byCgroup(round(10, [['a', 2], ['b', 150]])), { '/a/x': 2, '__overflow__/x': 150 });
  // a leaves: its entry is retired, its series lives out its grace period and goes
  series.retire('a', 'a', { cgroup: '/a', syscall: 'x' }, [3], 20);
  round(500, [['b', 160]]);
  const afterGrace = round(1100, [['b', 170]]);
  t.same(byCgroup(afterGrace), { '__overflow__/x': 170 }, 'room is free, but b stays in the overflow: its counts do not move');
  t.equal(series.foldedSeries, 1);
  // a newcomer takes the free room
  t.same(byCgroup(round(1200, [['b', 171], ['c', 4]])), { '/c/x': 4, '__overflow__/x': 171 });
});

t.test('an identity that leaves and returns within its grace keeps its place; after the grace it is decided afresh', async (t) => {
  const series = governed(1);
  const labels = (name: string) => ({ cgroup: `/${name}`, syscall: 'x' });
  series.beginCollection();
  series.addLive('a', 'a', labels('a'), [5], 0);
  series.addLive('b', 'b', labels('b'), [50], 0);
  series.finishCollection(0);
  // b's cgroup goes (its entry retired), then a restarted container of the same workload comes back
  series.retire('b', 'b', labels('b'), [60], 100);
  series.beginCollection();
  series.addLive('a', 'a', labels('a'), [6], 200);
  t.same(byCgroup(series.finishCollection(200)), { '/a/x': 6, '__overflow__/x': 60 }, 'the overflow keeps the retired counts');
  series.beginCollection();
  series.addLive('a', 'a', labels('a'), [7], 300);
  series.addLive('b2', 'b', labels('b'), [4], 300);
  t.same(byCgroup(series.finishCollection(300)), { '/a/x': 7, '__overflow__/x': 64 }, 'back within its grace: folded again into the same overflow, counting on');
  t.equal(series.foldedSeries, 1, 'the same fold, not a second one');

  // a goes for good; b's fold outlives a's series but its entry is retired too, then comes back after its grace
  series.retire('a', 'a', labels('a'), [8], 400);
  series.retire('b2', 'b', labels('b'), [5], 400);
  series.beginCollection();
  t.same(byCgroup(series.finishCollection(1401)), { '__overflow__/x': 65 }, 'series of their own past their grace are gone; the overflow stays, never reset');
  series.beginCollection();
  series.addLive('b3', 'b', labels('b'), [1], 1500);
  t.same(byCgroup(series.finishCollection(1500)), { '/b/x': 1, '__overflow__/x': 65 }, 'returning after its grace, b gets the free room as a new series');
});

t.test('an entry whose labels change while folded leaves its counts in the overflow', async (t) => {
  const series = governed(1);
  series.beginCollection();
  series.addLive('a', 'a', { cgroup: '/a', syscall: 'x' }, [1], 0);
  series.addLive('e', 'unknown', { cgroup: 'unknown', syscall: 'x' }, [40], 0);
  series.finishCollection(0);
  series.beginCollection();
  series.addLive('a', 'a', { cgroup: '/a', syscall: 'x' }, [1], 10);
  t.equal(series.addLive('e', 'web', { cgroup: '/web', syscall: 'x' }, [45], 10), false, 'the caller deletes the kernel entry');
  t.same(byCgroup(series.finishCollection(10)), { '/a/x': 1, '__overflow__/x': 45 }, 'the fold it fed keeps all it counted');
  series.beginCollection();
  series.addLive('a', 'a', { cgroup: '/a', syscall: 'x' }, [1], 20);
  series.addLive('e', 'web', { cgroup: '/web', syscall: 'x' }, [3], 20);
  t.same(byCgroup(series.finishCollection(20)), { '/a/x': 1, '__overflow__/x': 48 }, 'its new label set, beyond the limit too, folds into the same overflow');
  t.equal(series.foldedSeries, 2);
});

t.test('histograms fold bucket by bucket, with their sum', async (t) => {
  const series = new CounterSeries(3, 1000, { limit: 1, foldedLabels: ['cgroup'] });
  series.beginCollection();
  series.addLive('a', 'a', { cgroup: '/a' }, [1, 2, 30], 0);
  series.addLive('b', 'b', { cgroup: '/b' }, [4, 0, 50], 0);
  series.addLive('c', 'c', { cgroup: '/c' }, [0, 6, 70], 0);
  t.same(series.finishCollection(0), [
    { labels: { cgroup: '/a' }, values: [1, 2, 30] },
    { labels: { cgroup: '__overflow__' }, values: [4, 6, 120] },
  ]);
});

t.test('without a governor nothing folds', async (t) => {
  const series = new CounterSeries(1, 1000);
  series.beginCollection();
  for (let i = 0; i < 1000; i++) series.addLive(`e${i}`, `k${i}`, { cgroup: `/${i}` }, [i], 0);
  t.equal(series.finishCollection(0).length, 1000);
  t.equal(series.foldedSeries, 0);
});

t.test('under churn (entries come, go and change labels) every series is monotonic and the sum equals what the entries counted', async (t) => {
  const series = new CounterSeries(1, 1_000_000, { limit: 20, foldedLabels: ['cgroup'] });
  let seed = 42;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return (seed >>> 8) % n; // the low bits of this generator repeat quickly
  };
  const entries = new Map<string, { workload: number; value: number }>();
  let retiredTotal = 0;
  let nextEntry = 0;
  const last = new Map<string, number>();
  let failures = 0;
  for (let now = 0; now < 200; now++) {
    for (let i = 0; i < 5; i++) entries.set(`e${nextEntry++}`, { workload: random(60), value: 0 });
    for (const [id, entry] of [...entries]) {
      const labels = { cgroup: `/w${entry.workload}`, syscall: 'x' };
      if (random(10) === 0) {
        series.retire(id, labels.cgroup, labels, [entry.value], now);
        retiredTotal += entry.value;
        entries.delete(id);
      }
    }
    series.beginCollection();
    for (const [id, entry] of entries) {
      entry.value += random(100);
      if (random(20) === 0) entry.workload = random(60); // relabeled: e.g. its pod's metadata arrived
      const labels = { cgroup: `/w${entry.workload}`, syscall: 'x' };
      if (!series.addLive(id, labels.cgroup, labels, [entry.value], now)) {
        retiredTotal += entry.value; // the caller deletes the kernel entry: it starts from zero
        entry.value = 0;
      }
    }
    const rows = series.finishCollection(now);
    const kernelTotal = retiredTotal + [...entries.values()].reduce((sum, e) => sum + e.value, 0);
    if (total(rows) !== kernelTotal) failures++;
    for (const row of rows) {
      const key = `${row.labels.cgroup}/${row.labels.syscall}`;
      if (row.values[0]! < (last.get(key) ?? 0)) failures++;
      last.set(key, row.values[0]!);
    }
    if (rows.filter((r) => r.labels.cgroup !== overflowLabelValue).length > 20) failures++;
  }
  t.equal(failures, 0, 'in 200 collections: sums exact, no series went backwards, never more than 20 own series');
  t.ok(series.foldedSeries > 0, `${series.foldedSeries} label sets folded`);
});

t.test('retired totals saved and restored carry a series across a restart', async (t) => {
  const before = new CounterSeries(2, 60_000);
  before.beginCollection();
  before.retire('gone-entry', 'pod-a', { pod: 'a' }, [100, 3], 0);
  before.addLive('live-entry', 'pod-a', { pod: 'a' }, [40, 2], 0);
  before.addLive('other', 'pod-b', { pod: 'b' }, [7, 1], 0);
  t.same(before.finishCollection(0), [
    { labels: { pod: 'a' }, values: [140, 5] },
    { labels: { pod: 'b' }, values: [7, 1] },
  ]);
  const saved = JSON.parse(JSON.stringify(before.retiredTotals())) as ReturnType<CounterSeries['retiredTotals']>;
  t.same(saved, [{ key: 'pod-a', labels: { pod: 'a' }, retired: [100, 3] }], 'only series holding retired counts are saved');

  // The restarted agent finds the live entry still in the (pinned) kernel map, a little further on.
  const after = new CounterSeries(2, 60_000);
  after.restoreRetired(saved, 1_000);
  after.beginCollection();
  after.addLive('live-entry', 'pod-a', { pod: 'a' }, [45, 3], 1_000);
  after.addLive('other', 'pod-b', { pod: 'b' }, [8, 2], 1_000);
  t.same(after.finishCollection(1_000), [
    { labels: { pod: 'a' }, values: [145, 6] },
    { labels: { pod: 'b' }, values: [8, 2] },
  ], 'no series went backwards');
});

t.test('folds saved and restored keep a folded label set in the overflow series across a restart', async (t) => {
  const before = governed(1);
  before.beginCollection();
  before.addLive('a1', 'a\0read', { cgroup: '/a', syscall: 'read' }, [10], 0);
  before.addLive('b1', 'b\0read', { cgroup: '/b', syscall: 'read' }, [20], 0);
  t.same(byCgroup(before.finishCollection(0)), { '/a/read': 10, '__overflow__/read': 20 }, '/b folded');
  const folds = JSON.parse(JSON.stringify(before.savedFolds())) as ReturnType<CounterSeries['savedFolds']>;
  t.same(folds.map((f) => [f.key, f.intoLabels]), [['b\0read', { cgroup: '__overflow__', syscall: 'read' }]], 'one fold saved, with its overflow series');

  // Restarted: /a's series went (its cgroup is gone), so there would be room for /b, whose kernel entry lives on.
  const after = governed(1);
  after.restoreFolds(folds, 1_000);
  after.beginCollection();
  after.addLive('b1', 'b\0read', { cgroup: '/b', syscall: 'read' }, [25], 1_000);
  after.addLive('c1', 'c\0read', { cgroup: '/c', syscall: 'read' }, [3], 1_000);
  t.same(byCgroup(after.finishCollection(1_000)), { '__overflow__/read': 25, '/c/read': 3 }, 'the overflow series continues (20 → 25) and /b gets no series holding its earlier counts');

  const unsaved = governed(1);
  unsaved.beginCollection();
  unsaved.addLive('b1', 'b\0read', { cgroup: '/b', syscall: 'read' }, [25], 1_000);
  t.same(byCgroup(unsaved.finishCollection(1_000)), { '/b/read': 25 }, 'without the folds the overflow would vanish and /b jump to 25 (what this guards against)');
});
