// The exposition at scale without the kernel: 100k+ synthetic series (hostile
// label values, NaN and infinite gauges, histograms, empty families) rendered
// in time slices are byte for byte what prom-client's registry writes in one
// pass, clean for our checker and promtool; the rendering yields to the event
// loop; scrapes share one collection; the scrape timeout serves the previous
// exposition or nothing, and is counted.
import t from 'tap';
import { gunzipSync } from 'node:zlib';
import { Registry, type Metric } from 'prom-client';
import { PrometheusExporter, renderExposition, scrapeTimeoutShare } from '../../src/exporters/prometheus.js';
import { acceptsGzip, scrapeTimeout } from '../../src/server.js';
import { TimeSlicer } from '../../src/metrics/slice.js';
import { histogramBounds } from '../../src/metrics/histogram.js';
import type { FamilyDescriptor, HistogramSample, MetricFamily } from '../../src/metrics/model.js';
import { checkExposition, parseExposition, sampleValue } from '../helpers/exposition.js';
import { promtoolCheckMetrics } from '../helpers/prometheus.js';

const counter: FamilyDescriptor = { name: 'probepilot_scale_events_total', help: 'Synthetic events; help with a \\ backslash\nand a newline.', type: 'counter', labelNames: ['cgroup', 'kind'] };
const gauge: FamilyDescriptor = { name: 'probepilot_scale_level', help: 'Synthetic gauge.', type: 'gauge', labelNames: ['slot'] };
const histogram: FamilyDescriptor = { name: 'probepilot_scale_latency_seconds', help: 'Synthetic latency.', type: 'histogram', labelNames: ['cgroup'] };
const empty: FamilyDescriptor = { name: 'probepilot_scale_absent_total', help: 'A family no collection filled.', type: 'counter', labelNames: [] };
const single: FamilyDescriptor = { name: 'probepilot_scale_single', help: 'No labels.', type: 'gauge', labelNames: [] };
const descriptors = [counter, gauge, histogram, empty, single];

const hostile = ['plain', 'caf\u00e9 \u{1F4A5}', 'a "quoted" word', 'back\\slash', 'new\nline', ''];

/** 100k+ series: 60,000 counters, 1,000 gauges, 1,500 histograms of 29 series each, one unlabelled gauge. */
function syntheticFamilies(): MetricFamily[] {
  const bounds = histogramBounds();
  const histograms: HistogramSample[] = Array.from({ length: 1500 }, (_, i) => {
    const counts = bounds.map((_, b) => (i * 7 + b * 13) % 50);
    counts.push(i % 3);
    return { labels: { cgroup: `/kubepods/pod-${i}/${hostile[i % hostile.length]}` }, bounds, counts, sum: i * 0.001 + 1e-9, count: counts.reduce((a, b) => a + b, 0) };
  });
  return [
    { ...counter, type: 'counter', samples: Array.from({ length: 60_000 }, (_, i) => ({ labels: { cgroup: `/w/${i >> 4}/${hostile[i % hostile.length]}`, kind: `k${i & 15}` }, value: i * 1024 + 0.5 })) },
    { ...gauge, type: 'gauge', samples: Array.from({ length: 1000 }, (_, i) => ({ labels: { slot: String(i) }, value: [NaN, Infinity, -Infinity, -1.5, 1e21, 5e-7][i % 6]! * (i % 6 < 3 ? 1 : i) })) },
    { ...histogram, type: 'histogram', samples: histograms },
    { ...single, type: 'gauge', samples: [{ labels: {}, value: 42 }] },
  ];
}

/** What prom-client's registry renders for the same families in one pass: the oracle. */
async function onePass(families: readonly MetricFamily[]): Promise<string> {
  const registry = new Registry();
  const byName = new Map(families.map((f) => [f.name, f]));
  for (const descriptor of descriptors) {
    const family = byName.get(descriptor.name);
    const values = !family
      ? []
      : family.type === 'histogram'
        ? family.samples.flatMap((s) => {
            let cumulative = 0;
            return [
              ...s.bounds.map((bound, i) => ({ metricName: `${family.name}_bucket`, labels: { ...s.labels, le: bound }, value: (cumulative += s.counts[i]!) })),
              { metricName: `${family.name}_bucket`, labels: { ...s.labels, le: '+Inf' }, value: s.count },
              { metricName: `${family.name}_sum`, labels: s.labels, value: s.sum },
              { metricName: `${family.name}_count`, labels: s.labels, value: s.count },
            ];
          })
        : family.samples.map((s) => ({ labels: s.labels, value: s.value }));
    registry.registerMetric({ name: descriptor.name, help: descriptor.help, type: descriptor.type, get: () => ({ ...descriptor, aggregator: 'sum', values }) } as unknown as Metric);
  }
  return registry.metrics();
}

t.test('rendering 100k+ series in slices gives prom-client\'s one-pass text, byte for byte, clean for our checker and promtool', async (t) => {
  const families = syntheticFamilies();
  const series = families.reduce((n, f) => n + (f.type === 'histogram' ? f.samples.length * (f.samples[0]!.bounds.length + 3) : f.samples.length), 0);
  t.ok(series > 100_000, `${series} series`);
  let turns = 0;
  const ticker = setInterval(() => turns++, 0);
  const chunks = await renderExposition(descriptors, families, new TimeSlicer());
  clearInterval(ticker);
  t.ok(turns > 0, `timers ran ${turns} times while it rendered: it gave the event loop back`);
  t.ok(chunks.length > 10, `${chunks.length} chunks`);
  const text = Buffer.concat(chunks).toString();
  const expected = await onePass(families);
  t.equal(text.length, expected.length, 'same length');
  t.ok(text === expected, 'identical to the one-pass rendering');
  t.same(checkExposition(text), [], 'our checker: no duplicates, histograms consistent, valid UTF-8 and escaping');
  const lint = await promtoolCheckMetrics(text);
  t.ok(lint.ok, `promtool check metrics is clean: ${lint.output.slice(0, 300)}`);
  const parsed = parseExposition(text);
  t.equal(sampleValue(parsed, counter.name, { cgroup: '/w/0/new\nline', kind: 'k4' }), 4 * 1024 + 0.5, 'a newline in a label value reads back');
  const third = (families[2]!.samples as HistogramSample[])[2]!;
  t.equal(sampleValue(parsed, `${histogram.name}_count`, { cgroup: '/kubepods/pod-2/a "quoted" word' }), third.count, 'a histogram count reads back');
});

