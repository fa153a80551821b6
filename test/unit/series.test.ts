import t from 'tap';
import { CounterSeries } from '../../src/metrics/series.js';

t.test('retired entries keep a series monotonic and it expires after the grace period', async (t) => {
  const series = new CounterSeries(2, 1000);
  const labels = { cgroup: '/a' };
  series.beginCollection();
  series.addLive('a', labels, [100, 1], 0);
  series.addLive('a', labels, [50, 1], 0);
  t.same(series.finishCollection(0), [{ labels, values: [150, 2] }], 'two kernel entries feed one series');

  // one entry is retired (its kernel key deleted), the other keeps counting
  series.retire('a', labels, [100, 1], 10);
  series.beginCollection();
  series.addLive('a', labels, [60, 2], 20);
  t.same(series.finishCollection(20), [{ labels, values: [160, 3] }]);

  // everything gone: the final value stays for the grace period, then the series disappears
  series.retire('a', labels, [60, 2], 30);
  series.beginCollection();
  t.same(series.finishCollection(1000), [{ labels, values: [160, 3] }]);
  series.beginCollection();
  t.same(series.finishCollection(1031), []);
  t.equal(series.size, 0);
});
