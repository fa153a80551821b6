// Every dashboard panel against a real Prometheus 2.42 that scrapes the real
// agent in Kubernetes mode while three pods make the traffic the panels show:
// TCP connections through a lossy firewall rule (retransmits, drops), refused
// connects (resets), datagrams to a closed port, direct I/O on a loop device,
// an OOM kill, OTLP pushes to a receiver. Variables are resolved in order
// with Grafana's label_values and must offer the test's pods; then every
// query, with the chosen values filled in, must run without error and return
// at least one finite value.
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { startAgent } from '../helpers/agent.js';
import { allPanels, interpolate, loadDashboards, parseLabelValues, regexValue, variableQuery, type DashboardFile } from '../helpers/dashboards.js';
import { requirePrivileges } from '../helpers/env.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { createLoopDevice } from '../helpers/loop-device.js';
import { oomKillIn } from '../helpers/oom.js';
import { OtlpReceiver } from '../helpers/otlp-receiver.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { execChecked } from '../helpers/proc.js';
import { startPrometheus, type PrometheusServer } from '../helpers/prometheus.js';

const node = 'test-node';
const port = 5000;
const closedPort = 5001;
const scrapeSeconds = 1;
// What Grafana would put in for a short range at a 1 s scrape interval ($__rate_interval ≥ 4 scrapes).
const builtins = { __interval: '2s', __rate_interval: '10s', __range: '5m' };

/** Accepts TCP on [::]:port and discards what it reads. */
const serverScript = `
const s = require('node:net').createServer((c) => { c.on('data', () => {}); c.on('error', () => {}); });
s.listen(${port}, '::', () => console.log('ready'));`;

/**
 * Forever, every 100 ms: a connection that sends 64 KiB and closes, a connect
 * to a closed port, a datagram to a closed port; every second a direct read
 * of the loop device with dd (block I/O and an exec).
 */
const clientScript = (server: string, device: string) => `
const net = require('node:net');
const dgram = require('node:dgram').createSocket('udp4');
const { spawn } = require('node:child_process');
setInterval(() => {
  const c = net.connect({ host: '${server}', port: ${port} }, () => c.end(Buffer.alloc(65536, 1)));
  c.on('error', () => {});
  net.connect({ host: '${server}', port: ${closedPort} }).on('error', () => {});
  dgram.send(Buffer.alloc(64), ${closedPort}, '${server}');
}, 100);
setInterval(() => spawn('dd', ['if=/dev/${device}', 'of=/dev/null', 'iflag=direct', 'bs=4k', 'count=16'], { stdio: 'ignore' }), 1000);
console.log('running');`;

function background(t: Test, pod: Pod, script: string): Promise<ChildProcess> {
  const child = pod.run(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`script in ${pod.name} exited (${code}) before it started`)));
  });
}

interface Choice {
  /** Values the test selects for a variable; they must be among the values the variable offers. */
  select: string[];
}

/** What the test selects, per variable name: the three test pods, this node, the agent's job. */
const choices: Record<string, Choice> = {
  node: { select: [node] },
  job: { select: ['probepilot'] },
  namespace: { select: ['shop', 'db', 'batch'] },
  workload: { select: ['web', 'pg', 'report'] },
  pod: { select: ['web-0', 'pg-0', 'report-0'] },
};

/** Resolves the dashboard's variables in order; a subtest per variable checks that the test's values are offered. */
async function resolveVariables(t: Test, prometheus: PrometheusServer, { file, dashboard }: DashboardFile, expectData: boolean): Promise<Record<string, string>> {
  const values: Record<string, string> = { ...builtins, datasource: 'prometheus' };
  for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
    const query = parseLabelValues(variableQuery(variable));
    if (!query) throw new Error(`${file} $${variable.name}: not a label_values query`);
    const offered = await prometheus.labelValues(query.label, interpolate(query.selector, values));
    const choice = choices[variable.name];
    if (choice === undefined) {
      // A variable only one dashboard has (the GPU index): select all it offers.
      values[variable.name] = variable.allValue ?? '.*';
      if (expectData) t.ok(offered.length > 0, `${file} $${variable.name} offers values (${offered.join(', ')})`);
      continue;
    }
    if (expectData) t.same(choice.select.filter((v) => !offered.includes(v)), [], `${file} $${variable.name} offers ${choice.select.join(', ')} (it offers ${offered.join(', ')})`);
    values[variable.name] = regexValue(choice.select);
  }
  return values;
}

