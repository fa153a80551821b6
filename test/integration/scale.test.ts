// /metrics with a big kernel table: 80 cgroups x every syscall slot written
// into the live agent's syscall_stats map with bpftool (3,000+ entries,
// 100k+ series) read back exactly, in a chunked body that our checker and
// promtool find clean, the same bytes gzip-compressed when asked; concurrent
// scrapes and API queries share one collection; a scrape whose timeout is
// too short for a collection gets the previous exposition, counted; and a
// real Prometheus scrapes it all.
import t from 'tap';
import { request } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import { checkExposition, parseExposition, sampleValue, type MetricFamily } from '../helpers/exposition.js';
import { promtoolCheckMetrics, startPrometheus } from '../helpers/prometheus.js';
import { fillSyscallStats, syntheticSlots as slots, syntheticValue as written, syntheticWorkloads } from '../helpers/syscall-table.js';
import { loadAddon } from '../../src/bpf/addon.js';
import type { FlowsResult } from '../../src/api/service.js';

interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** GET with exactly these headers (fetch would add Accept-Encoding and decompress). */
function rawGet(agent: AgentProcess, urlPath: string, headers: Record<string, string> = {}): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: agent.port, path: urlPath, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

function counterOf(families: readonly MetricFamily[], name: string, collector: string): number {
  return sampleValue(families, name, { collector }) ?? NaN;
}

