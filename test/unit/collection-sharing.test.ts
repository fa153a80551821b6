// The manager's one-collection-at-a-time contract, with a collector whose
// collections the test finishes by hand: scrapes and API queries arriving
// while one runs share it, API queries reuse the last one while it is recent
// enough, and probepilot_collector_collections_total counts what ran.
import t from 'tap';
import { CollectorManager } from '../../src/collectors/manager.js';
import type { Collector } from '../../src/collectors/collector.js';
import type { MetricFamily } from '../../src/metrics/model.js';
import { createLogger } from '../../src/log.js';

function handCollector() {
  const pending: Array<(families: MetricFamily[]) => void> = [];
  const collector: Collector = {
    name: 'network',
    families: [],
    start: async () => undefined,
    stop: async () => undefined,
    collect: () => new Promise<MetricFamily[]>((resolve) => pending.push(resolve)),
    health: () => ({ eventsDropped: {} }),
    programs: () => [],
  };
  const finish = (value: number) => pending.shift()!([{ name: 'probepilot_network_bytes_total', help: 'h', type: 'counter', labelNames: [], samples: [{ labels: {}, value }] }]);
  return { collector, pending, finish };
}

/** The first scalar value of a family among these, with these labels. */
function valueIn(families: readonly MetricFamily[] | undefined, name: string, collector?: string): number | undefined {
  const family = families?.find((f) => f.name === name);
  if (!family || family.type === 'histogram') return undefined;
  return family.samples.find((s) => collector === undefined || s.labels.collector === collector)?.value;
}

const collectionsOf = (families: MetricFamily[]) => valueIn(families, 'probepilot_collector_collections_total', 'network');
const bytesOf = (collection: { families: MetricFamily[] } | undefined) => valueIn(collection?.families, 'probepilot_network_bytes_total');

const turn = () => new Promise((r) => setImmediate(r));

t.test('readers share the collection under way; queries reuse a recent one; the counter counts collections', async (t) => {
  const { collector, pending, finish } = handCollector();
  const manager = new CollectorManager([() => collector], createLogger('silent'), false);
  await manager.start();

  const scrape = manager.collect();
  const query = manager.recentCollection('network', 1000);
  const push = manager.collect();
  await turn();
  t.equal(pending.length, 1, 'two scrapes and a query while a collection runs: one collection');
  finish(10);
  const [scraped, queried, pushed] = await Promise.all([scrape, query, push]);
  t.equal(bytesOf(queried), 10, 'the query got the shared collection');
  t.equal(collectionsOf(scraped), 1);
  t.equal(collectionsOf(pushed), 1);

  const recent = await manager.recentCollection('network', 60_000);
  t.equal(recent, queried, 'a query within the maximum age answers from the last collection, without collecting');
  t.equal(pending.length, 0);

  await new Promise((r) => setTimeout(r, 5));
  const old = manager.recentCollection('network', 1);
  const again = manager.recentCollection('network', 1);
  await turn();
  t.equal(pending.length, 1, 'the last collection too old: a new one, shared by the queries asking meanwhile');
  finish(20);
  const [first, second] = await Promise.all([old, again]);
  t.equal(first, second);
  t.equal(bytesOf(first), 20);
  t.ok(first!.at > queried!.at, 'each collection carries its own start time');

  const next = manager.collect();
  await turn();
  t.equal(pending.length, 1, 'a scrape always gets a fresh collection');
  finish(30);
  t.equal(collectionsOf(await next), 3, 'three collections in all');
  t.equal(await manager.recentCollection('nope', 1000), undefined, 'an unknown collector: none');
});

t.test('a disabled collector answers no collection, and an enabled one does not reuse its predecessor\'s', async (t) => {
  const { collector, finish } = handCollector();
  const manager = new CollectorManager([() => collector], createLogger('silent'), false);
  await manager.start();
  const scrape = manager.collect();
  await turn();
  finish(1);
  await scrape;
  await manager.setEnabled('network', false);
  t.equal(await manager.recentCollection('network', 60_000), undefined);
  await manager.setEnabled('network', true);
  const query = manager.recentCollection('network', 60_000);
  await turn();
  finish(5);
  t.equal(bytesOf(await query), 5, 'a fresh collection of the new instance');
});
