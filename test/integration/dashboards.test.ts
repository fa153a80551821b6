// Every dashboard panel against a real Prometheus 2.42 that scrapes the real
// agent in Kubernetes mode while three pods make the traffic the panels show:
// TCP connections through a lossy firewall rule (retransmits, drops), refused
// connects (resets), datagrams to a closed port, direct I/O on a loop device,
// an OOM kill, OTLP pushes to a receiver, and a (fake NVML and DCGM) GPU that the kubelet's
// pod-resources API gives to two of the pods, whose processes use it. Variables are resolved in order
// with Grafana's label_values and must offer the test's pods; then every
// query, with the chosen values filled in, must run without error and return
// at least one finite value.
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { startAgent } from '../helpers/agent.js';
import { allPanels, interpolate, loadDashboards, parseLabelValues, regexValue, variableQuery, type DashboardFile } from '../helpers/dashboards.js';
import { requirePrivileges } from '../helpers/env.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { fakeDcgm, fakeNvml } from '../helpers/fake-gpu.js';
import { createLoopDevice } from '../helpers/loop-device.js';
import { oomKillIn } from '../helpers/oom.js';
import { OtlpReceiver } from '../helpers/otlp-receiver.js';
import { PodResourcesServer } from '../helpers/pod-resources-server.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { execChecked } from '../helpers/proc.js';
import { startPrometheus, type PrometheusServer } from '../helpers/prometheus.js';

const node = 'test-node';
const port = 5000;
const closedPort = 5001;
const dnsPort = 5053;
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
const allPods: Record<string, Choice> = {
  node: { select: [node] },
  job: { select: ['probepilot'] },
  namespace: { select: ['shop', 'db', 'batch'] },
  workload: { select: ['web', 'pg', 'report'] },
  pod: { select: ['web-0', 'pg-0', 'report-0'] },
  gpu: { select: ['0'] },
};
/** The GPU dashboard's pods are those with processes on a GPU: the batch pod has none. */
const gpuPods: Record<string, Choice> = { ...allPods, namespace: { select: ['shop', 'db'] }, workload: { select: ['web', 'pg'] }, pod: { select: ['web-0', 'pg-0'] } };
const choicesFor = (file: string) => (file === 'probepilot-gpu.json' ? gpuPods : allPods);

