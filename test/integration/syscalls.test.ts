// The syscalls collector against a workload whose syscalls we know: it makes
// exactly N getppid calls, M failing close(-1) calls and K sched_yield calls
// (not tracked here, so "other"). Two workloads with different counts must
// each get exactly their own: neither leaks into the other's series.
import t from 'tap';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { startAgent } from '../helpers/agent.js';
import { waitFor } from '../helpers/wait.js';
import { checkExposition, parseExposition, sumSamples, type MetricFamily } from '../helpers/exposition.js';
import { compileWorkload } from '../helpers/workload.js';
import { execChecked } from '../helpers/proc.js';

const tolerance = 0.001;

const workloadSource = `
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]), m = atol(argv[2]), k = atol(argv[3]);
  for (long i = 0; i < n; i++) syscall(SYS_getppid); /* glibc's getppid() could be cached some day; syscall() never is */
  for (long i = 0; i < m; i++) close(-1);
  for (long i = 0; i < k; i++) syscall(SYS_sched_yield);
  return 0;
}
`;

function syscallValue(families: MetricFamily[], name: string, pod: Pod, syscall: string): number {
  return sumSamples(families, name, { cgroup: pod.cgroupPath, syscall });
}

t.test('syscalls are counted exactly, with their errors and latency, per workload', async (t) => {
  if (!requirePrivileges(t, 'syscalls collector on raw_syscalls')) return;
  const binary = await compileWorkload(t, 'syscalls', workloadSource);

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'systemd' });
  const b = await net.addPod({ layout: 'plain' });

  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'getppid,close',
    },
  });
  t.teardown(() => agent.stop());

  const runs = [
    { pod: a, n: 200_000, m: 3_000, k: 1_000 },
    { pod: b, n: 50_000, m: 700, k: 500 },
  ];
  const wallSeconds = new Map<Pod, number>();
  for (const { pod, n, m, k } of runs) {
    const started = process.hrtime.bigint();
    const res = await pod.exec(binary, [String(n), String(m), String(k)]);
    wallSeconds.set(pod, Number(process.hrtime.bigint() - started) / 1e9);
    t.equal(res.code, 0, `workload in ${pod.name} exited cleanly (${res.stderr.trim()})`);
  }

  const text = await agent.metrics();
  t.same(checkExposition(text), [], 'exposition is well formed');
  const families = parseExposition(text);
  for (const { pod, n, m, k } of runs) {
    const calls = syscallValue(families, 'probepilot_syscalls_total', pod, 'getppid');
    t.ok(Math.abs(calls - n) <= n * tolerance, `${pod.name}: getppid counted ${calls}, made ${n} (tolerance ${tolerance * 100} %)`);
    t.equal(syscallValue(families, 'probepilot_syscall_errors_total', pod, 'getppid'), 0, `${pod.name}: getppid never fails`);
    const closeErrors = syscallValue(families, 'probepilot_syscall_errors_total', pod, 'close');
    t.ok(Math.abs(closeErrors - m) <= m * tolerance, `${pod.name}: close errors counted ${closeErrors}, made ${m} failing close(-1) (tolerance ${tolerance * 100} %)`);
    t.ok(syscallValue(families, 'probepilot_syscalls_total', pod, 'close') >= closeErrors, `${pod.name}: every failed close is also a call`);
    t.ok(syscallValue(families, 'probepilot_syscalls_total', pod, 'other') >= k, `${pod.name}: ${k} untracked sched_yield calls land in syscall="other"`);
    t.equal(
      sumSamples(families, 'probepilot_syscalls_total', { cgroup: pod.cgroupPath, syscall: /^(?!getppid$|close$|other$)/ }),
      0,
      `${pod.name}: no syscall label outside the tracked set and "other"`,
    );

    const latencyCount = sumSamples(families, 'probepilot_syscall_latency_seconds_count', { cgroup: pod.cgroupPath, syscall: 'getppid' });
    const latencySum = sumSamples(families, 'probepilot_syscall_latency_seconds_sum', { cgroup: pod.cgroupPath, syscall: 'getppid' });
    t.equal(latencyCount, calls, `${pod.name}: one latency observation per getppid call`);
    const wall = wallSeconds.get(pod)!;
    t.ok(latencySum > 0 && latencySum < wall, `${pod.name}: getppid latency sum ${latencySum.toFixed(6)} s lies within the workload's ${wall.toFixed(3)} s wall time`);
  }
  t.equal(sumSamples(families, 'probepilot_collector_up', { collector: 'syscalls' }), 1, 'collector is up');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});

/** Entries of the agent's own syscall map, found among the process's BPF map fds (other agents may have one too). */
async function kernelEntries(agentPid: number): Promise<number> {
  for (const fd of readdirSync(`/proc/${agentPid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${agentPid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    if (target !== 'anon_inode:bpf-map') continue;
    const id = /^map_id:\s*(\d+)$/m.exec(readFileSync(`/proc/${agentPid}/fdinfo/${fd}`, 'utf8'))?.[1];
    if (!id) continue;
    const map = JSON.parse(await execChecked('bpftool', ['map', 'show', 'id', id, '-j'])) as { name?: string };
    if (map.name === 'syscall_stats') return (JSON.parse(await execChecked('bpftool', ['map', 'dump', 'id', id, '-j'])) as unknown[]).length;
  }
  throw new Error(`no syscall_stats map among the fds of pid ${agentPid}`);
}

t.test('a series limit caps what is exported and counts what it dropped', async (t) => {
  if (!requirePrivileges(t, 'series limit on the syscalls collector')) return;
  const limit = 5;
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_SERIES_LIMIT: String(limit),
    },
  });
  t.teardown(() => agent.stop());
  // Every cgroup on the node with a syscall and every syscall slot it used is one kernel entry, one label set.
  await waitFor(async () => (await kernelEntries(agent.child.pid!)) > limit * 2, { timeoutMs: 20_000, what: 'more kernel entries than the limit' });
  const entries = await kernelEntries(agent.child.pid!);
  const families = parseExposition(await agent.metrics());
  for (const name of ['probepilot_syscalls_total', 'probepilot_syscall_errors_total', 'probepilot_syscall_latency_seconds_count']) {
    t.equal(families.find((f) => f.name === name.replace(/_count$/, ''))?.samples.filter((s) => s.name === name).length, limit, `${name}: exactly ${limit} series`);
  }
  const dropped = sumSamples(families, 'probepilot_series_dropped_total', { collector: 'syscalls' });
  t.ok(dropped + limit >= entries, `exported ${limit} + dropped ${dropped} cover the ${entries} entries (label sets) the kernel map held before the scrape`);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});