interface Outcome {
  where: string;
  expr: string;
  error?: string;
  finite: number;
  total: number;
}

async function runPanels(prometheus: PrometheusServer, { file, dashboard }: DashboardFile, values: Record<string, string>): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  for (const panel of allPanels(dashboard).filter((p) => p.type !== 'row')) {
    for (const target of panel.targets ?? []) {
      const expr = interpolate(target.expr, values);
      const where = `${file} "${panel.title}" ${target.refId}`;
      try {
        const samples = await prometheus.query(expr);
        outcomes.push({ where, expr, finite: samples.filter((s) => Number.isFinite(s.value)).length, total: samples.length });
      } catch (err) {
        outcomes.push({ where, expr, error: err instanceof Error ? err.message : String(err), finite: 0, total: 0 });
      }
    }
  }
  return outcomes;
}

t.test('every dashboard panel returns data from a real Prometheus scraping the agent', async (t) => {
  if (!requirePrivileges(t, 'dashboards against the real agent with pod traffic')) return;
  const { api, kubeconfig } = await startFakeKubeApi(t);
  const device = await createLoopDevice(t, 16 * 1024 * 1024);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const [web, pg, report] = [await net.addPod(), await net.addPod(), await net.addPod()] as const;
  api.upsertPod(podObject(web, { namespace: 'shop', name: 'web-0', owner: { kind: 'StatefulSet', name: 'web' }, node }));
  api.upsertPod(podObject(pg, { namespace: 'db', name: 'pg-0', owner: { kind: 'StatefulSet', name: 'pg' }, node }));
  api.upsertPod(podObject(report, { namespace: 'batch', name: 'report-0', owner: { kind: 'StatefulSet', name: 'report' }, node }));

  const receiver = new OtlpReceiver();
  await receiver.start();
  t.teardown(() => receiver.stop());
  const agent = await startAgent({
    env: {
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: node,
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_BPF_STATS: 'true',
      PROBEPILOT_OTLP_ENDPOINT: receiver.endpoint,
      PROBEPILOT_OTLP_INTERVAL_SECONDS: '1',
    },
  });
  t.teardown(() => agent.stop());
  const prometheus = await startPrometheus({ targets: [`127.0.0.1:${agent.port}`], scrapeIntervalSeconds: scrapeSeconds, targetLabels: { node } });
  t.teardown(() => prometheus.stop());

  // 1 in 10 TCP segments to the server is dropped: retransmits, and NETFILTER_DROP drops in the server pod.
  const lossy = `table inet pp_dash {\n chain input {\n type filter hook input priority 0; policy accept;\n tcp dport ${port} numgen random mod 10 == 0 drop\n }\n}\n`;
  await execChecked('ip', ['netns', 'exec', pg.netns, 'nft', '-f', '-'], { input: lossy });
  await background(t, pg, serverScript);
  await background(t, web, clientScript(pg.ipv4, device));
  const killed = await oomKillIn(t, report);
  t.equal(killed.signal, 'SIGKILL', 'the OOM killer ended the hog in the report pod');

  const dashboards = loadDashboards();
  // The traffic must have run for a few rate windows; then panels that are still empty get until the deadline.
  await prometheus.waitFor(async () => (await prometheus.query(`sum(increase(probepilot_tcp_retransmits_total{pod="web-0"}[${builtins.__rate_interval}])) > 0`)).length > 0, 60_000, 'retransmits of the web pod to be scraped');
  for (const file of dashboards) {
    const gpu = file.file === 'probepilot-gpu.json';
    await t.test(file.dashboard.title, async (t) => {
      const values = await resolveVariables(t, prometheus, file, !gpu);
      let outcomes = await runPanels(prometheus, file, values);
      if (!gpu) {
        const deadline = Date.now() + 30_000;
        while (outcomes.some((o) => o.error === undefined && o.finite === 0) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 2000));
          outcomes = await runPanels(prometheus, file, values);
        }
      }
      for (const o of outcomes) {
        t.equal(o.error, undefined, `${o.where}: runs without error`, { expr: o.expr });
        if (gpu) continue;
        t.ok(o.finite > 0, `${o.where}: returns data (${o.finite} finite of ${o.total} series)`, { expr: o.expr });
      }
      if (gpu) t.todo('GPU panels return data once the GPU collector (#6) exports these names', () => {});
    });
  }
  t.ok(receiver.exports.length > 0, `the agent pushed OTLP meanwhile (${receiver.exports.length} exports), as the health dashboard shows`);
});
