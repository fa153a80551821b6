// Security events of the rarer kinds, each against a workload that makes the
// operation a known number of times, next to a benign twin that must give
// none: PTRACE_ATTACH (twin: PTRACE_TRACEME), a tmpfs mount in the pod's own
// mount namespace (twin: the namespace without a mount), a bpf() program load
// (twin: a map create), and unlink/rename/chmod of watched files through both
// the *at calls (coreutils) and the old ones (Python's os module) (twin: the
// same operations on an unwatched directory).
import t, { type Test } from 'tap';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { compileWorkload } from '../helpers/workload.js';
import { waitFor } from '../helpers/wait.js';
import { loggedSecurityEvents } from '../helpers/security.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures');

function securityEvents(agent: AgentProcess, pod: Pod, kind: SecurityTraceEvent['kind']): SecurityTraceEvent[] {
  return loggedSecurityEvents(agent, pod.cgroupPath).filter((event) => event.kind === kind);
}

/** Runs cmd in the pod and expects exit 0. */
async function ok(t: Test, pod: Pod, cmd: string, args: readonly string[]): Promise<string> {
  const result = await pod.exec(cmd, args);
  t.equal(result.code, 0, `${path.basename(cmd)} ${args.join(' ')} exits 0 (${result.stderr.trim()})`);
  return result.stdout;
}

t.test('security events: ptrace attach, mount, bpf() program load, unlink/rename/chmod of watched files, and their benign twins', async (t) => {
  if (!requirePrivileges(t, 'security probes')) return;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-secops-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const watched = path.join(dir, 'watched');
  const unwatched = path.join(dir, 'unwatched');
  const mountPoint = path.join(dir, 'mnt');
  for (const d of [watched, unwatched, mountPoint]) mkdirSync(d);
  for (const d of [watched, unwatched]) for (const name of ['a', 'c', 'e']) writeFileSync(path.join(d, name), 'x');
  writeFileSync(path.join(unwatched, 'moved-in'), 'x');
  const secops = await compileWorkload(t, 'ppsecops', readFileSync(path.join(fixtures, 'security-ops.c'), 'utf8'));

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const actor = await net.addPod({ layout: 'systemd' });
  const twin = await net.addPod({ layout: 'cgroupfs' });
  const agent = await startAgent({
    env: { ...onlyCollectors(), PROBEPILOT_SECURITY_ENABLED: 'true', PROBEPILOT_EVENTS_RATE_PER_SECOND: '0', PROBEPILOT_SECURITY_WATCHED_PATHS: `${watched}/` },
  });
  t.teardown(() => agent.stop());
  await agent.waitForLog((l) => l.msg === 'security probes attached', 'the security probes');

  // The benign twins first, in their own pod, so a late event cannot be mistaken for the actor's.
  await ok(t, twin, secops, ['ptrace-traceme']);
  await ok(t, twin, secops, ['bpf-map-create']);
  await ok(t, twin, 'unshare', ['-m', '--propagation', 'unchanged', 'true']);
  await ok(t, twin, 'sh', ['-c', `cd ${unwatched} && chmod 600 a && mv a b && rm b`]);
  await ok(t, twin, '/usr/bin/python3', ['-c', `import os; os.chdir('${unwatched}'); os.chmod('c', 0o600); os.rename('c', 'd'); os.unlink('d')`]);

  const attach = await ok(t, actor, secops, ['ptrace-attach']);
  const tracee = Number(attach.trim());
  await ok(t, actor, secops, ['ptrace-traceme']);
  await ok(t, actor, 'unshare', ['-m', '--propagation', 'unchanged', 'mount', '-t', 'tmpfs', 'ppsrc', mountPoint]);
  await ok(t, actor, 'unshare', ['-m', '--propagation', 'unchanged', 'true']);
  await ok(t, actor, secops, ['bpf-map-create']);
  await ok(t, actor, secops, ['bpf-prog-load']);
  await ok(t, actor, 'sh', ['-c', `cd ${unwatched} && chmod 600 e && mv e f && rm f`]);
  await ok(t, actor, 'sh', ['-c', `chmod 600 ${watched}/a && mv ${watched}/a ${watched}/b && rm ${watched}/b && mv ${unwatched}/moved-in ${watched}/moved-in`]);
  await ok(t, actor, '/usr/bin/python3', ['-c', `import os; os.chmod('${watched}/c', 0o640); os.rename('${watched}/c', '${watched}/d'); os.unlink('${watched}/d')`]);

  await waitFor(() => securityEvents(agent, actor, 'unlink').length >= 2, { timeoutMs: 10_000, what: 'the unlink events' });
  await new Promise((r) => setTimeout(r, 500));

  const ptraces = securityEvents(agent, actor, 'ptrace');
  t.equal(ptraces.length, 1, 'one ptrace event: the attach, not PTRACE_TRACEME');
  t.match(ptraces[0], { comm: 'ppsecops', arg: tracee }, 'the tracer and its target pid');

  // ip netns exec (the pods helper) mounts /sys in its own namespace for every command: those are ip's.
  const mounts = securityEvents(agent, actor, 'mount').filter((e) => e.comm !== 'ip');
  t.equal(mounts.length, 1, 'one mount: the tmpfs, not the bare namespace');
  t.match(mounts[0], { comm: 'mount', path: mountPoint, args: ['ppsrc'] }, 'target and source of the mount');

  const loads = securityEvents(agent, actor, 'bpf_prog_load');
  t.equal(loads.length, 1, 'one bpf_prog_load: the program, not the map');
  t.match(loads[0], { comm: 'ppsecops' });

  const chmods = securityEvents(agent, actor, 'chmod');
  t.same(chmods.map((e) => [e.path, e.arg]), [[`${watched}/a`, 0o600], [`${watched}/c`, 0o640]], 'chmod of the watched files (fchmodat, chmod) with their modes');
  const renames = securityEvents(agent, actor, 'rename');
  t.same(
    renames.map((e) => [e.path, e.args]),
    [
      [`${watched}/a`, [`${watched}/b`]],
      [`${unwatched}/moved-in`, [`${watched}/moved-in`]],
      [`${watched}/c`, [`${watched}/d`]],
    ],
    'renames within the watched directory (renameat2, rename) and into it from outside',
  );
  const unlinks = securityEvents(agent, actor, 'unlink');
  t.same(unlinks.map((e) => e.path), [`${watched}/b`, `${watched}/d`], 'unlink of the watched files (unlinkat, unlink)');
  t.ok([...chmods, ...renames, ...unlinks].every((e) => e.uid === 0 && e.pid > 0), 'uid and task of each file event');

  for (const kind of ['ptrace', 'bpf_prog_load', 'chmod', 'rename', 'unlink'] as const) t.equal(securityEvents(agent, twin, kind).length, 0, `no ${kind} event from the benign twins`);
  t.equal(securityEvents(agent, twin, 'mount').filter((e) => e.comm !== 'ip').length, 0, 'no mount event from the bare namespace');

  const metrics = parseExposition(await agent.metrics());
  for (const [kind, events] of [['ptrace', ptraces], ['bpf_prog_load', loads], ['chmod', chmods], ['rename', renames], ['unlink', unlinks]] as const)
    t.equal(sumSamples(metrics, 'probepilot_security_events_total', { cgroup: actor.cgroupPath, kind }), events.length, `the ${kind} counter of the pod equals its events`);
  t.equal(sumSamples(metrics, 'probepilot_security_events_total', { cgroup: twin.cgroupPath, kind: 'bpf_prog_load' }), 0, 'nothing counted for the twin');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
