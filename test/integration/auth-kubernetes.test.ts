// Delegated authentication and authorization (auth.mode=kubernetes) against
// the Kubernetes API fixture's TokenReview and SubjectAccessReview, with two
// test pods in two namespaces: a service account granted in namespace team-a
// only is a tenant — /metrics, flows, workloads, events (REST) and gRPC show
// it team-a's pods and never team-b's; decisions are cached for
// auth.cacheTtlSeconds, honoured while the API server is down until they
// expire, and new identities are refused meanwhile.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { credentials, Metadata, type Client, type ServiceError } from '@grpc/grpc-js';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { podObject, startFakeKubeApi, type KubeObject } from '../helpers/kube-api.js';
import { waitFor } from '../helpers/wait.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';

const nodeName = 'test-node';
const ttlSeconds = 3;
const admin = { token: 'admin-sa-token-7c6b5a4f3e2d', user: 'system:serviceaccount:monitoring:prometheus' };
const tenant = { token: 'tenant-a-token-1a2b3c4d5e6f', user: 'system:serviceaccount:team-a:reader' };
const late = { token: 'late-token-9f8e7d6c5b4a3', user: 'system:serviceaccount:monitoring:late' };
const stranger = { token: 'no-grants-token-0f1e2d3c4b5a', user: 'system:serviceaccount:default:nobody' };

