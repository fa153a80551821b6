// GET /api/v1/workloads and `probepilot top` against a live agent in
// Kubernetes mode: a pod sending UDP datagrams at a fixed pace to another pod
// (oracle: the datagrams it counts itself, at the middle of each query, times
// their size at L2), a pod making getppid calls at a fixed pace (oracle: its
// own count of ticks, each the calls plus one sleep).
// The TUI runs in a real terminal (tmux): its row for the sender shows the
// rate, sort and filter keys reorder and hide rows, a resize changes the
// columns, q leaves the shell's screen as it was; without a terminal it
// prints one snapshot. gRPC QueryWorkloads answers the same.
import t from 'tap';
import { type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startKubernetesAgent, type AgentProcess } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { execCommand } from '../helpers/proc.js';
import { Terminal } from '../helpers/terminal.js';
import { waitFor } from '../helpers/wait.js';
import { compileWorkload } from '../helpers/workload.js';
import type { WorkloadEntry, WorkloadsResult } from '../../src/api/service.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';
import { credentials, status as grpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

/** The sender's pace and datagram; its L2 frame adds Ethernet (14), IPv4 (20) and UDP (8) headers. */
const datagramsPerSecond = 200;
const payload = 1000;
const frameBytes = payload + 14 + 20 + 8;
const txBytesPerSecond = datagramsPerSecond * frameBytes;
/** The loop's pace: per 10 ms tick, this many getppid calls and one clock_nanosleep. */
const callsPerTick = 200;
const syscallsPerSecond = (callsPerTick + 1) * 100;
/**
 * Against the pods' own counts at the middle of each query: where inside
 * the query the agent read its maps, and a tick of the pace at each end.
 */
const rateTolerance = 0.05;
/**
 * Against the nominal pace (the CLI and the TUI's own queries): a stall of
 * this shared machine delays sends that are caught up later, so a 1 s
 * window can see a few percent more or less than the pace.
 */
const paceTolerance = 0.1;

const loopSource = `
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
/* Ticks done so far, in a shared file the test reads: a store to memory, no syscall. */
int main(int argc, char **argv) {
  long per_tick = atol(argv[1]), ticks = atol(argv[2]);
  int fd = open(argv[3], O_RDWR | O_CREAT, 0600);
  if (fd < 0 || ftruncate(fd, 8) != 0) return 1;
  volatile long *done = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (done == MAP_FAILED) return 1;
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next); /* vDSO: no syscall */
  for (long t = 0; t < ticks; t++) {
    for (long i = 0; i < per_tick; i++) syscall(SYS_getppid);
    next.tv_nsec += 10000000;
    if (next.tv_nsec >= 1000000000) { next.tv_sec++; next.tv_nsec -= 1000000000; }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    *done = t + 1;
  }
  return 0;
}
`;

/** Datagrams at a fixed average pace: each 5 ms it sends what the elapsed time calls for, for at most maxSeconds; its count of datagrams sent in countFile. */
function startSender(from: Pod, to: string, maxSeconds: number, countFile: string): ChildProcess {
  const script = `const fs = require('node:fs'); const s = require('node:dgram').createSocket('udp4'); const start = process.hrtime.bigint(); let sent = 0;
    const data = Buffer.alloc(${payload}); const count = Buffer.alloc(8); const fd = fs.openSync('${countFile}', 'w');
    const timer = setInterval(() => { const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
      if (elapsed > ${maxSeconds}) { clearInterval(timer); s.close(); return; }
      for (const due = Math.floor(elapsed * ${datagramsPerSecond}); sent < due; sent++) s.send(data, 9999, '${to}');
      count.writeBigInt64LE(BigInt(sent)); fs.writeSync(fd, count, 0, 8, 0); }, 5);`;
  return from.run(process.execPath, ['-e', script], { stdio: 'ignore' });
}

interface CounterReading {
  value: number;
  /** performance.now() */
  at: number;
}

/** A count another process keeps in a file (8 bytes, little-endian). */
function counterIn(file: string): () => CounterReading {
  return () => ({ value: existsSync(file) && statSync(file).size === 8 ? Number(readFileSync(file).readBigInt64LE(0)) : 0, at: performance.now() });
}

/**
 * Runs query between two readings of each counter and answers each counter's
 * value at the query's midpoint: the agent reads its maps somewhere inside.
 */
async function during<T>(counters: ReadonlyArray<() => CounterReading>, query: () => Promise<T>): Promise<{ result: T; counts: CounterReading[] }> {
  const before = counters.map((read) => read());
  const result = await query();
  const counts = counters.map((read, i) => {
    const after = read();
    return { value: (before[i]!.value + after.value) / 2, at: (before[i]!.at + after.at) / 2 };
  });
  return { result, counts };
}

/** Per second between two midpoint readings, times what one count is worth. */
const paceOf = (from: CounterReading, to: CounterReading, unit: number) => ((to.value - from.value) * unit) / ((to.at - from.at) / 1000);

function within(actual: number | null, expected: number, tolerance: number): boolean {
  return actual !== null && Math.abs(actual - expected) <= expected * tolerance;
}

async function workloads(agent: AgentProcess, query: Record<string, string> = {}): Promise<WorkloadsResult> {
  const res = await fetch(`${agent.url}/api/v1/workloads?${new URLSearchParams({ limit: '10000', ...query })}`);
  if (res.status !== 200) throw new Error(`workloads answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as WorkloadsResult;
}

const row = (result: WorkloadsResult, pod: string): WorkloadEntry | undefined => result.workloads.find((w) => w.workload.pod === pod);

/** The lines of the TUI's table: below its header, above the summary and footer. */
function tableRows(screen: readonly string[]): string[] {
  const header = screen.findIndex((l) => l.startsWith('WORKLOAD'));
  return screen.slice(header + 1, -2).filter((l) => l.trim() !== '');
}

/** A table line split into its cells (cells hold single spaces, columns are two or more apart). */
const cells = (line: string) => line.trim().split(/\s{2,}/);
const bytesIn: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };
const parseBytes = (cell: string) => {
  const [value, unit] = cell.split(' ');
  return Number(value) * (bytesIn[unit ?? ''] ?? NaN);
};

t.test('the workloads API and probepilot top against a live agent', async (t) => {
  if (!requirePrivileges(t, 'the workloads API and top with real pods')) return;
  const loop = await compileWorkload(t, 'paced-getppid', loopSource);
  const { api: kube, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const web = await net.addPod();
  const pg = await net.addPod();
  const worker = await net.addPod();
  kube.upsertPod(podObject(web, { namespace: 'shop', name: 'web-0', owner: { kind: 'StatefulSet', name: 'web' } }));
  kube.upsertPod(podObject(pg, { namespace: 'db', name: 'pg-0', owner: { kind: 'StatefulSet', name: 'pg' } }));
  kube.upsertPod(podObject(worker, { namespace: 'batch', name: 'loop-0', owner: { kind: 'StatefulSet', name: 'loop' } }));
  const { agent, grpcAddress } = await startKubernetesAgent(t, { kubeconfig, runId: net.runId, collectors: ['network', 'sched', 'syscalls', 'tcp'] });

  const counts = mkdtempSync(path.join(os.tmpdir(), 'pp-top-'));
  t.teardown(() => rmSync(counts, { recursive: true, force: true }));
  const sender = startSender(web, pg.ipv4, 180, path.join(counts, 'sent'));
  t.teardown(() => void sender.kill());
  const looper = worker.run(loop, [String(callsPerTick), String(180 * 100), path.join(counts, 'ticks')], { stdio: 'ignore' });
  t.teardown(() => void looper.kill());
  const sentCount = counterIn(path.join(counts, 'sent'));
  const tickCount = counterIn(path.join(counts, 'ticks'));
  // Both running and known to the agent by their pods.
  await waitFor(async () => {
    const result = await workloads(agent);
    return (row(result, 'web-0')?.txBytesPerSecond ?? 0) > 0 && (row(result, 'loop-0')?.syscallsPerSecond ?? 0) > 0;
  }, { timeoutMs: 20_000, intervalMs: 1100, what: 'the sender and the loop in the workloads' });

  await t.test('rates over the interval equal the pods\' known paces', async (t) => {
    const first = await during([sentCount, tickCount], () => workloads(agent));
    await new Promise((r) => setTimeout(r, 2000));
    const { result, counts: [sentThen, ticksThen] } = await during([sentCount, tickCount], () => workloads(agent));
    const sentBytes = paceOf(first.counts[0]!, sentThen!, frameBytes);
    const sentPackets = paceOf(first.counts[0]!, sentThen!, 1);
    const calls = paceOf(first.counts[1]!, ticksThen!, callsPerTick + 1);
    t.ok(result.intervalSeconds !== null && result.intervalSeconds >= 2, `rates over ${result.intervalSeconds} s`);
    t.same(result.collectorsOff, ['gpu'], 'gpu is off: its column only is null');
    const sent = row(result, 'web-0')!;
    t.same(sent.workload, { namespace: 'shop', pod: 'web-0', workload: 'web', workload_kind: 'StatefulSet' }, 'the pod\'s identity labels');
    t.ok(within(sent.txBytesPerSecond, sentBytes, rateTolerance), `web-0 tx ${sent.txBytesPerSecond?.toFixed(0)} B/s; it sent ${sentBytes.toFixed(0)} B/s by its own count (±${rateTolerance * 100} %; pace ${txBytesPerSecond})`);
    t.ok(within(sent.txPacketsPerSecond, sentPackets, rateTolerance), `web-0 tx ${sent.txPacketsPerSecond?.toFixed(1)} packets/s; it sent ${sentPackets.toFixed(1)}/s`);
    const received = row(result, 'pg-0')!;
    t.ok(within(received.rxBytesPerSecond, sentBytes, rateTolerance), `pg-0 rx ${received.rxBytesPerSecond?.toFixed(0)} B/s of the same datagrams`);
    const looped = row(result, 'loop-0')!;
    t.ok(within(looped.syscallsPerSecond, calls, rateTolerance), `loop-0 ${looped.syscallsPerSecond?.toFixed(0)} syscalls/s; it made ${calls.toFixed(0)}/s by its own count (pace ${syscallsPerSecond})`);
    t.ok(looped.runqueueLatencyP99Seconds !== null && looped.runqueueLatencyP99Seconds > 0 && looped.runqueueLatencyP99Seconds < result.intervalSeconds!, `loop-0 wakes 100 times a second: run-queue p99 ${looped.runqueueLatencyP99Seconds} s over the interval`);
    t.equal(sent.tcpRetransmitsPerSecond, 0, 'no TCP, no retransmits');
    t.ok(result.workloads.every((w) => w.gpuUtilization === null), 'no GPU collector: GPU null everywhere');
    const sorted = await workloads(agent, { sort: 'syscalls', limit: '2', namespace: 'batch' });
    t.same(sorted.workloads.map((w) => w.workload.pod), ['loop-0'], 'namespace filter');
    const bySyscalls = (await workloads(agent, { sort: 'syscalls' })).workloads.map((w) => w.syscallsPerSecond ?? -1);
    t.same(bySyscalls, [...bySyscalls].sort((a, b) => b - a), 'sort=syscalls: largest first');
  });

  await t.test('a collector switched off leaves its column null, not an error', async (t) => {
    const put = (enabled: boolean) => fetch(`${agent.url}/api/v1/collectors/tcp`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ enabled }) });
    t.equal((await put(false)).status, 200);
    const result = await workloads(agent);
    t.same(result.collectorsOff, ['tcp', 'gpu']);
    t.ok(result.workloads.every((w) => w.tcpRetransmitsPerSecond === null), 'retransmits null for every workload');
    t.ok(row(result, 'web-0')!.txBytesPerSecond! > 0, 'the other columns still answer');
    t.equal((await put(true)).status, 200);
  });

  await t.test('bad input is a 400 naming the key and the allowed values', async (t) => {
    for (const [query, message] of [
      ['sort=bytes', 'querystring/sort must be one of: rx, tx, rxPackets, txPackets, runqueue, syscalls, retransmits, gpu, name'],
      ['limit=0', 'querystring/limit must be'],
      ['limit=1e400', 'querystring/limit must be an integer from 1 to 10000'],
      ['view=peer', 'querystring: unknown key "view"'],
      ['pod=%00', 'querystring/pod must match pattern'],
    ] as const) {
      const res = await fetch(`${agent.url}/api/v1/workloads?${query}`);
      const body = (await res.json()) as { error: string; message: string };
      t.equal(res.status, 400, query);
      t.match(body.message, message, `${query}: ${body.message}`);
    }
    const openapi = (await (await fetch(`${agent.url}/api/v1/openapi.json`)).json()) as { paths: Record<string, { get?: { parameters?: Array<{ name: string }> } }> };
    t.same(openapi.paths['/api/v1/workloads']?.get?.parameters?.map((p) => p.name), ['namespace', 'pod', 'sort', 'limit'], 'in the OpenAPI document with its parameters');
  });

  await t.test('gRPC QueryWorkloads answers as the REST API does', async (t) => {
    const Agent = agentServiceDefinition();
    const client = new Agent(grpcAddress, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => unknown>;
    t.teardown(() => client.close());
    type GrpcWorkloads = { total: number; interval_seconds?: number; collectors_off: string[]; workloads: Array<{ workload: Record<string, string>; tx_bytes_per_second?: number; gpu_utilization?: number }> };
    const call = (request: object) =>
      new Promise<GrpcWorkloads>((resolve, reject) => client.QueryWorkloads!(request, (err: ServiceError | null, response: GrpcWorkloads) => (err ? reject(err) : resolve(response))));
    const first = await during([sentCount], () => call({}));
    await new Promise((r) => setTimeout(r, 2000));
    const { result: answer, counts: [sentThen] } = await during([sentCount], () => call({ namespace: 'shop' }));
    const sentBytes = paceOf(first.counts[0]!, sentThen!, frameBytes);
    const rest = await workloads(agent, { namespace: 'shop' });
    t.same([answer.total, answer.collectors_off, answer.workloads.map((w) => w.workload)], [rest.total, rest.collectorsOff, rest.workloads.map((w) => w.workload)], 'the same workloads and collectors off');
    const web = answer.workloads.find((w) => w.workload.pod === 'web-0');
    t.ok(within(web?.tx_bytes_per_second ?? null, sentBytes, rateTolerance), `web-0 tx ${web?.tx_bytes_per_second?.toFixed(0)} B/s over ${answer.interval_seconds} s; it sent ${sentBytes.toFixed(0)} B/s`);
    t.notOk(web && 'gpu_utilization' in web, 'null in REST is an absent optional field');
    for (const bad of [{ sort: 'bytes' }, { limit: 20000 }, { pod: 'a\u0000b' }]) {
      await t.rejects(call(bad), { code: grpcStatus.INVALID_ARGUMENT }, `QueryWorkloads ${JSON.stringify(bad)} is INVALID_ARGUMENT`);
    }
  });

  await t.test('without a terminal: one snapshot, as a table or JSON', async (t) => {
    const run = (args: string[]) => execCommand(process.execPath, [cli, 'top', '--agent', agent.url, ...args], { timeoutMs: 30_000 });
    const table = await run(['--namespace', 'shop']);
    t.equal(table.code, 0, table.stderr);
    const lines = table.stdout.trimEnd().split('\n');
    t.match(lines[0], /^WORKLOAD\s+RX\/S\s+TX\/S\s+RX PKT\/S\s+TX PKT\/S\s+RUNQ P99\s+SYSCALLS\/S\s+RETRANS\/S\s+GPU$/, 'a header');
    t.equal(lines.filter((l) => l.startsWith('WORKLOAD')).length, 1, 'one snapshot, not a stream of frames');
    t.equal(lines.length, 3, 'header, the one pod of the namespace, summary');
    const tx = parseBytes(cells(lines[1]!)[2]!);
    t.ok(cells(lines[1]!)[0] === 'shop/web-0' && within(tx, txBytesPerSecond, paceTolerance), `shop/web-0 TX/S ${cells(lines[1]!)[2]} (pace ${txBytesPerSecond} B/s, ±${paceTolerance * 100} %)`);
    t.match(lines[2], /^1 of 1 workloads; rates over \d+\.\d s; off: gpu$/);
    t.notMatch(table.stdout, /\x1b/, 'no terminal escapes in piped output');
    const json = await run(['-o', 'json', '--sort', 'syscalls']);
    t.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as WorkloadsResult & { unreachable: unknown[] };
    t.ok(parsed.intervalSeconds !== null && parsed.workloads.some((w) => w.workload.pod === 'loop-0'), '-o json: the workloads with rates');
    t.same(parsed.unreachable, []);
    const bad = await run(['--interval', '0']);
    t.equal(bad.code, 1);
    t.match(bad.stderr, "option '--interval <seconds>' argument '0' is invalid. expected a number of seconds from 0.5 to 3600");
  });

  await t.test('the TUI in a terminal: rates, sort, resize, filter, q', async (t) => {
    const term = new Terminal('top');
    t.teardown(() => term.stop());
    await term.start(160, 30);
    await term.type('clear; echo PREVIOUS-SCREEN-MARK');
    await term.key('Enter');
    await term.waitForScreen('the shell', (lines) => lines.some((l) => l === 'PREVIOUS-SCREEN-MARK'));
    await term.type(`CI=true ${process.execPath} ${cli} top --agent ${agent.url} --interval 1 --sort tx; echo TOP-EXIT=$?`);
    await term.key('Enter');
    const index = (lines: string[], pod: string) => lines.findIndex((l) => cells(l)[0] === pod);
    let screen = await term.waitForScreen('web-0 with a rate, sorted by TX/S', (lines) => lines.some((l) => /rates over/.test(l)) && index(lines, 'shop/web-0') > 0 && index(lines, 'batch/loop-0') > 0);
    t.ok(await term.alternateScreen(), 'on the alternate screen');
    t.match(screen[0], /^probepilot top  http:\/\/127\.0\.0\.1:\d+  every 1 s/, 'a title line');
    const header = screen.findIndex((l) => l.startsWith('WORKLOAD'));
    t.match(screen[header], /RX\/S\s+TX\/S\s+RX PKT\/S\s+TX PKT\/S\s+RUNQ P99\s+SYSCALLS\/S\s+RETRANS\/S\s+GPU$/, 'every column at 160 columns');
    const webTx = parseBytes(cells(screen[index(screen, 'shop/web-0')]!)[2]!);
    t.ok(within(webTx, txBytesPerSecond, paceTolerance), `web-0's TX/S on screen: ${cells(screen[index(screen, 'shop/web-0')]!)[2]} (pace ${txBytesPerSecond} B/s, ±${paceTolerance * 100} %)`);
    t.equal(index(screen, 'shop/web-0'), header + 1, 'sorted by TX/S: the sender first');
    t.match(screen.at(-1), /s\/S sort {2}\/ filter {2}q quit {3}sort: TX\/S/, 'the keys in the footer');

    // s: TX/S → RX PKT/S → TX PKT/S → RUNQ P99 → SYSCALLS/S.
    for (let i = 0; i < 4; i++) await term.type('s');
    screen = await term.waitForScreen('sorted by SYSCALLS/S', (lines) => /sort: SYSCALLS\/S/.test(lines.at(-1) ?? ''));
    t.ok(index(screen, 'batch/loop-0') < index(screen, 'shop/web-0'), 'sorted by syscalls/s: the loop above the sender');
    const syscallColumn = cells(screen[header]!).indexOf('SYSCALLS/S');
    const shown = tableRows(screen).map((l) => Number(cells(l)[syscallColumn]));
    t.same(shown, [...shown].sort((a, b) => b - a), `the SYSCALLS/S column reads largest first: ${shown.slice(0, 5).join(', ')}…`);

    await term.tmux('resize-window', '-t', 'top', '-x', '70', '-y', '20');
    screen = await term.waitForScreen('the narrow layout', (lines) => lines.every((l) => l.length <= 70) && /columns hidden/.test(lines.at(-1) ?? '') && !lines.some((l) => /RETRANS/.test(l)));
    t.match(screen.find((l) => l.startsWith('WORKLOAD')), /SYSCALLS\/S/, '70 columns: the sorted column stays, others are dropped');
    t.equal(screen.length, 20, 'the frame follows the new height');
    await term.tmux('resize-window', '-t', 'top', '-x', '160', '-y', '30');
    screen = await term.waitForScreen('the wide layout again', (lines) => lines.some((l) => /RETRANS\/S\s+GPU$/.test(l)));
    t.pass('160 columns: every column back');

    await term.type('/web-0');
    await term.key('Enter');
    screen = await term.waitForScreen('only web-0', (lines) => /filter: web-0/.test(lines.at(-1) ?? '') && index(lines, 'batch/loop-0') < 0 && index(lines, 'shop/web-0') > 0);
    t.same(tableRows(screen).map((l) => cells(l)[0]), ['shop/web-0'], 'the filter hides every other row');

    await term.type('q');
    screen = await term.waitForScreen('the shell again', (lines) => lines.some((l) => l === 'TOP-EXIT=0'));
    t.notOk(await term.alternateScreen(), 'the alternate screen is off');
    t.equal(screen[0], 'PREVIOUS-SCREEN-MARK', 'the shell\'s previous screen is back');
    t.ok(screen.includes('TOP-EXIT=0'), 'exit code 0');
  });

  await t.test('the TUI shows an unreachable agent and keeps retrying', async (t) => {
    const term = new Terminal('down');
    t.teardown(() => term.stop());
    await term.start(120, 20);
    await term.type(`${process.execPath} ${cli} top --agent http://127.0.0.1:1 --interval 0.5; echo TOP-EXIT=$?`);
    await term.key('Enter');
    await term.waitForScreen('the error line', (lines) => lines.some((l) => /^error: cannot reach the agent at http:\/\/127\.0\.0\.1:1.*; retrying every 0\.5 s/.test(l)));
    await new Promise((r) => setTimeout(r, 1500));
    t.ok(await term.alternateScreen(), 'still running after several failed refreshes');
    await term.key('C-c');
    await term.waitForScreen('the shell again', (lines) => lines.some((l) => l === 'TOP-EXIT=0'));
    t.notOk(await term.alternateScreen(), 'Ctrl-C: exit 0, the terminal restored');
  });

  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