t.test('an empty collection renders every family\'s HELP and TYPE, as prom-client does', async (t) => {
  const text = Buffer.concat(await renderExposition(descriptors, [], new TimeSlicer())).toString();
  t.equal(text, await onePass([]));
  t.equal(text.split('\n').filter((l) => l.startsWith('# TYPE ')).length, descriptors.length);
});

interface Deferred {
  resolve: (families: MetricFamily[]) => void;
}

/** An exporter over a collect() the test finishes by hand, counting the collections. */
function controlledExporter() {
  const pending: Deferred[] = [];
  const exporter = new PrometheusExporter([single], () => new Promise<MetricFamily[]>((resolve) => pending.push({ resolve })));
  const finish = (value: number) => pending.shift()!.resolve([{ ...single, type: 'gauge', samples: [{ labels: {}, value }] }]);
  const body = (chunks: Buffer[]) => Buffer.concat(chunks).toString();
  return { exporter, pending, finish, body };
}

t.test('scrapes that arrive while an exposition is built share it', async (t) => {
  const { exporter, pending, finish, body } = controlledExporter();
  const scrapes = [exporter.scrape(), exporter.scrape(), exporter.scrape(10)];
  await new Promise((r) => setImmediate(r));
  t.equal(pending.length, 1, 'one collection for three scrapes');
  finish(7);
  const answers = await Promise.all(scrapes);
  t.ok(answers.every((a) => a !== undefined && !a.stale && a.exposition === answers[0]!.exposition), 'the same exposition for all');
  t.equal(sampleValue(parseExposition(body(answers[0]!.exposition.chunks)), single.name), 7);
  const gzipped = await PrometheusExporter.gzipped(answers[0]!.exposition);
  t.equal(gunzipSync(gzipped).toString(), body(answers[0]!.exposition.chunks), 'gzip decodes to the same bytes');
  t.equal(await PrometheusExporter.gzipped(answers[1]!.exposition), gzipped, 'compressed once per exposition');
  const next = exporter.scrape();
  await new Promise((r) => setImmediate(r));
  t.equal(pending.length, 1, 'a scrape after it gets a fresh collection');
  finish(8);
  t.equal(sampleValue(parseExposition(body((await next)!.exposition.chunks)), single.name), 8);
});

t.test('the scrape timeout: nothing before the first exposition, then the previous one, counted; the late one serves the next scrape', async (t) => {
  const { exporter, pending, finish, body } = controlledExporter();
  const timeout = 0.05;
  t.equal(await exporter.scrape(timeout), undefined, 'no exposition yet: nothing to serve (the server answers 503)');
  t.equal(pending.length, 1, 'the collection goes on');
  finish(1);
  const first = (await exporter.scrape())!;
  t.equal(pending.length, 0, 'the scrape after it got the collection that was under way');
  t.equal(sampleValue(parseExposition(body(first.exposition.chunks)), single.name), 1);

  const asked = Date.now();
  const stale = await exporter.scrape(timeout);
  const waited = Date.now() - asked;
  t.ok(stale?.stale, 'a collection that does not finish in time: the previous exposition');
  t.equal(stale?.exposition, first.exposition, 'exactly the previous complete exposition');
  // Lower bound only (timers never fire early); how much later it answers depends on the machine.
  t.ok(waited >= timeout * 1000 * scrapeTimeoutShare - 1, `answered after waiting ${waited} ms of the ${timeout * 1000} ms timeout`);
  t.equal(pending.length, 1, 'one collection under way');
  finish(2);
  const fresh = (await exporter.scrape(timeout))!;
  t.notOk(fresh.stale, 'the next scrape gets the collection that finished late');
  const parsed = parseExposition(body(fresh.exposition.chunks));
  t.equal(sampleValue(parsed, single.name), 2);
  t.equal(sampleValue(parsed, 'probepilot_scrape_stale_total'), 1, 'the stale answer is counted');
});

t.test('Accept-Encoding and the scrape-timeout header', async (t) => {
  for (const [header, gzip] of [
    ['gzip', true],
    ['gzip, deflate', true],
    ['deflate, GZIP;q=0.5', true],
    ['gzip;q=0', false],
    ['identity', false],
    ['', false],
    [undefined, false],
    ['x-gzip', false],
  ] as const) {
    t.equal(acceptsGzip(header), gzip, `Accept-Encoding ${JSON.stringify(header)} → ${gzip ? 'gzip' : 'plain'}`);
  }
  t.equal(scrapeTimeout('10'), 10);
  t.equal(scrapeTimeout('0.5'), 0.5);
  t.equal(scrapeTimeout(['3', '4']), 3, 'the first of repeated headers');
  for (const bad of [undefined, '', 'abc', '0', '-1', 'Infinity']) t.equal(scrapeTimeout(bad), undefined, `${JSON.stringify(bad)}: no timeout`);
});
