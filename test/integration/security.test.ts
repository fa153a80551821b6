// Security events against workloads whose events we know: K execs in one pod
// are K exec events and a counter of K for that pod only; a write under a
// watched prefix is one event with path, op and pod (an unwatched twin none);
// a set-user-ID binary run by nobody is a privilege change; a connect to a
// listener in another pod carries the right peer; each event is a JSON log
// line of the security stream.
import t from 'tap';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { compileWorkload } from '../helpers/workload.js';
import { waitFor } from '../helpers/wait.js';
import { loggedSecurityEvents } from '../helpers/security.js';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures');


t.test('security events: execs, watched writes, privilege change and connects, per pod', async (t) => {
  if (!requirePrivileges(t, 'security probes')) return;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-security-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  mkdirSync(path.join(dir, 'watched'));
  mkdirSync(path.join(dir, 'unwatched'));
  const setuidBinary = await compileWorkload(t, 'ppsetuid', readFileSync(path.join(fixtures, 'setuid-root.c'), 'utf8'));
  chmodSync(path.dirname(setuidBinary), 0o755);
  chmodSync(setuidBinary, 0o4755);

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const actor = await net.addPod({ layout: 'systemd' });
  const bystander = await net.addPod({ layout: 'plain' });
  const server = await net.addPod();
  const agent = await startAgent({
    env: { ...onlyCollectors(), PROBEPILOT_SECURITY_ENABLED: 'true', PROBEPILOT_EVENTS_RATE_PER_SECOND: '0', PROBEPILOT_SECURITY_WATCHED_PATHS: `${dir}/watched/` },
  });
  t.teardown(() => agent.stop());
  await agent.waitForLog((l) => l.msg === 'security probes attached', 'the security probes');

  const execs = 25;
  for (let i = 0; i < execs; i++) t.equal((await actor.exec('/bin/true', [])).code, 0);
  const exitCode = await actor.exec('/bin/sh', ['-c', 'exit 3']);
  t.equal(exitCode.code, 3);
  await actor.exec('/bin/sh', ['-c', `echo x > ${dir}/watched/file; echo x > ${dir}/unwatched/file`]);
  const privileged = await actor.exec('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', setuidBinary]);
  t.equal(privileged.code, 0, `the setuid binary got root (${privileged.stderr})`);
  const port = 7000 + Math.floor(Math.random() * 1000);
  const listener = server.run(process.execPath, ['-e', `require('node:net').createServer((s) => s.end()).listen(${port}, '0.0.0.0', () => console.log('ready'))`]);
  t.teardown(() => listener.kill());
  await new Promise<void>((resolve) => listener.stdout!.once('data', () => resolve()));
  const connect = await actor.exec(process.execPath, ['-e', `const s = require('node:net').connect(${port}, '${server.ipv4}', () => s.end())`]);
  t.equal(connect.code, 0, 'the pod connected');

  await waitFor(() => loggedSecurityEvents(agent, actor.cgroupPath).some((e) => e.kind === 'connect'), { timeoutMs: 10_000, what: 'the connect event' });
  await new Promise((r) => setTimeout(r, 500));
  const events = loggedSecurityEvents(agent, actor.cgroupPath);
  const trueExecs = events.filter((e) => e.kind === 'exec' && e.path === '/bin/true');
  t.equal(trueExecs.length, execs, `exactly ${execs} exec events of /bin/true in the pod`);
  t.ok(trueExecs.every((e) => e.args?.[0] === '/bin/true' && e.uid === 0 && e.pid > 0 && e.comm === 'true'), 'binary, argv, uid and task of each exec');
  t.equal(loggedSecurityEvents(agent, bystander.cgroupPath).length, 0, 'none in the pod that did nothing');
  const exits = events.filter((e) => e.kind === 'exit' && e.comm === 'sh' && e.exitCode === 3);
  t.equal(exits.length, 1, 'one exit with code 3');

  const writes = events.filter((e) => e.kind === 'open_write');
  t.same(writes.map((e) => e.path), [`${dir}/watched/file`], 'one write event, for the watched path only');

  const setuidExec = events.filter((e) => e.kind === 'setuid_exec');
  t.equal(setuidExec.length, 1, 'the set-user-ID exec is a privilege change');
  t.match(setuidExec[0], { path: setuidBinary, uid: 65534, euid: 0 });
  const setuid = events.filter((e) => e.kind === 'setuid');
  t.equal(setuid.length, 1, 'setuid(0) by a non-root uid is a privilege change');
  t.match(setuid[0], { uid: 65534, comm: 'ppsetuid' });

  const connects = events.filter((e) => e.kind === 'connect');
  t.equal(connects.length, 1, 'one connect');
  t.match(connects[0], { family: 'ipv4', address: server.ipv4, port });
  const listens = loggedSecurityEvents(agent, server.cgroupPath).filter((e) => e.kind === 'listen');
  t.equal(listens.length, 1, 'the listener in the other pod is one listen event');
  t.match(listens[0], { port });

  const metrics = parseExposition(await agent.metrics());
  t.equal(sumSamples(metrics, 'probepilot_security_events_total', { cgroup: actor.cgroupPath, kind: 'exec' }), events.filter((e) => e.kind === 'exec').length, 'the counter equals the exec events of the pod');
  t.ok(sumSamples(metrics, 'probepilot_security_events_total', { cgroup: actor.cgroupPath, kind: 'exec' }) >= execs);
  t.equal(sumSamples(metrics, 'probepilot_security_events_total', { cgroup: bystander.cgroupPath }), 0, 'nothing counted for the other pod');
  t.equal(sumSamples(metrics, 'probepilot_security_up', {}), 1);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
