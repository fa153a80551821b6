// Live traces through the ring-buffer pipeline, against workloads whose
// events we know: `probepilot trace syscall` sees exactly one pod's getppid
// calls (and none of another's), gRPC StreamEvents gets the same stream at
// the same time, `probepilot trace network` sees one pod's connects with the
// right peer, a flooding pod is held to its rate while another pod's events
// still arrive, and the programs leave the kernel when the last trace ends.
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, type Client } from '@grpc/grpc-js';
import { programLoaded, requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { compileWorkload } from '../helpers/workload.js';
import { waitFor } from '../helpers/wait.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';
import type { AgentStatus } from '../../src/api/service.js';
import type { NetworkTraceEvent, SyscallTraceEvent, TraceEvent } from '../../src/api/events.js';
import { renderTraceEvent } from '../../src/client.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');
const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures');

/**
 * argv[1] getppid calls through syscall() (never cached by libc), after
 * argv[2] ms of sleep, with a 20 ms pause after every argv[3] calls.
 */
const getppidSource = `
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  long chunk = argc > 3 ? atol(argv[3]) : 0;
  if (argc > 2) usleep(atol(argv[2]) * 1000);
  for (long i = 0; i < n; i++) {
    syscall(SYS_getppid);
    if (chunk && (i + 1) % chunk == 0) usleep(20000);
  }
  return 0;
}
`;

interface TraceProcess {
  child: ChildProcess;
  /** What the CLI printed so far, parsed. */
  events(): TraceEvent[];
  /** How many events it printed so far (cheap enough to poll). */
  count(): number;
  stop(): Promise<number | null>;
}

/**
 * Runs `probepilot trace …` -o json and resolves once its stream is open.
 * Its output goes to a file: a pipe to this busy test process would slow the
 * CLI down, which is not what is measured.
 */
async function startTrace(t: Test, agent: AgentProcess, args: readonly string[]): Promise<TraceProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-trace-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const outputPath = path.join(dir, 'events.ndjson');
  const output = openSync(outputPath, 'w');
  const child = spawn(process.execPath, [cli, 'trace', ...args, '--agent', agent.url, '-o', 'json'], { stdio: ['ignore', output, 'pipe'] });
  closeSync(output);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = once(child, 'exit');
  const stop = async (): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
    const [code] = (await exited) as [number | null];
    return code;
  };
  t.teardown(stop);
  await waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`probepilot trace exited ${child.exitCode}: ${stderr}`);
      return stderr.includes('Ctrl-C stops');
    },
    { timeoutMs: 15_000, what: 'the trace to open' },
  );
  const events = (): TraceEvent[] =>
    readFileSync(outputPath, 'utf8')
      .split('\n')
      .filter((line) => line.endsWith('}'))
      .map((line) => JSON.parse(line) as TraceEvent);
  const count = (): number => {
    const text = readFileSync(outputPath);
    let lines = 0;
    for (let i = text.indexOf(10); i >= 0; i = text.indexOf(10, i + 1)) lines++;
    return lines;
  };
  return { child, events, count, stop };
}

async function status(agent: AgentProcess): Promise<AgentStatus> {
  return (await fetch(`${agent.url}/api/v1/status`)).json() as Promise<AgentStatus>;
}

