import t from 'tap';
import { CounterSeries } from '../../src/metrics/series.js';

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

t.test('beyond the limit new label sets are dropped, their entries counted once; existing ones keep counting', async (t) => {
  const series = new CounterSeries(1, 1000, 2);
  for (let round = 0; round < 3; round++) {
    series.beginCollection();
    for (const name of ['a', 'b', 'c', 'd']) series.addLive(name, name, { cgroup: name }, [round + 1], round);
    t.same(
      series.finishCollection(round).map((r) => [r.labels.cgroup, r.values[0]]),
      [
        ['a', round + 1],
        ['b', round + 1],
      ],
      `round ${round}: only the first two label sets are exported`,
    );
  }
  t.equal(series.droppedSeries, 2, 'the entries of c and d are counted once each, however many collections refuse them');
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
