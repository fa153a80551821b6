// An exec storm in one pod (≥ 50,000 vfork + execs of a static no-op binary)
// against the per-cgroup token bucket: every security event the storm's
// cgroup makes is either delivered or counted lost (rate_limited or
// ring_buffer_full), what gets through stays within the bucket (burst + rate ×
// time), the agent's resident memory stays bounded, and a quiet pod's K execs
// during the storm still arrive exactly (K events, and the counter equals its
// events).
import t from 'tap';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { collect } from '../helpers/proc.js';
import { compileWorkload } from '../helpers/workload.js';
import { waitFor } from '../helpers/wait.js';
import { processRssMb } from '../../bench/common.js';
import { loggedSecurityEvents } from '../helpers/security.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures');

const execs = 50_000;
const workers = 4;
/**
 * A safety cap only: each worker runs until its share of the execs is done
 * (about 41 s on this 2-core machine), and stops here only if the machine is
 * so starved that the count could not be reached in any reasonable time.
 */
const stormCapSeconds = 150;
const ratePerSecond = 200;
const burst = 1000;
const quietExecs = 20;
/** RSS growth the agent may show over the storm: its buffers are bounded (ring buffer, batches, log stream), not its event count. */
const rssBoundMb = 64;
/**
 * Events per worker besides its execs and exits: the pods helper's `ip netns
 * exec` (its exec and its two mounts of /sys), the worker's own exec and exit.
 */
const eventsPerWorker = 5;

function securityEvents(agent: AgentProcess, pod: Pod): SecurityTraceEvent[] {
  return loggedSecurityEvents(agent, pod.cgroupPath);
}

async function lost(agent: AgentProcess): Promise<{ rateLimited: number; ringBufferFull: number }> {
  const metrics = parseExposition(await agent.metrics());
  return {
    rateLimited: sumSamples(metrics, 'probepilot_events_lost_total', { reason: 'rate_limited' }),
    ringBufferFull: sumSamples(metrics, 'probepilot_events_lost_total', { reason: 'ring_buffer_full' }),
  };
}

t.test(`an exec storm of ${execs} in one pod is rate-limited; the agent stays bounded and another pod's execs arrive`, async (t) => {
  if (!requirePrivileges(t, 'security probes')) return;
  const storm = await compileWorkload(t, 'ppstorm', readFileSync(path.join(fixtures, 'exec-storm.c'), 'utf8'));
  const nop = await compileWorkload(t, 'ppnop', readFileSync(path.join(fixtures, 'nop.c'), 'utf8'), ['-static', '-nostdlib']);

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const stormy = await net.addPod({ layout: 'systemd' });
  const quiet = await net.addPod({ layout: 'systemd' });
  const agent = await startAgent({
    env: {
      ...onlyCollectors(),
      PROBEPILOT_SECURITY_ENABLED: 'true',
      PROBEPILOT_EVENTS_RATE_PER_SECOND: String(ratePerSecond),
      PROBEPILOT_EVENTS_BURST: String(burst),
    },
  });
  t.teardown(() => agent.stop());
  await agent.waitForLog((l) => l.msg === 'security probes attached', 'the security probes');
  const pid = agent.child.pid!;
  // A first exec and its events warm the agent's paths (decode, identity, log) before the baseline.
  t.equal((await quiet.exec('/bin/true', [])).code, 0);
  await waitFor(() => securityEvents(agent, quiet).some((e) => e.kind === 'exit'), { timeoutMs: 10_000, what: 'the warm-up events' });
  const rssBefore = processRssMb(pid);
  const lostBefore = await lost(agent);
  const quietBefore = securityEvents(agent, quiet).length;

  const started = performance.now();
  const runs = Array.from({ length: workers }, () => collect(stormy.run(storm, [String(execs / workers), nop, String(stormCapSeconds)]), { timeoutMs: (stormCapSeconds + 30) * 1000 }));
  let rssPeak = rssBefore;
  const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, processRssMb(pid))), 250);
  for (let i = 0; i < quietExecs; i++) t.equal((await quiet.exec('/bin/true', [])).code, 0, `quiet exec ${i + 1} during the storm`);
  const results = await Promise.all(runs);
  clearInterval(sampler);
  const elapsedSeconds = (performance.now() - started) / 1000;
  for (const r of results) t.equal(r.code, 0, `storm worker exits 0 (${r.stderr.trim()})`);
  const done = results.reduce((n, r) => n + Number(r.stdout.trim().split(' ')[0]), 0);
  t.ok(done >= execs, `${done} execs in the storm pod in ${elapsedSeconds.toFixed(1)} s (safety cap ${stormCapSeconds} s a worker)`);

  // Everything the storm made is accounted for once the reader has drained the ring buffer.
  const attempted = 2 * done + eventsPerWorker * workers;
  let lostAfter = lostBefore;
  let delivered = 0;
  await waitFor(
    async () => {
      lostAfter = await lost(agent);
      delivered = securityEvents(agent, stormy).length;
      return delivered + lostAfter.rateLimited - lostBefore.rateLimited + lostAfter.ringBufferFull - lostBefore.ringBufferFull >= attempted;
    },
    { timeoutMs: 15_000, what: 'the storm events to be delivered or counted lost' },
  ).catch(() => undefined);
  const rateLimited = lostAfter.rateLimited - lostBefore.rateLimited;
  const ringBufferFull = lostAfter.ringBufferFull - lostBefore.ringBufferFull;
  t.equal(delivered + rateLimited + ringBufferFull, attempted, `delivered ${delivered} + rate_limited ${rateLimited} + ring_buffer_full ${ringBufferFull} = the storm's ${attempted} events`);
  // The bucket lets through its depth plus its rate over the run; racing CPUs may spend one credit twice (a few events).
  const allowed = burst + ratePerSecond * elapsedSeconds;
  t.ok(delivered <= allowed + 50, `delivered ${delivered} ≤ burst + rate × ${elapsedSeconds.toFixed(1)} s = ${Math.round(allowed)} (+50)`);
  t.ok(rateLimited >= attempted - allowed - 50, `rate_limited rose by ${rateLimited}`);

  const quietEvents = securityEvents(agent, quiet).slice(quietBefore);
  t.equal(quietEvents.filter((e) => e.kind === 'exec' && e.path === '/bin/true').length, quietExecs, `exactly ${quietExecs} exec events of /bin/true from the quiet pod during the storm`);
  const metrics = parseExposition(await agent.metrics());
  t.equal(
    sumSamples(metrics, 'probepilot_security_events_total', { cgroup: quiet.cgroupPath, kind: 'exec' }),
    securityEvents(agent, quiet).filter((e) => e.kind === 'exec').length,
    "the quiet pod's exec counter equals its exec events",
  );
  t.equal(
    sumSamples(metrics, 'probepilot_security_events_total', { cgroup: stormy.cgroupPath }),
    delivered,
    "the storm pod's counters equal its delivered events (limited ones are not counted)",
  );

  const rssAfter = processRssMb(pid);
  rssPeak = Math.max(rssPeak, rssAfter);
  t.ok(rssPeak - rssBefore <= rssBoundMb, `agent RSS ${rssBefore.toFixed(1)} MB before, peak ${rssPeak.toFixed(1)} MB, ${rssAfter.toFixed(1)} MB after: growth ≤ ${rssBoundMb} MB`);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