t.test('trace syscall: one pod\'s getppid calls, counted exactly, none of another pod\'s; gRPC sees the same', async (t) => {
  if (!requirePrivileges(t, 'syscall trace through the BPF ring buffer')) return;
  const binary = await compileWorkload(t, 'tracegetppid', getppidSource);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const traced = await net.addPod({ layout: 'systemd' });
  const other = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    args: ['--grpc-listen', '127.0.0.1:0'],
    // No collectors: traces do not depend on them. No rate limit: every call must arrive.
    env: { ...onlyCollectors(), PROBEPILOT_EVENTS_RATE_PER_SECOND: '0' },
  });
  t.teardown(() => agent.stop());

  const before = await status(agent);
  t.same(before.events, { subscribers: { syscall: 0, network: 0, security: 0 }, attached: [], programs: [] }, 'nothing attached before anyone traces');

  const trace = await startTrace(t, agent, ['syscall', '--syscall', 'getppid', '--pod', traced.cgroupPath]);
  const grpcLine = agent.logs.find((l) => l.msg === 'gRPC API listening');
  const Agent = agentServiceDefinition();
  const client = new Agent(String(grpcLine?.address), credentials.createInsecure()) as Client & Record<string, (request: object) => NodeJS.EventEmitter & { cancel(): void }>;
  t.teardown(() => client.close());
  const grpcEvents: Array<{ type: string; attributes: Record<string, string> }> = [];
  const call = client.StreamEvents!({ types: ['syscall'], pod: traced.cgroupPath, syscalls: ['getppid'] });
  call.on('data', (event: { type: string; attributes: Record<string, string> }) => grpcEvents.push(event));
  call.on('error', () => undefined);
  t.teardown(() => call.cancel());
  await waitFor(async () => (await status(agent)).events.subscribers.syscall === 2, { timeoutMs: 10_000, what: 'both subscriptions' });

  const during = await status(agent);
  t.same(during.events.attached, ['syscall'], 'the syscall programs are attached while traced');
  t.same(during.events.programs.map((p) => p.name).sort(), ['pp_trace_sys_enter', 'pp_trace_sys_exit']);
  const programIds = during.events.programs.map((p) => p.id);
  for (const id of programIds) t.ok(programLoaded(id), `program ${id} is in the kernel while traced`);

  // Paced to under 5,000 calls/s, the default per-pod rate (off here, so that no token race can cost a call):
  // the stream's client must keep up with what a pod may send, on a busy 2-CPU machine.
  const calls = 20_000;
  const [tracedRun, otherRun] = await Promise.all([traced.exec(binary, [String(calls), '0', '100']), other.exec(binary, ['7000', '0', '100'])]);
  t.equal(tracedRun.code, 0, 'traced workload ran');
  t.equal(otherRun.code, 0, 'other workload ran');
  await waitFor(() => trace.count() >= calls && grpcEvents.length >= calls, { timeoutMs: 20_000, what: `${calls} events on both streams` }).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 1000)); // anything more (nothing should come) arrives by now

  const syscallEvents = trace.events() as SyscallTraceEvent[];
  t.ok(Math.abs(syscallEvents.length - calls) <= calls * 0.01, `CLI: ${syscallEvents.length} events for the ${calls} getppid calls (tolerance 1 %)`);
  t.ok(syscallEvents.every((e) => e.type === 'syscall' && e.syscall === 'getppid' && e.ret > 0), 'every event is a getppid that returned a pid');
  t.ok(syscallEvents.every((e) => e.workload.cgroup === traced.cgroupPath), `every event is the traced pod's (${traced.cgroupPath}), none of ${other.cgroupPath}`);
  t.ok(syscallEvents.every((e) => e.comm === 'tracegetppid' && e.pid > 0 && e.durationSeconds >= 0 && e.durationSeconds < 1), 'task and duration of each call');
  t.equal(new Set(syscallEvents.map((e) => e.pid)).size, 1, 'one process made them all');
  t.ok(Math.abs(grpcEvents.length - calls) <= calls * 0.01, `gRPC: ${grpcEvents.length} events (tolerance 1 %)`);
  t.ok(grpcEvents.every((e) => e.type === 'syscall' && e.attributes['workload.cgroup'] === traced.cgroupPath && e.attributes.syscall === 'getppid'), 'gRPC: the same pod and syscall, labels as workload.<label>');

  const metrics = parseExposition(await agent.metrics());
  t.ok(sumSamples(metrics, 'probepilot_events_total', { kind: 'syscall' }) >= calls, 'probepilot_events_total counts them');
  for (const reason of ['ring_buffer_full', 'rate_limited', 'subscriber_slow', 'undecodable']) {
    t.equal(sumSamples(metrics, 'probepilot_events_lost_total', { reason }), 0, `nothing lost: ${reason}`);
  }
  t.equal(sumSamples(metrics, 'probepilot_trace_subscribers', { kind: 'syscall' }), 2);

  t.equal(await trace.stop(), 0, 'the CLI exits 0 on Ctrl-C');
  call.cancel();
  await waitFor(async () => (await status(agent)).events.attached.length === 0, { timeoutMs: 10_000, what: 'the programs to be detached' });
  for (const id of programIds) t.notOk(programLoaded(id), `program ${id} left the kernel once the last trace ended`);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});

