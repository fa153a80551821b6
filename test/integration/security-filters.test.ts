// Security events scoped in the kernel and filtered by kind, in Kubernetes
// mode against the API server fixture. With security.namespaces.include=shop
// and security.namespaces.exclude=noisy (and a cgroup of shop excluded by
// path), K execs in the shop pod are exactly K exec events and a counter of
// K, while the noisy pod's exec loop — far beyond the rate limit's burst —
// never reaches userspace: no event, no counter, and no rate-limited or lost
// events (the scope is decided before the token bucket), and the events read
// from the ring buffer are only the shop pod's. The kinds filter of the
// security trace (REST through `probepilot trace security --kinds`, gRPC
// StreamEvents) delivers only the kinds asked for; unknown kinds are refused
// naming the allowed ones.
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, status as grpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type LogLine } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { waitFor } from '../helpers/wait.js';
import { trueLoopScript } from '../helpers/proc.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

t.test('security events: namespaces and cgroups scoped in the kernel, kinds filtered per stream', async (t) => {
  if (!requirePrivileges(t, 'security scope')) return;
  const { api: kube, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const shop = await net.addPod({ layout: 'systemd' });
  const noisy = await net.addPod({ layout: 'systemd' });
  const fenced = await net.addPod({ layout: 'cgroupfs' });
  kube.upsertPod(podObject(shop, { namespace: 'shop', name: 'web-0', owner: { kind: 'StatefulSet', name: 'web' } }));
  kube.upsertPod(podObject(noisy, { namespace: 'noisy', name: 'storm-0', owner: { kind: 'StatefulSet', name: 'storm' } }));
  kube.upsertPod(podObject(fenced, { namespace: 'shop', name: 'fenced-0', owner: { kind: 'StatefulSet', name: 'fenced' } }));
  const burst = 200;
  const agent = await startAgent({
    env: {
      ...onlyCollectors(),
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: 'test-node',
      PROBEPILOT_SECURITY_ENABLED: 'true',
      PROBEPILOT_EVENTS_RATE_PER_SECOND: '1',
      PROBEPILOT_EVENTS_BURST: String(burst),
      PROBEPILOT_SECURITY_NAMESPACES_INCLUDE: 'shop',
      PROBEPILOT_SECURITY_NAMESPACES_EXCLUDE: 'noisy',
      // The pod's own cgroup (the container's parent): everything below it is out.
      PROBEPILOT_SECURITY_CGROUPS_EXCLUDE: path.posix.dirname(fenced.cgroupPath),
    },
    args: ['--grpc-listen', '127.0.0.1:0'],
  });
  t.teardown(() => agent.stop());
  const grpcAddress = String((await agent.waitForLog((l) => l.msg === 'gRPC API listening', 'the gRPC API')).address);
  await agent.waitForLog((l) => l.msg === 'security probes attached', 'the security probes');
  // The shop pod is let in once its namespace is known (the root, the kubepods directories, noisy and fenced are out from the start).
  await agent.waitForLog((l) => l.msg === 'security scope updated' && Number(l.included) >= 1, 'the shop pod in the security scope');

  const logged = (pod: string): SecurityTraceEvent[] =>
    agent.logs
      .filter((line: LogLine) => line.log === 'security')
      .map((line) => line.event as SecurityTraceEvent)
      .filter((event) => event.workload.pod === pod);

  // The kinds filter, on both transports, for the shop pod's events only.
  const trace = spawn(process.execPath, [cli, 'trace', 'security', '--kinds', 'exec', '--pod', 'web-0', '--agent', agent.url, '-o', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let traceOut = '';
  let traceErr = '';
  trace.stdout!.setEncoding('utf8').on('data', (chunk: string) => (traceOut += chunk));
  trace.stderr!.setEncoding('utf8').on('data', (chunk: string) => (traceErr += chunk));
  const traceExit = once(trace, 'exit');
  t.teardown(() => trace.kill('SIGINT'));
  await waitFor(() => traceErr.includes('Ctrl-C stops'), { timeoutMs: 15_000, what: 'the CLI trace to open' });
  const Agent = agentServiceDefinition();
  const client = new Agent(grpcAddress, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => unknown>;
  t.teardown(() => client.close());
  const grpcEvents: Array<{ type: string; attributes: Record<string, string> }> = [];
  const call = (client.StreamEvents as (request: object) => NodeJS.EventEmitter & { cancel(): void })({ types: ['security'], pod: 'web-0', kinds: ['exit'] });
  call.on('data', (event: { type: string; attributes: Record<string, string> }) => grpcEvents.push(event));
  call.on('error', () => undefined);
  t.teardown(() => call.cancel());
  await agent.waitForLog((l) => l.msg === 'trace started' && Array.isArray(l.kinds) && l.kinds.includes('exit'), 'the gRPC stream');

  const before = parseExposition(await agent.metrics());
  const execs = 20;
  const storm = 1500;
  for (let i = 0; i < execs; i++) t.equal((await shop.exec('/bin/true', [])).code, 0);
  const stormRun = await noisy.exec('/bin/sh', ['-c', trueLoopScript(storm)]);
  t.equal(stormRun.code, 0, `the noisy pod ran /bin/true ${storm} times`);
  for (let i = 0; i < execs; i++) t.equal((await fenced.exec('/bin/true', [])).code, 0);

  const trueExecs = (): SecurityTraceEvent[] => logged('web-0').filter((e) => e.kind === 'exec' && e.path === '/bin/true');
  await waitFor(() => trueExecs().length >= execs && grpcEvents.filter((e) => e.attributes.comm === 'true').length >= execs, { timeoutMs: 10_000, what: 'the shop pod\'s events' });
  await new Promise((r) => setTimeout(r, 1000));
  const after = parseExposition(await agent.metrics());

  t.equal(trueExecs().length, execs, `exactly ${execs} exec events of /bin/true in the shop pod`);
  t.equal(logged('storm-0').length, 0, 'none of the noisy pod\'s (excluded namespace)');
  t.equal(logged('fenced-0').length, 0, 'none of the fenced pod\'s (excluded cgroup, in an included namespace)');
  const nodeEvents = agent.logs.filter((l: LogLine) => l.log === 'security' && (l.event as SecurityTraceEvent).workload.workload_kind === 'node');
  t.equal(nodeEvents.length, 0, 'none of the node\'s own processes (an include list narrows: security.nodeProcesses=auto)');
  const shopLabels = { namespace: 'shop', pod: 'web-0' };
  const counted = (labels: Record<string, string>, kind: string): number => sumSamples(after, 'probepilot_security_events_total', { ...labels, kind });
  t.equal(counted(shopLabels, 'exec'), logged('web-0').filter((e) => e.kind === 'exec').length, 'the shop pod\'s exec counter equals its exec events');
  t.ok(counted(shopLabels, 'exec') >= execs, `and counts at least the ${execs} execs of /bin/true`);
  t.equal(sumSamples(after, 'probepilot_security_events_total', { namespace: 'noisy' }), 0, 'no counter for the noisy pod');
  t.equal(sumSamples(after, 'probepilot_security_events_total', { pod: 'fenced-0' }), 0, 'nor for the fenced pod');
  const delta = (name: string, labels: Record<string, string>): number => sumSamples(after, name, labels) - sumSamples(before, name, labels);
  t.equal(delta('probepilot_events_lost_total', { reason: 'rate_limited' }), 0, `nothing rate-limited: the storm of ${storm} execs (burst ${burst}) never reached the token bucket`);
  t.equal(delta('probepilot_events_lost_total', { reason: 'ring_buffer_full' }), 0, 'nothing lost to a full ring buffer');
  const shopEvents = logged('web-0').length;
  t.ok(delta('probepilot_events_total', { kind: 'security' }) <= shopEvents, `the events read from the ring buffer (${delta('probepilot_events_total', { kind: 'security' })}) are no more than the shop pod's (${shopEvents} in all): the storm stayed in the kernel`);

  trace.kill('SIGINT');
  await traceExit;
  const cliEvents = traceOut
    .split('\n')
    .filter((line) => line.endsWith('}'))
    .map((line) => JSON.parse(line) as SecurityTraceEvent);
  t.ok(cliEvents.length > 0 && cliEvents.every((e) => e.type === 'security' && e.kind === 'exec' && e.workload.pod === 'web-0'), `trace security --kinds exec: only the shop pod's execs (${cliEvents.length})`);
  t.equal(cliEvents.filter((e) => e.path === '/bin/true').length, execs, `with the ${execs} execs of /bin/true`);
  t.ok(grpcEvents.length > 0 && grpcEvents.every((e) => e.type === 'security' && e.attributes.kind === 'exit' && e.attributes['workload.pod'] === 'web-0'), `StreamEvents kinds [exit]: only the shop pod's exits (${grpcEvents.length})`);
  t.equal(grpcEvents.filter((e) => e.attributes.comm === 'true' && e.attributes.exitCode === '0').length, execs, `with the ${execs} exits of true, code 0`);

  const res = await fetch(`${agent.url}/api/v1/events?types=security&kinds=exec,sneeze`);
  const body = (await res.json()) as { message: string };
  t.equal(res.status, 400, 'an unknown kind is a 400');
  t.match(body.message, /^querystring\/kinds: unknown sneeze; the kinds are exec, exit, open_write, .*connect, listen$/, body.message);
  const noType = await fetch(`${agent.url}/api/v1/events?types=syscall&kinds=exec`);
  t.equal(noType.status, 400, 'kinds without the security type is a 400');
  const refused = await new Promise<ServiceError>((resolve) => {
    const bad = (client.StreamEvents as (request: object) => NodeJS.EventEmitter)({ types: ['security'], kinds: ['sneeze'] });
    bad.on('error', resolve);
    bad.on('data', () => undefined);
  });
  t.equal(refused.code, grpcStatus.INVALID_ARGUMENT, 'gRPC: INVALID_ARGUMENT');
  t.match(refused.details, /kinds: unknown sneeze; the kinds are exec, exit/, refused.details);
  call.cancel();
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});
