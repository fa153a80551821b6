// The syscalls collector against a workload whose syscalls we know: it makes
// exactly N getppid calls, M failing close(-1) calls and K sched_yield calls
// (not tracked here, so "other"). Two workloads with different counts must
// each get exactly their own: neither leaks into the other's series.
import t from 'tap';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { startAgent } from '../helpers/agent.js';
import { waitFor } from '../helpers/wait.js';
import { checkExposition, findSamples, parseExposition, sumSamples, type MetricFamily } from '../helpers/exposition.js';
import { compileWorkload } from '../helpers/workload.js';

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

// ptrace with request 0x7fff and pid 0 fails at once with ESRCH and changes nothing; hardly anything
// else on a node calls ptrace, so the overflow's ptrace count is only what the folded test cgroups made.
const ptraceSource = `
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  for (long i = 0; i < n; i++) syscall(SYS_ptrace, 0x7fffL, 0L, 0L, 0L);
  return 0;
}
`;

t.test('beyond the series limit workloads fold into __overflow__ and the sum over every series stays exact', async (t) => {
  if (!requirePrivileges(t, 'series limit on the syscalls collector')) return;
  const binary = await compileWorkload(t, 'ptrace-loop', ptraceSource);
  // Each pod is two label sets (ptrace and "other"): 12 pods need 24, so at least 4 fold whatever the node's own cgroups take.
  const limit = 16;
  const podCount = 12;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const pods: Pod[] = [];
  for (let i = 0; i < podCount; i++) pods.push(await net.addPod({ layout: 'plain' }));

  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'ptrace',
      PROBEPILOT_SERIES_LIMIT: String(limit),
    },
  });
  t.teardown(() => agent.stop());

  // One pod after the other, a scrape after each: the node's own cgroups take part of the room first,
  // then the pods get series of their own until it is full, and the rest fold.
  const calls = new Map<Pod, number>();
  let previousOverflow = 0;
  for (const [i, pod] of pods.entries()) {
    const n = 10_000 + 1_000 * i + i; // every pod's count is distinct
    const res = await pod.exec(binary, [String(n)]);
    t.equal(res.code, 0, `${pod.name}: ${n} ptrace calls made (${res.stderr.trim()})`);
    calls.set(pod, n);
    const families = parseExposition(await agent.metrics());
    const overflow = sumSamples(families, 'probepilot_syscalls_total', { cgroup: '__overflow__' });
    t.ok(overflow >= previousOverflow, `after ${pod.name}: the overflow series never goes backwards (${previousOverflow} → ${overflow})`);
    previousOverflow = overflow;
  }

  const text = await agent.metrics();
  t.same(checkExposition(text), [], 'exposition is well formed');
  const families = parseExposition(text);
  let folded = 0;
  let foldedCalls = 0;
  for (const [pod, n] of calls) {
    const own = findSamples(families, 'probepilot_syscalls_total', { cgroup: pod.cgroupPath, syscall: 'ptrace' });
    if (own.length === 0) {
      folded++;
      foldedCalls += n;
      continue;
    }
    t.equal(own[0]!.value, n, `${pod.name}: its own series counts its ${n} calls exactly`);
    t.equal(sumSamples(families, 'probepilot_syscall_errors_total', { cgroup: pod.cgroupPath, syscall: 'ptrace' }), n, `${pod.name}: every call failed (ESRCH)`);
  }
  const overflowCalls = sumSamples(families, 'probepilot_syscalls_total', { cgroup: '__overflow__', syscall: 'ptrace' });
  t.equal(overflowCalls, foldedCalls, `the overflow holds exactly the ${foldedCalls} calls of the ${folded} folded pods (and ${podCount - folded} pods have their own series)`);
  t.equal(sumSamples(families, 'probepilot_syscall_errors_total', { cgroup: '__overflow__', syscall: 'ptrace' }), foldedCalls, 'errors fold the same way');
  t.equal(sumSamples(families, 'probepilot_syscall_latency_seconds_count', { cgroup: '__overflow__', syscall: 'ptrace' }), foldedCalls, 'so does the latency histogram: one observation per folded call');
  const overflowBuckets = findSamples(families, 'probepilot_syscall_latency_seconds_bucket', { cgroup: '__overflow__', syscall: 'ptrace', le: '+Inf' });
  t.equal(overflowBuckets[0]?.value, foldedCalls, 'its +Inf bucket equals its count');
  const total = [...calls.values()].reduce((a, b) => a + b, 0);
  t.equal(sumSamples(families, 'probepilot_syscalls_total', { syscall: 'ptrace' }), total, `sum over every ptrace series, the overflow included: the ${total} calls made`);
  t.ok(folded > 0, `${folded} of ${podCount} pods folded beyond a limit of ${limit}`);

  const own = findSamples(families, 'probepilot_syscalls_total', { cgroup: /^(?!__overflow__$)/ });
  t.ok(own.length <= limit, `${own.length} series of their own, at most the limit ${limit}`);
  t.same(
    findSamples(families, 'probepilot_syscalls_total', { cgroup: '__overflow__' }).map((s) => s.labels.syscall).sort(),
    ['other', 'ptrace'],
    'one overflow series per syscall label',
  );
  const overflowCounted = sumSamples(families, 'probepilot_series_overflow_total', { collector: 'syscalls', family: 'probepilot_syscalls_total' });
  t.ok(overflowCounted >= folded, `probepilot_series_overflow_total counts ${overflowCounted} label sets folded, the ${folded} pods' ptrace label sets among them`);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