/** argv: host port count. Connects count times, one after the other, and closes each. */
const connectScript = `
const net = require('node:net');
const [host, port, count] = process.argv.slice(1);
(async () => {
  for (let i = 0; i < Number(count); i++) {
    await new Promise((resolve, reject) => { const s = net.connect({ host, port: Number(port) }, () => s.end(resolve)); s.on('error', reject); });
  }
})().catch((err) => { console.error(err.message); process.exit(1); });
`;

const serverScript = `
const server = require('node:net').createServer((s) => { s.on('error', () => {}); s.resume(); });
server.listen(Number(process.argv[1]), '0.0.0.0', () => console.log('ready'));
`;

t.test('trace network: one pod\'s connects with their peer, none of another pod\'s', async (t) => {
  if (!requirePrivileges(t, 'network trace through the BPF ring buffer')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const client = await net.addPod();
  const bystander = await net.addPod();
  const server = await net.addPod();
  const port = 7070;
  const listener = server.run(process.execPath, ['-e', serverScript, String(port)]);
  t.teardown(() => listener.kill());
  let serverOutput = '';
  listener.stdout!.setEncoding('utf8').on('data', (chunk: string) => (serverOutput += chunk));
  await waitFor(() => serverOutput.includes('ready'), { timeoutMs: 10_000, what: 'the server to listen' });

  const agent = await startAgent({ env: onlyCollectors() });
  t.teardown(() => agent.stop());
  const trace = await startTrace(t, agent, ['network', '--pod', client.cgroupPath]);
  const connects = 7;
  const [clientRun, bystanderRun] = await Promise.all([
    client.exec(process.execPath, ['-e', connectScript, server.ipv4, String(port), String(connects)]),
    bystander.exec(process.execPath, ['-e', connectScript, server.ipv4, String(port), '4']),
  ]);
  t.equal(clientRun.code, 0, `client connected ${connects} times (${clientRun.stderr.trim()})`);
  t.equal(bystanderRun.code, 0, 'bystander connected');
  const established = (): NetworkTraceEvent[] =>
    (trace.events() as NetworkTraceEvent[]).filter((e) => e.event === 'state' && e.oldState === 'SYN_SENT' && e.newState === 'ESTABLISHED');
  await waitFor(() => established().length >= connects, { timeoutMs: 10_000, what: `${connects} established connections` }).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 1000));

  const events = trace.events() as NetworkTraceEvent[];
  t.equal(established().length, connects, `${connects} connects reached ESTABLISHED`);
  t.ok(
    established().every((e) => e.family === 'ipv4' && e.source === client.ipv4 && e.destination === server.ipv4 && e.destinationPort === port && e.sourcePort > 0),
    `each from ${client.ipv4} to ${server.ipv4}:${port}`,
  );
  const connectCalls = events.filter((e) => e.newState === 'SYN_SENT');
  t.equal(connectCalls.length, connects, 'one SYN_SENT per connect');
  t.ok(connectCalls.every((e) => e.pid > 0 && e.comm !== ''), `connect() carries the calling task: ${JSON.stringify(connectCalls[0])}`);
  t.ok(events.every((e) => e.workload.cgroup === client.cgroupPath), 'every event is the client pod\'s');
  t.notOk(events.some((e) => e.source === bystander.ipv4 || e.destination === bystander.ipv4), `nothing of the bystander ${bystander.ipv4}`);
  t.ok(events.some((e) => e.newState === 'FIN_WAIT1' || e.newState === 'CLOSE'), 'the closes are seen too');
  t.equal(await trace.stop(), 0);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});

