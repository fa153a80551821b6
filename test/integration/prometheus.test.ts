// Self-test of the Prometheus helper: a real Prometheus scrapes a fixed
// exposition from loopback, and the helper reads the exact values back.
import t from 'tap';
import { createServer } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { promtoolCheckMetrics, startPrometheus } from '../helpers/prometheus.js';
import { checkExposition } from '../helpers/exposition.js';

const exposition = `# HELP probepilot_selftest_events_total Events the fixture pretends to have seen.
# TYPE probepilot_selftest_events_total counter
probepilot_selftest_events_total{pod="caf\u00e9",note="a \\"quoted\\" word"} 12345.678
probepilot_selftest_events_total{pod="other",note=""} 2
# HELP probepilot_selftest_limit Fixture gauge at +Inf.
# TYPE probepilot_selftest_limit gauge
probepilot_selftest_limit +Inf
`;

t.test('the fixture exposition is clean for promtool and our checker', async (t) => {
  t.same(checkExposition(exposition), []);
  const lint = await promtoolCheckMetrics(exposition);
  t.ok(lint.ok, `promtool is clean: ${lint.output}`);
});

t.test('promtool findings are returned, not thrown', async (t) => {
  const lint = await promtoolCheckMetrics('# HELP events a counter without the suffix\n# TYPE events counter\nevents 1\n');
  t.notOk(lint.ok);
  t.match(lint.output, /_total/);
});

t.test('Prometheus scrapes a loopback target and answers queries exactly', async (t) => {
  const server = createServer((req, res) => {
    res.writeHead(req.url === '/metrics' ? 200 : 404, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
    res.end(req.url === '/metrics' ? exposition : '');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const target = `127.0.0.1:${(server.address() as AddressInfo).port}`;

  const prometheus = await startPrometheus({ targets: [target], scrapeIntervalSeconds: 1 });
  t.teardown(() => prometheus.stop());

  const up = await prometheus.waitFor(async () => {
    const result = await prometheus.query('up');
    return result.length === 1 && result[0]?.value === 1 ? result : undefined;
  }, 30_000, 'up == 1');
  t.same(up[0]?.labels, { __name__: 'up', instance: target, job: 'probepilot' });

  const events = await prometheus.query('probepilot_selftest_events_total{pod="café"}');
  t.equal(events.length, 1);
  t.equal(events[0]?.value, 12345.678, 'exact value read back');
  t.equal(events[0]?.labels.note, 'a "quoted" word', 'escaped label value read back');
  t.same(await prometheus.query('sum(probepilot_selftest_events_total)'), [{ labels: {}, value: 12347.678 }]);
  t.same(await prometheus.query('probepilot_selftest_limit'), [{ labels: { __name__: 'probepilot_selftest_limit', instance: target, job: 'probepilot' }, value: Infinity }]);
  t.same(await prometheus.query('scalar(up) * 2'), [{ labels: {}, value: 2 }], 'scalar results');
  await t.rejects(prometheus.query('sum('), /parse error/, 'a bad expression is an error');

  const targets = await prometheus.targets();
  t.equal(targets.length, 1);
  t.equal(targets[0]?.health, 'up');
  t.equal(targets[0]?.lastError, '');
  t.equal(targets[0]?.scrapeUrl, `http://${target}/metrics`);

  await prometheus.stop();
  await prometheus.stop();
  await t.rejects(fetch(`${prometheus.url}/-/ready`), 'stopped Prometheus no longer answers');
});