t.test('a big kernel table through /metrics', async (t) => {
  if (!requirePrivileges(t, 'BPF maps filled through bpftool')) return;
  const cpus = loadAddon().possibleCpus();
  const workloads = syntheticWorkloads(80);
  t.teardown(() => workloads.remove());
  const parentName = workloads.name;
  const agent = await startAgent({
    env: {
      ...onlyCollectors('syscalls', 'network'),
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: 'pp-scale-no-such-interface*',
      // Queries answer from the last collection for this long: only scrapes collect in this test.
      PROBEPILOT_COLLECTION_MAX_AGE_SECONDS: '60',
      PROBEPILOT_LOG_LEVEL: 'info',
    },
  });
  t.teardown(() => agent.stop());

  const entries = await fillSyscallStats(agent, workloads);

  const plain = await rawGet(agent, '/metrics');
  t.equal(plain.status, 200);
  t.equal(plain.headers['content-encoding'], undefined, 'not compressed unless asked');
  t.match(plain.headers['transfer-encoding'], 'chunked', 'streamed in chunks');
  const families = parseExposition(plain.body);

  await t.test('every entry written reads back exactly', async (t) => {
    const label = (w: number) => `/${parentName}/w${w}`;
    const index = (name: string) => {
      const byKey = new Map<string, number>();
      for (const sample of families.find((f) => f.name === name)?.samples ?? []) {
        byKey.set(`${sample.name}\0${sample.labels.cgroup}\0${sample.labels.syscall}\0${sample.labels.le ?? ''}`, sample.value);
      }
      return byKey;
    };
    const calls = index('probepilot_syscalls_total');
    const errors = index('probepilot_syscall_errors_total');
    const latency = index('probepilot_syscall_latency_seconds');
    let exact = 0;
    let series = 0;
    for (let w = 0; w < workloads.ids.length; w++) {
      for (const [s, syscall] of slots.entries()) {
        const v = written(w, s);
        const at = (name: string, le = '') => `${name}\0${label(w)}\0${syscall}\0${le}`;
        const ok =
          calls.get(at('probepilot_syscalls_total')) === v.calls * cpus &&
          errors.get(at('probepilot_syscall_errors_total')) === v.errors * cpus &&
          latency.get(at('probepilot_syscall_latency_seconds_bucket', String(2 ** 11 / 1e9))) === v.fast * cpus &&
          latency.get(at('probepilot_syscall_latency_seconds_bucket', String(2 ** 21 / 1e9))) === (v.fast + v.slow) * cpus &&
          latency.get(at('probepilot_syscall_latency_seconds_bucket', '+Inf')) === (v.fast + v.slow) * cpus &&
          latency.get(at('probepilot_syscall_latency_seconds_count')) === (v.fast + v.slow) * cpus &&
          Math.abs(latency.get(at('probepilot_syscall_latency_seconds_sum'))! - (v.sumNs * cpus) / 1e9) < 1e-12;
        if (ok) exact++;
      }
    }
    for (const family of families) series += family.samples.length;
    t.equal(exact, entries, `all ${entries} entries: calls, errors, two buckets, +Inf, count and sum equal what was written (x ${cpus} CPUs)`);
    t.ok(series > 100_000, `${series} series in one scrape`);
  });

  await t.test('the exposition is clean for our checker and promtool', async (t) => {
    t.same(checkExposition(plain.body), [], 'no duplicates, histograms consistent, valid UTF-8');
    const lint = await promtoolCheckMetrics(plain.body);
    t.ok(lint.ok, `promtool check metrics: ${lint.output.slice(0, 300)}`);
  });

  await t.test('gzip when asked: the same bytes, compressed', async (t) => {
    // Sent together, they share one exposition.
    const [gzipped, again] = await Promise.all([rawGet(agent, '/metrics', { 'accept-encoding': 'gzip' }), rawGet(agent, '/metrics')]);
    t.equal(gzipped.headers['content-encoding'], 'gzip');
    t.equal(gzipped.headers.vary, 'accept-encoding');
    const decoded = gunzipSync(gzipped.body);
    t.ok(gzipped.body.length * 5 < decoded.length, `${gzipped.body.length} bytes for ${decoded.length}`);
    t.ok(decoded.equals(again.body), 'decodes to the body of the plain scrape that shared its collection');
    t.same(checkExposition(decoded), []);
  });

  await t.test('concurrent scrapes and API queries share one collection', async (t) => {
    const before = parseExposition((await rawGet(agent, '/metrics')).body);
    const burst = await Promise.all([
      ...Array.from({ length: 4 }, () => rawGet(agent, '/metrics', { 'accept-encoding': 'gzip' })),
      ...Array.from({ length: 4 }, () => rawGet(agent, '/api/v1/flows?view=protocol&limit=10000')),
    ]);
    t.ok(burst.every((r) => r.status === 200), 'every answer 200');
    const flows = JSON.parse(burst[4]!.body.toString()) as FlowsResult;
    t.equal(flows.view, 'protocol');
    const after = parseExposition((await rawGet(agent, '/metrics')).body);
    for (const collector of ['syscalls', 'network']) {
      const ran = counterOf(after, 'probepilot_collector_collections_total', collector) - counterOf(before, 'probepilot_collector_collections_total', collector);
      t.equal(ran, 2, `${collector}: one collection for the 4 scrapes and 4 queries, one for the scrape that reads the counter`);
    }
  });

  await t.test('a scrape timeout too short for a collection: the previous exposition at once, counted', async (t) => {
    const previous = await rawGet(agent, '/metrics');
    const staleBefore = sampleValue(parseExposition(previous.body), 'probepilot_scrape_stale_total');
    t.equal(staleBefore, 0);
    const late = await rawGet(agent, '/metrics', { 'x-prometheus-scrape-timeout-seconds': '0.001' });
    t.equal(late.status, 200);
    t.ok(late.body.equals(previous.body), 'byte for byte the previous complete exposition');
    const next = parseExposition((await rawGet(agent, '/metrics', { 'x-prometheus-scrape-timeout-seconds': '30' })).body);
    t.equal(sampleValue(next, 'probepilot_scrape_stale_total'), 1, 'counted in probepilot_scrape_stale_total');
    // The next scrape joins the collection the late one started if it is still under way, else makes its own.
    const ran = counterOf(next, 'probepilot_collector_collections_total', 'syscalls') - counterOf(parseExposition(previous.body), 'probepilot_collector_collections_total', 'syscalls');
    t.ok(ran === 1 || ran === 2, `the collection the late scrape started went on (${ran} since the previous exposition)`);
  });

  await t.test('a real Prometheus scrapes it (gzip, its timeout header) without errors', async (t) => {
    const prometheus = await startPrometheus({ targets: [`127.0.0.1:${agent.port}`], scrapeIntervalSeconds: 2 });
    t.teardown(() => prometheus.stop());
    const scraped = await prometheus.waitFor(async () => {
      const result = await prometheus.query('scrape_samples_scraped');
      return result[0] && result[0].value > 0 ? result[0].value : undefined;
    }, 60_000, 'a scrape');
    t.ok(scraped > 100_000, `${scraped} samples in one scrape`);
    const [target] = await prometheus.targets();
    t.equal(target?.health, 'up');
    t.equal(target?.lastError, '', 'no scrape error');
    t.same(await prometheus.query(`count(probepilot_syscalls_total{cgroup=~"/${parentName}/.*"})`), [{ labels: {}, value: entries }], 'every entry is a series');
    const v = written(3, 5);
    t.same(
      (await prometheus.query(`probepilot_syscalls_total{cgroup="/${parentName}/w3",syscall="${slots[5]}"}`)).map((s) => s.value),
      [v.calls * cpus],
      'a value read back through Prometheus',
    );
  });
});