t.test('trace syscall decodes arguments: the paths a pod opens, the addresses it connects to, the argv it execs', async (t) => {
  if (!requirePrivileges(t, 'syscall trace through the BPF ring buffer')) return;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-sysargs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const binary = await compileWorkload(t, 'ppsysargs', readFileSync(path.join(fixtures, 'syscall-args.c'), 'utf8'), ['-static']);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const traced = await net.addPod();
  const peer = await net.addPod();
  const agent = await startAgent({ env: onlyCollectors() });
  t.teardown(() => agent.stop());
  const trace = await startTrace(t, agent, ['syscall', '--syscall', 'openat,connect,execve', '--pod', traced.cgroupPath]);
  const port = 40000 + Math.floor(Math.random() * 20000);
  const unixPath = path.join(dir, 'nosuch.sock');
  const run = await traced.exec(binary, [dir, peer.ipv4, peer.ipv6, String(port), unixPath]);
  t.equal(run.code, 0, `the workload ran (${run.stderr.trim()})`);
  const events = (): SyscallTraceEvent[] => trace.events() as SyscallTraceEvent[];
  await waitFor(() => events().some((e) => e.syscall === 'execve' && e.comm === 'true'), { timeoutMs: 10_000, what: 'the exec of /bin/true' });
  await new Promise((r) => setTimeout(r, 500));

  const own = events().filter((e) => e.comm === 'ppsysargs' && e.syscall !== 'execve');
  t.same(
    own.map((e) => [e.syscall, e.decodedArgs, e.ret]),
    [
      ['openat', ['AT_FDCWD', JSON.stringify(`${dir}/known-file`), 'O_WRONLY|O_CREAT|O_TRUNC', '0640'], 3],
      ['openat', ['AT_FDCWD', '"/etc/hosts"', 'O_RDONLY'], 3],
      ['connect', ['3', `{AF_INET, ${peer.ipv4}:${port}}`, '16'], -111],
      ['connect', ['3', `{AF_INET6, [${peer.ipv6}]:${port}}`, '28'], -111],
      ['connect', ['3', `{AF_UNIX, ${JSON.stringify(unixPath)}}`, '110'], -2],
    ],
    'the paths opened, with flags and mode, and the addresses connected to (IPv4, IPv6, AF_UNIX), exactly and in order',
  );
  t.ok(own.every((e) => e.args.length === 6 && e.args.every((a) => /^0x[0-9a-f]+$/.test(a))), 'the raw registers are kept too');
  const pid = own[0]?.pid;
  const execs = events().filter((e) => e.syscall === 'execve' && e.pid === pid && e.ret === 0);
  t.same(
    execs.slice(-2).map((e) => e.decodedArgs?.slice(0, 2)),
    [
      [JSON.stringify(binary), `[${[binary, dir, peer.ipv4, peer.ipv6, String(port), unixPath].map((a) => JSON.stringify(a)).join(', ')}]`],
      ['"/bin/true"', '["/bin/true", "alpha", "beta gamma"]'],
    ],
    'the execs of the workload (by ip netns exec) and of /bin/true, with their argv',
  );
  // The pods helper's `exec ip netns exec NS binary …` has 11 entries: argv is cut at 8.
  t.equal(
    execs.length === 3 ? execs[0]!.decodedArgs?.[1] : undefined,
    `[${['ip', 'netns', 'exec', traced.netns, binary, dir, peer.ipv4, peer.ipv6].map((a) => JSON.stringify(a)).join(', ')}, ...]`,
    "the shell's exec of ip, its argv cut at 8 entries",
  );
  const hosts = own.find((e) => e.decodedArgs?.[1] === '"/etc/hosts"');
  t.match(hosts && renderTraceEvent(hosts), /ppsysargs\[\d+\/\d+\]  openat\(AT_FDCWD, "\/etc\/hosts", O_RDONLY\) = 3  /, 'the CLI prints the call as strace does');
  t.notOk(events().some((e) => e.workload.cgroup !== traced.cgroupPath), 'only the traced pod');
  t.equal(await trace.stop(), 0);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});