/** Resolves the dashboard's variables in order; a subtest per variable checks that the test's values are offered. */
async function resolveVariables(t: Test, prometheus: PrometheusServer, { file, dashboard }: DashboardFile): Promise<Record<string, string>> {
  const values: Record<string, string> = { ...builtins, datasource: 'prometheus' };
  for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
    const query = parseLabelValues(variableQuery(variable));
    if (!query) throw new Error(`${file} $${variable.name}: not a label_values query`);
    const offered = await prometheus.labelValues(query.label, interpolate(query.selector, values));
    const choice = choicesFor(file)[variable.name];
    if (choice === undefined) throw new Error(`${file} $${variable.name}: the test has no choice for this variable`);
    t.same(choice.select.filter((v) => !offered.includes(v)), [], `${file} $${variable.name} offers ${choice.select.join(', ')} (it offers ${offered.join(', ')})`);
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

  const gpuUuid = 'GPU-5f3c1a2e-8d4b-4c6a-9e1f-0a1b2c3d4e5f';
  const nvml = await fakeNvml(t);
  const dcgm = await fakeDcgm(t);
  dcgm.write({ gpus: [{ id: 0, uuid: gpuUuid, fields: { 1001: 0.8, 1002: 0.6, 1003: 0.4, 1004: 0.3, 1005: 0.5, 1006: 0.1, 1007: 0.5, 1008: 0.2, 1011: 1e9, 1012: 2e9 } }] });
  const socketDir = mkdtempSync(path.join(os.tmpdir(), 'pp-podres-'));
  t.teardown(() => rmSync(socketDir, { recursive: true, force: true }));
  const kubelet = new PodResourcesServer(path.join(socketDir, 'kubelet.sock'));
  kubelet.pods = [
    { namespace: 'shop', name: 'web-0', containers: [{ name: 'app', devices: [{ resourceName: 'nvidia.com/gpu', deviceIds: [`${gpuUuid}::0`] }] }] },
    { namespace: 'db', name: 'pg-0', containers: [{ name: 'app', devices: [{ resourceName: 'nvidia.com/gpu', deviceIds: [`${gpuUuid}::1`] }] }] },
  ];
  await kubelet.start();
  t.teardown(() => kubelet.stop());

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
      PROBEPILOT_COLLECTORS_GPU_ENABLED: 'true',
      PROBEPILOT_COLLECTORS_GPU_LIBRARY_PATH: nvml.library,
      PROBEPILOT_COLLECTORS_GPU_DCGM_LIBRARY_PATH: dcgm.library,
      PROBEPILOT_COLLECTORS_GPU_POD_RESOURCES_SOCKET: kubelet.socketPath,
      PROBEPILOT_COLLECTORS_DNS_PORTS: String(dnsPort),
      PROBEPILOT_COLLECTORS_DNS_TIMEOUT_SECONDS: '1',
    },
  });
  t.teardown(() => agent.stop());
  const prometheus = await startPrometheus({ targets: [`127.0.0.1:${agent.port}`], scrapeIntervalSeconds: scrapeSeconds, targetLabels: { node } });
  t.teardown(() => prometheus.stop());

  // 1 in 10 TCP segments to the server is dropped: retransmits, and NETFILTER_DROP drops in the server pod.
  const lossy = `table inet pp_dash {\n chain input {\n type filter hook input priority 0; policy accept;\n tcp dport ${port} numgen random mod 10 == 0 drop\n }\n}\n`;
  await execChecked('ip', ['netns', 'exec', pg.netns, 'nft', '-f', '-'], { input: lossy });
  const server = await background(t, pg, serverScript);
  const client = await background(t, web, clientScript(pg.ipv4, device));
  // DNS for the DNS panels: the web pod asks the pg pod's server (test/helpers/dns.ts) for a name that
  // resolves, one that fails and one that gets no answer, every half second.
  const dnsJs = path.join(path.dirname(fileURLToPath(import.meta.url)), '../helpers/dns.js');
  const dnsServer = pg.run(process.execPath, [dnsJs, 'serve', String(dnsPort), '5'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    dnsServer.kill('SIGKILL');
  });
  await once(dnsServer.stdout!, 'data');
  await background(
    t,
    web,
    `console.log('ready'); setInterval(() => require('node:child_process').spawn(process.execPath, [${JSON.stringify(dnsJs)}, 'query', '${pg.ipv4}', '${dnsPort}', 'udp', 'A', 'noerror-0.test', 'servfail-0.test', 'drop-0.test'], { stdio: 'ignore' }), 500);`,
  );
  // The two pods' scripts are the GPU's processes; XID 79 happened once.
  nvml.write({
    gpus: [
      {
        uuid: gpuUuid,
        name: 'NVIDIA-A100-SXM4-40GB',
        fields: { util: 64, memutil: 20, total: 42949672960, free: 30000000000, used: 12949672960, power: 250000, energy: 9000000, temp: 70, smclock: 1410, memclock: 1215, pcietx: 5000, pcierx: 9000, ecc_corrected: 1, ecc_uncorrected: 0 },
      },
    ],
    processes: [
      { gpu: 0, pid: client.pid!, bytes: 8 * 2 ** 30, sm: 40, mem: 15 },
      { gpu: 0, pid: server.pid!, bytes: 4 * 2 ** 30, sm: 20, mem: 5 },
    ],
    xids: [{ gpu: 0, xid: 79, total: 1 }],
  });
  const killed = await oomKillIn(t, report);
  t.equal(killed.signal, 'SIGKILL', 'the OOM killer ended the hog in the report pod');

  // Insights scores against a day of history this test does not have: test/integration/insights.test.ts runs its panels on backfilled days.
  const dashboards = loadDashboards().filter((d) => d.file !== 'probepilot-insights.json');
  // The traffic must have run for a few rate windows; then panels that are still empty get until the deadline.
  await prometheus.waitFor(async () => (await prometheus.query(`sum(increase(probepilot_tcp_retransmits_total{pod="web-0"}[${builtins.__rate_interval}])) > 0`)).length > 0, 60_000, 'retransmits of the web pod to be scraped');
  for (const file of dashboards) {
    await t.test(file.dashboard.title, async (t) => {
      const values = await resolveVariables(t, prometheus, file);
      let outcomes = await runPanels(prometheus, file, values);
      const deadline = Date.now() + 30_000;
      while (outcomes.some((o) => o.error === undefined && o.finite === 0) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 2000));
        outcomes = await runPanels(prometheus, file, values);
      }
      for (const o of outcomes) {
        t.equal(o.error, undefined, `${o.where}: runs without error`, { expr: o.expr });
        t.ok(o.finite > 0, `${o.where}: returns data (${o.finite} finite of ${o.total} series)`, { expr: o.expr });
      }
    });
  }
  t.ok(receiver.exports.length > 0, `the agent pushed OTLP meanwhile (${receiver.exports.length} exports), as the health dashboard shows`);
});
