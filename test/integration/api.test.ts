// The REST API and the CLI against a live agent in Kubernetes mode with two
// test pods exchanging datagrams: /api/v1/flows equals the /metrics counters
// at the same moment, rates follow what was sent, bad input of every kind is
// a 4xx with a JSON error (never a 5xx), a collector disabled at run time has
// its programs gone from the kernel and its series from /metrics and comes
// back counting, the event stream reports it and pods coming and going, the
// gRPC API answers the same, and the CLI prints what the API answers.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startKubernetesAgent, type AgentProcess } from '../helpers/agent.js';
import { programLoaded, requirePrivileges } from '../helpers/env.js';
import { findSamples, parseExposition } from '../helpers/exposition.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { waitFor } from '../helpers/wait.js';
import type { AgentStatus, FlowsResult } from '../../src/api/service.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';
import { credentials, status as grpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');
const port = 9999;

async function send(from: Pod, to: string, count: number, size = 100): Promise<void> {
  const script = `const s = require('node:dgram').createSocket('udp4'); let n = 0;
    const next = () => n++ < ${count} ? s.send(Buffer.alloc(${size}), ${port}, '${to}', next) : s.close(); next();`;
  const res = await from.exec(process.execPath, ['-e', script]);
  if (res.code !== 0) throw new Error(`sender failed: ${res.stderr}`);
}

async function api<T>(agent: AgentProcess, pathAndQuery: string, init?: RequestInit): Promise<{ status: number; body: T }> {
  const res = await fetch(`${agent.url}${pathAndQuery}`, init);
  return { status: res.status, body: (await res.json()) as T };
}

/** Reads a Server-Sent Events stream into parsed events until closed. */
function subscribe(t: Test, url: string): { events: Array<Record<string, unknown>> } {
  const events: Array<Record<string, unknown>> = [];
  const controller = new AbortController();
  t.teardown(() => controller.abort());
  void (async () => {
    const res = await fetch(url, { signal: controller.signal });
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').find((l) => l.startsWith('data: '));
        if (data) events.push(JSON.parse(data.slice(6)) as Record<string, unknown>);
      }
    }
  })().catch(() => undefined);
  return { events };
}

function runCli(args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 20_000 });
}