t.test('a flooding pod is held to its rate; another pod\'s events still arrive; losses are counted', async (t) => {
  if (!requirePrivileges(t, 'trace rate limits')) return;
  const binary = await compileWorkload(t, 'tracestorm', getppidSource);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const noisy = await net.addPod({ layout: 'plain' });
  const quiet = await net.addPod({ layout: 'plain' });
  const rate = 2000;
  const burst = 1000;
  const agent = await startAgent({ env: { ...onlyCollectors(), PROBEPILOT_EVENTS_RATE_PER_SECOND: String(rate), PROBEPILOT_EVENTS_BURST: String(burst) } });
  t.teardown(() => agent.stop());
  const noisyTrace = await startTrace(t, agent, ['syscall', '--syscall', 'getppid', '--pod', noisy.cgroupPath]);
  const quietTrace = await startTrace(t, agent, ['syscall', '--syscall', 'getppid', '--pod', quiet.cgroupPath]);

  const storm = 300_000;
  const quietCalls = 50;
  const started = process.hrtime.bigint();
  // The quiet pod calls while the storm runs (it starts 20 ms in).
  const [noisyRun, quietRun] = await Promise.all([noisy.exec(binary, [String(storm)]), quiet.exec(binary, [String(quietCalls), '20'])]);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  t.equal(noisyRun.code, 0);
  t.equal(quietRun.code, 0);
  await new Promise((r) => setTimeout(r, 1000));

  const allowed = burst + rate * seconds;
  const delivered = noisyTrace.events().length;
  t.ok(delivered <= allowed * 1.05, `the storm of ${storm} calls in ${seconds.toFixed(2)} s delivered ${delivered}, at most burst + rate × time = ${Math.round(allowed)} (+5 %)`);
  t.ok(delivered >= burst * 0.9, `at least the burst (${burst}) got through: ${delivered}`);
  t.equal(quietTrace.events().length, quietCalls, `all ${quietCalls} of the quiet pod's calls arrived during the storm`);
  const metrics = parseExposition(await agent.metrics());
  const limited = sumSamples(metrics, 'probepilot_events_lost_total', { reason: 'rate_limited' });
  t.ok(Math.abs(limited - (storm - delivered)) <= storm * 0.01, `rate_limited counts the rest: ${limited} of ${storm - delivered} (tolerance 1 % of the storm)`);
  await noisyTrace.stop();
  await quietTrace.stop();
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});

t.test('trace requests are checked: bad filters are 400s naming the key, too many traces 429', async (t) => {
  if (!requirePrivileges(t, 'trace API errors')) return;
  const agent = await startAgent({ env: { ...onlyCollectors(), PROBEPILOT_EVENTS_MAX_SUBSCRIBERS: '1' } });
  t.teardown(() => agent.stop());
  const cases: Array<[string, number, RegExp]> = [
    ['types=syscall&syscalls=nosuch', 400, /^querystring\/syscalls: unknown nosuch; the syscalls are .*getppid/],
    ['types=files', 400, /^querystring\/types: unknown files; the types are collector, interface, pod, syscall, network, security$/],
    ['pod=web-0', 400, /^querystring\/pod filters traces/],
    ['types=network&syscalls=openat', 400, /^querystring\/syscalls filters the syscall trace/],
    ['types=syscall&syscalls=open%20at', 400, /^querystring\/syscalls must match pattern/],
    ['types=syscall&depth=3', 400, /unknown key "depth"/],
  ];
  for (const [query, code, message] of cases) {
    const res = await fetch(`${agent.url}/api/v1/events?${query}`);
    const body = (await res.json()) as { error: string; message: string };
    t.equal(res.status, code, `${query}: ${code}`);
    t.match(body.message, message, `${query}: ${body.message.slice(0, 120)}`);
  }
  const first = await startTrace(t, agent, ['syscall', '--syscall', 'getppid']);
  const second = spawn(process.execPath, [cli, 'trace', 'network', '--agent', agent.url], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  second.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const [code] = (await once(second, 'exit')) as [number];
  t.equal(code, 1, 'a trace beyond events.maxSubscribers exits 1');
  t.match(stderr, /1 traces are open already \(events.maxSubscribers\).*\(429\)/, 'with the agent\'s reason and 429');
  await first.stop();
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});