t.test('TokenReview and SubjectAccessReview: roles, namespace tenants, the cache and an API server outage', async (t) => {
  if (!requirePrivileges(t, 'Kubernetes mode with real pods')) return;
  const { api, kubeconfig } = await startFakeKubeApi(t);
  for (const id of [admin, tenant, late, stranger]) api.users.set(id.token, { username: id.user, uid: `${id.user}-uid`, groups: ['system:serviceaccounts'] });
  for (const user of [admin.user, late.user]) {
    api.grants.push({ user, verb: 'get', nonResourcePath: '/metrics' });
    for (const [resource, verb] of [['status', 'get'], ['flows', 'get'], ['workloads', 'get'], ['events', 'watch']] as const) api.grants.push({ user, verb, resource });
  }
  for (const [resource, verb] of [['metrics', 'get'], ['flows', 'get'], ['workloads', 'get'], ['events', 'watch']] as const) api.grants.push({ user: tenant.user, verb, resource, namespace: 'team-a' });

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'systemd' });
  const b = await net.addPod({ layout: 'systemd' });
  const podA = 'web-a-5f7d9-x1';
  const podB = 'db-b-0';
  api.upsertPod(podObject(a, { namespace: 'team-a', name: podA, owner: { kind: 'ReplicaSet', name: 'web-a-5f7d9' }, node: nodeName }));
  api.upsertPod(podObject(b, { namespace: 'team-b', name: podB, owner: { kind: 'StatefulSet', name: 'db-b' }, node: nodeName }));

  const agent = await startAgent({
    env: {
      ...onlyCollectors('network'),
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      PROBEPILOT_KUBERNETES_NODE_PEERS: 'false',
      NODE_NAME: nodeName,
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_AUTH_MODE: 'kubernetes',
      PROBEPILOT_AUTH_CACHE_TTL_SECONDS: String(ttlSeconds),
      PROBEPILOT_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND: '0',
    },
    args: ['--grpc-listen', '127.0.0.1:0'],
  });
  t.teardown(() => agent.stop());
  const get = (path: string, token?: string) => fetch(`${agent.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });

  // Both pods send: a pings b, b pings a.
  await a.exec('ping', ['-c', '3', '-i', '0.2', b.ipv4]);
  await b.exec('ping', ['-c', '3', '-i', '0.2', a.ipv4]);
  const adminText = await waitFor(async () => {
    const text = await (await get('/metrics', admin.token)).text();
    const families = parseExposition(text);
    return sumSamples(families, 'probepilot_network_packets_total', { namespace: 'team-a', direction: 'egress' }) >= 3 && sumSamples(families, 'probepilot_network_packets_total', { namespace: 'team-b', direction: 'egress' }) >= 3 && text;
  }, { timeoutMs: 20_000, what: 'both pods\' packets under their namespaces' });

  await t.test('authentication and authorization', async (t) => {
    t.equal((await get('/metrics')).status, 401, 'no token: 401');
    t.equal((await get('/metrics', 'not-a-token-the-api-knows')).status, 401, 'a token TokenReview rejects: 401');
    t.equal((await get('/metrics', stranger.token)).status, 403, 'a user without a grant: 403');
    t.equal((await get('/api/v1/status', tenant.token)).status, 403, 'the tenant has no grant on status: 403');
    const put = await fetch(`${agent.url}/api/v1/collectors/network`, { method: 'PUT', headers: { authorization: `Bearer ${admin.token}`, 'content-type': 'application/json' }, body: '{"enabled":true}' });
    t.equal(put.status, 403, 'update collectors is not granted to the scraper: 403');
    t.match(await put.json(), { message: /may not update collectors\.probepilot\.io/ }, 'the message names the verb and resource');
  });

  await t.test('the tenant sees team-a only, in /metrics, flows, workloads, events and gRPC', async (t) => {
    t.match(adminText, podB, 'the cluster-wide scraper sees team-b\'s pod');
    const text = await (await get('/metrics', tenant.token)).text();
    const families = parseExposition(text);
    t.ok(sumSamples(families, 'probepilot_network_packets_total', { namespace: 'team-a', pod: podA, direction: 'egress' }) >= 3, 'its own pod\'s packets');
    t.notOk(text.includes(podB) || text.includes('team-b'), 'no series names team-b or its pod');
    const namespaces = new Set(families.flatMap((f) => f.samples.map((s) => s.labels.namespace)).filter((n) => n !== undefined));
    t.same([...namespaces], ['team-a'], 'every namespaced series is team-a\'s');
    t.ok(sumSamples(families, 'probepilot_collector_up', { collector: 'network' }) === 1, 'the agent\'s own series are there');

    const flows = (await (await get('/api/v1/flows?view=protocol&limit=100', tenant.token)).json()) as { flows: Array<{ workload: Record<string, string> }> };
    t.ok(flows.flows.length > 0 && flows.flows.every((f) => f.workload.namespace === 'team-a'), `protocol flows: ${flows.flows.length}, all team-a`);
    const peers = await (await get('/api/v1/flows?view=peer&limit=100', tenant.token)).text();
    t.notOk(peers.includes(podB) || peers.includes('team-b'), 'the peer matrix hides flows naming team-b');
    const asked = (await (await get('/api/v1/flows?namespace=team-b', tenant.token)).json()) as { total: number };
    t.equal(asked.total, 0, 'asking for team-b explicitly gets nothing');
    const workloads = (await (await get('/api/v1/workloads?limit=100', tenant.token)).json()) as { workloads: Array<{ workload: Record<string, string> }> };
    t.same(workloads.workloads.map((w) => w.workload.pod), [podA], 'workloads: its pod only');

    const controller = new AbortController();
    t.teardown(() => controller.abort());
    const stream = await fetch(`${agent.url}/api/v1/events?types=pod`, { headers: { authorization: `Bearer ${tenant.token}` }, signal: controller.signal });
    t.equal(stream.status, 200, 'the tenant may stream events');
    const extra = (namespace: string, name: string): KubeObject => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace, uid: `${name}-uid` }, spec: { nodeName }, status: { phase: 'Running' } });
    await sleep(300);
    api.upsertPod(extra('team-b', 'secret-b-1'));
    api.upsertPod(extra('team-a', 'new-a-1'));
    const reader = stream.body!.getReader();
    let seen = '';
    await waitFor(async () => {
      const { value } = await reader.read();
      seen += new TextDecoder().decode(value);
      return seen.includes('new-a-1');
    }, { timeoutMs: 15_000, what: 'team-a\'s new pod on the tenant\'s stream' });
    t.notOk(seen.includes('secret-b-1'), 'team-b\'s pod, added first, never reached the tenant\'s stream');
    controller.abort();

    const grpcAddress = String((await agent.waitForLog((l) => l.msg === 'gRPC API listening', 'the gRPC API')).address);
    const Agent = agentServiceDefinition();
    const client = new Agent(grpcAddress, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => unknown>;
    t.teardown(() => client.close());
    const md = new Metadata();
    md.set('authorization', `Bearer ${tenant.token}`);
    const answer = await new Promise<{ workloads: Array<{ workload: Record<string, string> }> }>((resolve, reject) =>
      client.QueryWorkloads!({ limit: 100 }, md, (err: ServiceError | null, r: { workloads: Array<{ workload: Record<string, string> }> }) => (err ? reject(err) : resolve(r))),
    );
    t.same(answer.workloads.map((w) => w.workload.pod), [podA], 'gRPC QueryWorkloads: its pod only');
  });

  await t.test('cached decisions while the API server is down, until they expire; new identities refused', async (t) => {
    await get('/metrics', admin.token);
    const before = { ...api.reviews };
    t.equal((await get('/metrics', admin.token)).status, 200, 'within the TTL');
    t.same(api.reviews, before, 'answered from the cache: no new review');
    await api.stop();
    t.equal((await get('/metrics', admin.token)).status, 200, 'API server down: the cached allow is honoured');
    const refused = await get('/metrics', late.token);
    t.equal(refused.status, 503, 'a new identity is refused (fail closed)');
    t.match(await refused.json(), { error: 'auth_unavailable' });
    // The agent's stdout reaches the test a moment after its answer.
    const said = await agent.waitForLog((l) => l.component === 'auth' && /unreachable/.test(l.msg), 'the unreachable log line', 5_000).then(
      () => true,
      () => false,
    );
    t.ok(said, 'a clear log line says so');
    await sleep((ttlSeconds + 0.5) * 1000);
    t.equal((await get('/metrics', admin.token)).status, 503, 'once the cached decision expired: refused too');
    await api.start();
    await waitFor(async () => (await get('/metrics', admin.token)).status === 200, { timeoutMs: 10_000, what: 'allowed again with the API server back' });
    t.equal((await get('/metrics', late.token)).status, 200, 'and the new identity too');
  });
});
