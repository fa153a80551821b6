// Kubernetes mode end to end: test pods (netns + kubelet-shaped cgroup) whose
// pod objects a fake API server serves through the real list/watch protocol.
// Their metrics must carry namespace/pod/container/workload labels; an API
// outage keeps the labels and flips probepilot_kubernetes_api_up with a
// bounded request rate; 410 Gone makes the agent list again; a deleted pod's
// series go away after the grace period, even when the watch went silent.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { startAgent, type AgentProcess } from '../helpers/agent.js';
import { checkExposition, parseExposition, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { waitFor } from '../helpers/wait.js';
import { trueLoopScript } from '../helpers/proc.js';

const nodeName = 'test-node';
const graceSeconds = 3;
const relistSeconds = 10;

async function value(agent: AgentProcess, name: string, filter: LabelFilter): Promise<number> {
  return sumSamples(parseExposition(await agent.metrics()), name, filter);
}

t.test('pod identity from the API server on tracepoint and network metrics', async (t) => {
  if (!requirePrivileges(t, 'Kubernetes mode with real pods')) return;
  const { api, kubeconfig } = await startFakeKubeApi(t);

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const web = await net.addPod({ layout: 'systemd' });
  const batch = await net.addPod({ layout: 'cgroupfs', qos: 'besteffort' });
  const stranger = await net.addPod({ layout: 'systemd' });
  api.putObject('/apis/apps/v1/namespaces/shop/replicasets/web-7d9f', {
    apiVersion: 'apps/v1',
    kind: 'ReplicaSet',
    metadata: { name: 'web-7d9f', namespace: 'shop', ownerReferences: [{ apiVersion: 'apps/v1', kind: 'Deployment', name: 'web', uid: 'web-uid', controller: true }] },
  });
  api.putObject('/apis/batch/v1/namespaces/jobs/jobs/report-29000', {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: 'report-29000', namespace: 'jobs', ownerReferences: [{ apiVersion: 'batch/v1', kind: 'CronJob', name: 'report', uid: 'report-uid', controller: true }] },
  });
  api.upsertPod(podObject(web, { namespace: 'shop', name: 'web-7d9f-x2k4p', owner: { kind: 'ReplicaSet', name: 'web-7d9f' }, node: nodeName }));
  api.upsertPod(podObject(batch, { namespace: 'jobs', name: 'report-29000-q8zt1', owner: { kind: 'Job', name: 'report-29000' }, node: nodeName }));
  // Another node's pod: the field selector must keep it out.
  api.upsertPod(podObject(stranger, { namespace: 'elsewhere', name: 'not-mine', owner: { kind: 'StatefulSet', name: 'db' }, node: 'other-node' }));

  const agent = await startAgent({
    env: {
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: nodeName,
      PROBEPILOT_SERIES_GRACE_SECONDS: String(graceSeconds),
      PROBEPILOT_KUBERNETES_RELIST_INTERVAL_SECONDS: String(relistSeconds),
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_TCP_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_BLOCK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());
  t.ok(api.requests.some((r) => r.startsWith('/api/v1/pods?') && r.includes(`fieldSelector=spec.nodeName%3D${nodeName}`)), 'pods are listed for this node only');
  t.equal(await value(agent, 'probepilot_kubernetes_api_up', {}), 1, 'API server up');

  const webLabels = { namespace: 'shop', pod: 'web-7d9f-x2k4p', workload: 'web', workload_kind: 'Deployment' };
  const batchLabels = { namespace: 'jobs', pod: 'report-29000-q8zt1', workload: 'report', workload_kind: 'CronJob' };
  await t.test('labels on a per-container and a per-pod metric', async (t) => {
    for (const [pod, n] of [[web, 30], [batch, 12]] as const) t.equal((await pod.exec('sh', ['-c', trueLoopScript(n)])).code, 0);
    await web.exec('ping', ['-c', '3', '-i', '0.2', batch.ipv4]);
    await waitFor(async () => (await value(agent, 'probepilot_network_packets_total', { ...webLabels, direction: 'egress' })) >= 3, {
      timeoutMs: 15_000,
      what: 'the web pod\'s pings under its pod labels',
    });
    const text = await agent.metrics();
    t.same(checkExposition(text), [], 'exposition is well formed');
    const families = parseExposition(text);
    // Each command execs through ip netns exec: the loops n + 2 (ip, sh), the ping 2 (ip, ping).
    t.equal(sumSamples(families, 'probepilot_process_execs_total', { ...webLabels, container: 'app' }), 34, 'web: Deployment web, container app, 30 + 2 + 2 (ping) execs');
    t.equal(sumSamples(families, 'probepilot_process_execs_total', { ...batchLabels, container: 'app' }), 14, 'batch: CronJob report behind Job report-29000 (cgroupfs driver), 12 + 2 execs');
    t.equal(sumSamples(families, 'probepilot_process_execs_total', { namespace: 'elsewhere' }), 0, 'another node\'s pod never appears');
    const ping = sumSamples(families, 'probepilot_network_packets_total', { ...webLabels, direction: 'egress', protocol: 'icmp' });
    t.ok(ping >= 3, `network metrics carry pod labels (no container label): ${ping} ICMP packets from web`);
    t.notOk(families.find((f) => f.name === 'probepilot_network_bytes_total')?.samples.some((s) => 'container' in s.labels || 'cgroup' in s.labels), 'per-pod families have no container or cgroup label');
  });

  await t.test('an API outage keeps the labels, flips api_up, and retries with backoff', async (t) => {
    api.setFailing(true);
    await waitFor(async () => (await value(agent, 'probepilot_kubernetes_api_up', {})) === 0, { timeoutMs: 15_000, what: 'api_up to drop' });
    const requestsBefore = api.requests.length;
    t.equal((await web.exec('sh', ['-c', trueLoopScript(10)])).code, 0);
    t.equal(await value(agent, 'probepilot_process_execs_total', { ...webLabels, container: 'app' }), 46, 'counts still carry the last known labels during the outage: 34 + 10 + 2');
    await sleep(6000);
    const retries = api.requests.length - requestsBefore;
    // Backoff from 0.5 s doubling (with jitter) allows at most ~5 attempts in 6 s; a tight loop would make hundreds.
    t.ok(retries >= 1 && retries <= 8, `${retries} requests in 6 s of outage: retried, with backoff`);
    api.setFailing(false);
    await waitFor(async () => (await value(agent, 'probepilot_kubernetes_api_up', {})) === 1, { timeoutMs: 40_000, what: 'api_up to recover' });
    t.pass('api_up recovers when the server answers again');
  });

  await t.test('410 Gone on the watch makes the agent list again', async (t) => {
    const lists = () => api.requests.filter((r) => r.startsWith('/api/v1/pods?') && !r.includes('watch=true')).length;
    const before = lists();
    api.expireWatches();
    await waitFor(() => lists() > before, { timeoutMs: 15_000, what: 'a new pod list after 410 Gone' });
    t.pass('listed again after 410');
  });

  await t.test('a deleted pod\'s series go away after the grace period', async (t) => {
    api.deletePod('jobs', 'report-29000-q8zt1');
    await waitFor(async () => (await value(agent, 'probepilot_process_execs_total', { pod: 'report-29000-q8zt1' })) === 0, {
      timeoutMs: (graceSeconds + 15) * 1000,
      what: 'the deleted pod\'s series to disappear',
    });
    t.pass(`gone within ${graceSeconds} s grace plus a collection`);
    t.equal(await value(agent, 'probepilot_process_execs_total', { ...webLabels, container: 'app' }), 46, 'the other pod keeps its counts');
  });

  await t.test('a watch gone silent: the timed re-list still sees a deletion', async (t) => {
    api.silenceWatches();
    api.deletePod('shop', 'web-7d9f-x2k4p');
    await waitFor(async () => (await value(agent, 'probepilot_process_execs_total', { pod: 'web-7d9f-x2k4p' })) === 0, {
      timeoutMs: (relistSeconds + graceSeconds + 15) * 1000,
      what: 'the re-list to drop the pod the silent watch never reported',
    });
    t.pass(`dropped by the re-list (every ${relistSeconds} s) and gone after the grace period`);
  });

  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
