// The sched collector against the kernel's own accounting: busy loops pinned
// to one CPU (more runnable tasks than CPUs) wait on its run queue, and the
// workload's exported run-queue latency must match the run_delay the kernel
// keeps per task in /proc/<pid>/schedstat.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { startAgent } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';

const tolerance = 0.1;
const busyTasks = 3;

/** [run_delay ns, timeslices] from /proc/PID/schedstat (time on CPU, time waiting on a run queue, timeslices). */
function schedstat(pid: number): [number, number] {
  const [, runDelay, slices] = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
  return [runDelay!, slices!];
}

t.test('run-queue latency matches /proc/<pid>/schedstat run_delay', async (t) => {
  if (!requirePrivileges(t, 'sched collector on raw tracepoints')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const busy = await net.addPod({ layout: 'systemd' });
  const idle = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_PROCESS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());

  const exported = async (cgroup: string) => {
    const families = parseExposition(await agent.metrics());
    return {
      sum: sumSamples(families, 'probepilot_runqueue_latency_seconds_sum', { cgroup }),
      count: sumSamples(families, 'probepilot_runqueue_latency_seconds_count', { cgroup }),
    };
  };
  const busyBefore = await exported(busy.cgroupPath);
  const idleBefore = await exported(idle.cgroupPath);

  // Each loop's pid stays the same through the exec chain (shell → ip netns exec → taskset → sh), so its schedstat covers the whole life in the pod's cgroup.
  const loops: ChildProcess[] = [];
  t.teardown(() => loops.forEach((child) => child.kill('SIGKILL')));
  for (let i = 0; i < busyTasks; i++) loops.push(busy.run('taskset', ['-c', '0', 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' }));
  await sleep(3000);
  // Stopped tasks leave the run queue: both sides stop moving before they are read.
  loops.forEach((child) => child.kill('SIGSTOP'));
  await sleep(200);
  const kernel = loops.map((child) => schedstat(child.pid!));
  const busyAfter = await exported(busy.cgroupPath);
  const idleAfter = await exported(idle.cgroupPath);

  const runDelaySeconds = kernel.reduce((total, [delay]) => total + delay, 0) / 1e9;
  const slices = kernel.reduce((total, [, n]) => total + n, 0);
  const sum = busyAfter.sum - busyBefore.sum;
  const count = busyAfter.count - busyBefore.count;
  t.ok(runDelaySeconds > 1, `contention happened: ${busyTasks} loops on one CPU waited ${runDelaySeconds.toFixed(3)} s in total`);
  const error = Math.abs(sum - runDelaySeconds) / runDelaySeconds;
  t.ok(error <= tolerance, `exported wait ${sum.toFixed(3)} s vs schedstat run_delay ${runDelaySeconds.toFixed(3)} s (${(error * 100).toFixed(2)} % off, tolerance ${tolerance * 100} %)`);
  const ratio = count / slices;
  t.ok(ratio > 0.1 && ratio < 10, `waits counted ${count} vs timeslices ${slices} (ratio ${ratio.toFixed(2)}, same order of magnitude)`);
  const idleSum = idleAfter.sum - idleBefore.sum;
  t.ok(idleSum < runDelaySeconds * 0.01, `the idle pod's wait ${idleSum.toFixed(6)} s is not charged with the busy pod's contention`);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
