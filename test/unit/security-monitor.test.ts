// The security counters under pod churn: counts of workloads whose cgroups
// are gone are retired into their series, kept for the grace period, then
// dropped, so the monitor's memory follows the workloads alive, not every
// workload ever seen. Cgroups are directories of a temporary tree (ids are
// their inodes, as the kernel's are), so going away is a real rmdir.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resolveConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { CgroupPaths } from '../../src/identity/cgroups.js';
import { StandaloneIdentity } from '../../src/identity/identity.js';
import { NetnsWorkloads } from '../../src/identity/netns.js';
import { SecurityMonitor } from '../../src/events/security.js';
import type { EventPipeline, TraceListener } from '../../src/events/pipeline.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';
import type { MetricFamily } from '../../src/metrics/model.js';

function execCount(families: MetricFamily[], cgroup: string): number | undefined {
  const sample = families.find((f) => f.name === 'probepilot_security_events_total')?.samples.find((s) => s.labels.cgroup === cgroup && s.labels.kind === 'exec');
  return sample && 'value' in sample ? sample.value : undefined;
}

function seriesCount(families: MetricFamily[]): number {
  return families.find((f) => f.name === 'probepilot_security_events_total')?.samples.length ?? 0;
}

t.test('counts of gone workloads are retired, then dropped after the grace period', async (t) => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pp-secmon-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const config = resolveConfig({ file: { seriesGraceSeconds: 60 } });
  const identity = new StandaloneIdentity(new CgroupPaths(root, { minRefreshIntervalMs: 0 }), new NetnsWorkloads(() => -1));
  let listener: TraceListener | undefined;
  const pipeline = {
    subscribe: async (_filter: unknown, l: TraceListener) => {
      listener = l;
      return async () => undefined;
    },
  } as unknown as EventPipeline;
  const monitor = new SecurityMonitor({ config, log: createLogger('silent'), identity, pipeline });
  await monitor.start();
  t.ok(listener, 'the monitor subscribed');

  let clock = 1_000_000;
  t.teardown(() => (Date.now = realNow));
  const realNow = Date.now;
  Date.now = () => clock;

  const pods = 200;
  const execsOf = (i: number): number => 1 + (i % 5);
  const ids: bigint[] = [];
  for (let i = 0; i < pods; i++) {
    mkdirSync(path.join(root, `pod${i}`));
    ids.push(statSync(path.join(root, `pod${i}`), { bigint: true }).ino);
  }
  identity.cgroups.refresh(true);
  const event = (i: number): SecurityTraceEvent => ({ type: 'security', time: new Date(clock).toISOString(), workload: { cgroup: `/pod${i}` }, pid: 1, comm: 'true', kind: 'exec', uid: 0, euid: 0, ppid: 1, parentComm: 'sh' });
  for (let i = 0; i < pods; i++) for (let k = 0; k < execsOf(i); k++) listener!(event(i), ids[i]!);

  let families = monitor.metrics();
  t.equal(seriesCount(families), pods, 'a series per workload');
  t.equal(execCount(families, '/pod7'), execsOf(7), 'each counts its own execs');
  t.equal(monitor.trackedSeries, pods);

  // Half the pods go away; the other half stay (idle: no new events).
  for (let i = 0; i < pods / 2; i++) rmSync(path.join(root, `pod${i}`), { recursive: true });
  clock += 10_000;
  families = monitor.metrics();
  t.equal(monitor.trackedSeries, pods / 2, 'the gone workloads\' counts left the monitor');
  t.equal(seriesCount(families), pods, 'their series stay within the grace period');
  t.equal(execCount(families, '/pod3'), execsOf(3), 'with their final counts');

  // A gone workload's label set coming back within the grace period adds up rather than restarting from 0.
  mkdirSync(path.join(root, 'pod3'));
  identity.cgroups.refresh(true);
  listener!(event(3), statSync(path.join(root, 'pod3'), { bigint: true }).ino);
  families = monitor.metrics();
  t.equal(execCount(families, '/pod3'), execsOf(3) + 1, 'a returning workload\'s counter does not go back');

  clock += 61_000;
  families = monitor.metrics();
  t.equal(seriesCount(families), pods / 2 + 1, 'after the grace period only the live workloads are exported');
  t.equal(execCount(families, '/pod0'), undefined, 'a gone one is no more');
  t.equal(execCount(families, '/pod150'), execsOf(150), 'an idle live one keeps its count');
  t.equal(monitor.trackedSeries, pods / 2 + 1);
  await monitor.stop();
});