t.test('the REST API and the CLI against a live agent', async (t) => {
  if (!requirePrivileges(t, 'the agent API with real pods')) return;
  const { api: kube, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const web = await net.addPod();
  const pg = await net.addPod();
  kube.upsertPod(podObject(web, { namespace: 'shop', name: 'web-0', owner: { kind: 'StatefulSet', name: 'web' } }));
  kube.upsertPod(podObject(pg, { namespace: 'db', name: 'pg-0', owner: { kind: 'StatefulSet', name: 'pg' } }));
  const { agent, grpcAddress } = await startKubernetesAgent(t, { kubeconfig, runId: net.runId, collectors: ['network', 'process'] });
  const stream = subscribe(t, `${agent.url}/api/v1/events`);

  await send(web, pg.ipv4, 50);
  const webEgressToPg = { namespace: 'shop', pod: 'web-0', direction: 'egress', peer_class: 'pod', peer_workload: 'pg' };
  await waitFor(async () => findSamples(parseExposition(await agent.metrics()), 'probepilot_network_flow_packets_total', webEgressToPg)[0]?.value === 50, {
    timeoutMs: 10_000,
    what: 'the datagrams in /metrics',
  });

  await t.test('flows equal the /metrics counters at the same moment, in both views', async (t) => {
    for (const [view, bytesFamily, packetsFamily] of [
      ['peer', 'probepilot_network_flow_bytes_total', 'probepilot_network_flow_packets_total'],
      ['protocol', 'probepilot_network_bytes_total', 'probepilot_network_packets_total'],
    ] as const) {
      const { status, body } = await api<FlowsResult>(agent, `/api/v1/flows?view=${view}&limit=10000`);
      const families = parseExposition(await agent.metrics());
      t.equal(status, 200);
      t.ok(body.flows.length > 0 && body.total === body.flows.length, `${view}: ${body.total} flows, none cut`);
      t.equal(body.flows.length, findSamples(families, bytesFamily).length, `${view}: one flow per series of ${bytesFamily}`);
      let equal = 0;
      for (const flow of body.flows) {
        const labels = { ...flow.workload, direction: flow.direction, ...(flow.peer ?? {}), ...(flow.protocol !== undefined ? { protocol: flow.protocol } : {}) };
        const bytes = findSamples(families, bytesFamily, labels);
        const packets = findSamples(families, packetsFamily, labels);
        if (bytes.length === 1 && packets.length === 1 && bytes[0]!.value === flow.bytes && packets[0]!.value === flow.packets) equal++;
      }
      t.equal(equal, body.flows.length, `${view}: every flow's bytes and packets equal its /metrics series`);
    }
  });

  await t.test('filters, sorting, limit and rates', async (t) => {
    const { body: all } = await api<FlowsResult>(agent, '/api/v1/flows?pod=web-0&direction=egress&peer=db/pg');
    t.equal(all.flows.length, 1, 'pod, direction and peer narrow to the one flow');
    t.equal(all.flows[0]?.packets, 50, 'the 50 datagrams');
    t.equal(all.flows[0]?.bytes, 50 * (14 + 20 + 8 + 100), 'their bytes at L2');
    await new Promise((r) => setTimeout(r, 1100));
    await send(web, pg.ipv4, 30);
    await waitFor(async () => (await api<FlowsResult>(agent, '/api/v1/flows?pod=web-0&direction=egress&peer=pg')).body.flows[0]?.packets === 80, { timeoutMs: 10_000, what: 'the next 30' });
    const { body: later } = await api<FlowsResult>(agent, '/api/v1/flows?pod=web-0&direction=egress&peer=pg');
    const flow = later.flows[0]!;
    t.ok(later.intervalSeconds !== null && later.intervalSeconds >= 1, `rates over ${later.intervalSeconds} s`);
    const expected = 30 / later.intervalSeconds!;
    t.ok(Math.abs(flow.packetsPerSecond! - expected) / expected < 0.01, `packets/s ${flow.packetsPerSecond} = 30 datagrams over the interval (${expected.toFixed(3)})`);
    const { body: sorted } = await api<FlowsResult>(agent, '/api/v1/flows?sort=packets&limit=3');
    t.ok(sorted.flows.length <= 3, 'limit');
    t.same(sorted.flows.map((f) => f.packets), [...sorted.flows.map((f) => f.packets)].sort((a, b) => b - a), 'sorted by packets, largest first');
  });

  await t.test('bad input is a 4xx with a JSON error, never a 5xx', async (t) => {
    const badQueries = [
      'limit=0', 'limit=-1', 'limit=10001', 'limit=abc', 'limit=1e400', 'limit=1&limit=2', 'sort=rate', 'view=matrix', 'direction=up', 'protocol=sctp',
      'view=peer&protocol=tcp', 'view=protocol&peer=pg', 'bogus=1', `namespace=${'n'.repeat(300)}`, 'namespace=', `pod=${'%F0%9F%92%A5'.repeat(2000)}`, 'peer=%00', 'sort=',
    ];
    for (const query of badQueries) {
      const res = await fetch(`${agent.url}/api/v1/flows?${query}`);
      const body = (await res.json().catch(() => ({}))) as { error?: string; message?: string };
      t.ok(res.status >= 400 && res.status < 500 && typeof body.error === 'string' && typeof body.message === 'string', `flows?${query.slice(0, 60)} → ${res.status} ${body.message?.slice(0, 100)}`);
    }
    const badPuts: Array<[string, string, string]> = [
      ['network', '{"enabled":"yes"}', 'application/json'],
      ['network', '{"enabled":true,"extra":1}', 'application/json'],
      ['network', '{}', 'application/json'],
      ['network', 'not json', 'application/json'],
      ['network', 'enabled=true', 'text/plain'],
      ['nope', '{"enabled":false}', 'application/json'],
      ['x'.repeat(300), '{"enabled":false}', 'application/json'],
    ];
    for (const [name, body, type] of badPuts) {
      const res = await fetch(`${agent.url}/api/v1/collectors/${name}`, { method: 'PUT', headers: { 'content-type': type }, body });
      const json = (await res.json().catch(() => ({}))) as { message?: string };
      t.ok(res.status >= 400 && res.status < 500, `PUT collectors/${name.slice(0, 20)} ${body} → ${res.status} ${json.message?.slice(0, 100)}`);
    }
    const unknown = await api<{ error: string; message: string }>(agent, '/api/v1/collectors/nope', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"enabled":true}' });
    t.same([unknown.status, unknown.body.error], [404, 'unknown_collector']);
    t.match(unknown.body.message, 'network, sched, syscalls, tcp, block, drops, dns, process, gpu', 'an unknown collector lists the valid names');
    const sortError = await api<{ message: string }>(agent, '/api/v1/flows?sort=rate');
    t.match(sortError.body.message, 'querystring/sort must be one of: bytes, packets', 'a bad value names the key and the allowed values');
    t.equal((await api<{ error: string }>(agent, '/api/v1/nothing')).status, 404);
    t.equal((await fetch(`${agent.url}/healthz`)).status, 200, 'the agent is still up');
  });

  await t.test('a collector disabled at run time detaches and loses its series; enabled again it counts', async (t) => {
    const before = (await api<AgentStatus>(agent, '/api/v1/status')).body.collectors.find((c) => c.name === 'network')!;
    t.ok(before.up && before.programs.length === 2, 'network is up with its two programs');
    for (const program of before.programs) t.ok(programLoaded(program.id), `${program.name} is program ${program.id} in the kernel`);
    const disabled = await api<{ enabled: boolean; up: boolean; programs: unknown[] }>(agent, '/api/v1/collectors/network', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"enabled":false}' });
    t.same([disabled.status, disabled.body.enabled, disabled.body.up, disabled.body.programs.length], [200, false, false, 0]);
    for (const program of before.programs) t.notOk(programLoaded(program.id), `${program.name} (${program.id}) is gone from bpftool prog`);
    const families = parseExposition(await agent.metrics());
    t.equal(findSamples(families, 'probepilot_network_bytes_total').length, 0, 'its series left /metrics');
    t.equal(findSamples(families, 'probepilot_collector_up', { collector: 'network', reason: 'disabled through the API' })[0]?.value, 0, 'collector_up says why');

    const enabled = await api<{ up: boolean; programs: unknown[] }>(agent, '/api/v1/collectors/network', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"enabled":true}' });
    t.same([enabled.status, enabled.body.up, enabled.body.programs.length], [200, true, 2], 'attached again');
    for (const program of (enabled.body.programs as Array<{ id: number; name: string }>)) t.ok(programLoaded(program.id), `${program.name} is loaded again as ${program.id}`);
    await send(web, pg.ipv4, 7);
    await waitFor(async () => findSamples(parseExposition(await agent.metrics()), 'probepilot_network_flow_packets_total', webEgressToPg)[0]?.value === 7, {
      timeoutMs: 10_000,
      what: 'the new collector to count 7 datagrams from zero',
    });
    t.pass('series are back and count from zero (a counter reset Prometheus handles)');
    const collectorEvents = stream.events.filter((e) => e.type === 'collector' && e.collector === 'network');
    t.match(collectorEvents.slice(-2), [{ enabled: false, up: false, reason: 'disabled through the API' }, { enabled: true, up: true, reason: '' }], 'the event stream saw it go and come back');
    t.ok(stream.events.some((e) => e.type === 'interface' && e.action === 'attached' && String(e.interface).startsWith(`pp${net.runId}h`)), 'and the interfaces attached again');
  });

  await t.test('the event stream reports pods coming and going', async (t) => {
    kube.deletePod('db', 'pg-0');
    kube.upsertPod(podObject(pg, { namespace: 'db', name: 'pg-0', owner: { kind: 'StatefulSet', name: 'pg' } }));
    await waitFor(() => stream.events.filter((e) => e.type === 'pod' && e.pod === 'pg-0').length >= 2, { timeoutMs: 10_000, what: 'pod events' });
    t.match(stream.events.filter((e) => e.type === 'pod' && e.pod === 'pg-0').map((e) => e.action), ['deleted', 'added']);
    t.ok(stream.events.every((e) => typeof e.time === 'string'), 'every event carries its time');
  });

  await t.test('openapi.json describes every route', async (t) => {
    const { body } = await api<{ openapi: string; paths: Record<string, Record<string, { parameters?: Array<{ name: string }> }>> }>(agent, '/api/v1/openapi.json');
    t.equal(body.openapi, '3.1.0');
    t.same(Object.keys(body.paths).sort(), ['/api/v1/collectors', '/api/v1/collectors/{name}', '/api/v1/config/reload', '/api/v1/events', '/api/v1/flows', '/api/v1/openapi.json', '/api/v1/status', '/api/v1/workloads']);
    t.same(body.paths['/api/v1/flows']!.get!.parameters!.map((p) => p.name), ['view', 'namespace', 'pod', 'peer', 'protocol', 'direction', 'sort', 'limit']);
  });

  await t.test('gRPC: GetStatus, QueryFlows and StreamEvents answer as the REST API does', async (t) => {
    const Agent = agentServiceDefinition();
    const client = new Agent(grpcAddress, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => unknown>;
    t.teardown(() => client.close());
    const unary = <T>(method: string, request: object) =>
      new Promise<T>((resolve, reject) => client[method]!(request, (err: ServiceError | null, response: T) => (err ? reject(err) : resolve(response))));
    const status = await unary<{ version: string; mode: string; collectors: Array<{ name: string; up: boolean; programs: Array<{ id: number }> }> }>('GetStatus', {});
    const rest = (await api<AgentStatus>(agent, '/api/v1/status')).body;
    t.same([status.version, status.mode, status.collectors.map((c) => `${c.name} ${c.up}`)], [rest.version, rest.mode, rest.collectors.map((c) => `${c.name} ${c.up}`)], 'GetStatus: the same agent and collectors');
    t.same(status.collectors.find((c) => c.name === 'network')?.programs.map((p) => p.id), rest.collectors.find((c) => c.name === 'network')?.programs.map((p) => p.id), 'the same program ids');
    const flows = await unary<{ total: number; flows: Array<{ workload: Record<string, string>; packets: number; bytes: number }> }>('QueryFlows', { pod: 'web-0', direction: 'egress', peer: 'pg' });
    const restFlows = (await api<FlowsResult>(agent, '/api/v1/flows?pod=web-0&direction=egress&peer=pg')).body;
    t.same(flows.flows.map((f) => [f.workload.pod, f.packets, f.bytes]), restFlows.flows.map((f) => [f.workload.pod, f.packets, f.bytes]), 'QueryFlows: the same flows and counts');
    for (const bad of [{ limit: 20000 }, { view: 'matrix' }, { view: 'peer', protocol: 'tcp' }, { pod: 'a\u0000b' }]) {
      await t.rejects(unary('QueryFlows', bad), { code: grpcStatus.INVALID_ARGUMENT }, `QueryFlows ${JSON.stringify(bad)} is INVALID_ARGUMENT`);
    }
    const received: Array<{ type: string; attributes: Record<string, string> }> = [];
    const call = (client.StreamEvents as (request: object) => NodeJS.EventEmitter & { cancel(): void })({ types: ['pod'] });
    call.on('data', (event: { type: string; attributes: Record<string, string> }) => received.push(event));
    call.on('error', () => undefined);
    t.teardown(() => call.cancel());
    // Give the stream a moment to be registered before the pod appears.
    await new Promise((r) => setTimeout(r, 500));
    const extra = await net.addPod();
    kube.upsertPod(podObject(extra, { namespace: 'jobs', name: 'report-0', owner: { kind: 'StatefulSet', name: 'report' } }));
    await waitFor(() => received.some((e) => e.attributes.pod === 'report-0'), { timeoutMs: 10_000, what: 'the new pod on the gRPC stream' });
    t.match(received.find((e) => e.attributes.pod === 'report-0'), { type: 'pod', attributes: { action: 'added', namespace: 'jobs', pod: 'report-0' } }, 'StreamEvents: a test pod appears');
    t.ok(received.every((e) => e.type === 'pod'), 'only the requested event type');
  });

  await t.test('the CLI prints what the API answers', async (t) => {
    const status = runCli(['status', '--agent', agent.url, '-o', 'json']);
    t.equal(status.status, 0, status.stderr);
    const fromCli = JSON.parse(status.stdout) as AgentStatus;
    t.same({ ...fromCli, uptimeSeconds: 0, collectors: fromCli.collectors.map((c) => c.name) }, { ...(await api<AgentStatus>(agent, '/api/v1/status')).body, uptimeSeconds: 0, collectors: fromCli.collectors.map((c) => c.name) }, 'status -o json is the API answer');
    const table = runCli(['status', '--agent', agent.url, '-o', 'wide']);
    t.match(table.stdout, /^COLLECTOR\s+ENABLED\s+UP\s+SERIES\s+PROGRAMS\s+REASON$/m, 'a collectors table');
    t.match(table.stdout, /^network\s+yes\s+yes\s+\d+\s+2\s*$/m, 'network: enabled, up, two programs');
    t.match(table.stdout, new RegExp(`^pp${net.runId}h\\d+\\s+(tcx|clsact)\\s+`, 'm'), 'wide: the interfaces with their attach mode');
    const flows = runCli(['flows', '--agent', agent.url, '--pod', 'web-0', '--direction', 'egress', '--peer', 'pg']);
    t.equal(flows.status, 0, flows.stderr);
    t.match(flows.stdout, /^WORKLOAD\s+DIRECTION\s+PEER\s+BYTES\s+PACKETS\s+BYTES\/S\s+PACKETS\/S$/m, 'a flows table');
    t.match(flows.stdout, /^shop\/web-0\s+egress\s+db\/pg\s+\S+ \S+\s+7\s+/m, 'web-0 → db/pg with its 7 datagrams since the collector came back');
    const json = JSON.parse(runCli(['flows', '--agent', agent.url, '--pod', 'web-0', '-o', 'json']).stdout) as FlowsResult;
    t.ok(json.flows.every((f) => f.workload.pod === 'web-0'), 'flows -o json, filtered');
    const bad = runCli(['collectors', 'disable', 'nope', '--agent', agent.url]);
    t.equal(bad.status, 1, 'a refused request exits 1');
    t.match(bad.stderr, 'probepilot: PUT /api/v1/collectors/nope: no collector named "nope"; the collectors are network');
    const down = runCli(['status', '--agent', 'http://127.0.0.1:1']);
    t.equal(down.status, 1);
    t.match(down.stderr, 'probepilot: cannot reach the agent at http://127.0.0.1:1');
  });

  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
