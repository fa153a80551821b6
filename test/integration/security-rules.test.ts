// Detection rules on the real kernel: each shipped rule fires exactly on its
// scenario, run in a test pod, and not on a benign twin (another binary,
// another path, the application's own read, root running the binary, another
// port, the node instead of a pod); the match counter equals the matches
// logged. A changed rule file is used without a restart; a broken one is
// logged and the previous rules stay; at start a broken one is a config error.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { compileWorkload } from '../helpers/workload.js';
import { collect } from '../helpers/proc.js';
import { waitFor } from '../helpers/wait.js';
import { loggedSecurityEvents } from '../helpers/security.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixtures = path.resolve(here, '../../../test/fixtures');
const cli = path.resolve(here, '../../src/cli.js');

/** A module load attempt: finit_module(2) on a file that is no module. The kernel refuses it; the attempt is the event. */
const finitModuleSource = `
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 2;
	return syscall(SYS_finit_module, fd, "", 0) == 0 ? 1 : 0;
}
`;

interface Match {
  rule: string;
  severity: string;
  event: SecurityTraceEvent;
}

function matchesOf(agent: AgentProcess): Match[] {
  return agent.logs.filter((l) => l.log === 'security' && l.msg === 'security rule matched').map((l) => l as unknown as Match);
}


const securityEnv = { ...onlyCollectors(), PROBEPILOT_SECURITY_ENABLED: 'true', PROBEPILOT_EVENTS_RATE_PER_SECOND: '0' };

t.test('each shipped rule fires on its scenario in a pod and not on its benign twin', async (t) => {
  if (!requirePrivileges(t, 'security probes')) return;
  const setuidBinary = await compileWorkload(t, 'ppsetuid', readFileSync(path.join(fixtures, 'setuid-root.c'), 'utf8'));
  chmodSync(path.dirname(setuidBinary), 0o755);
  chmodSync(setuidBinary, 0o4755);
  const finitModule = await compileWorkload(t, 'ppfinitmod', finitModuleSource);
  const bogusModule = path.join(path.dirname(finitModule), 'bogus.ko');
  writeFileSync(bogusModule, 'not a kernel module\n');

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const actor = await net.addPod({ layout: 'systemd' });
  const server = await net.addPod({ layout: 'cgroupfs' });
  const marker = `pp-rules-${net.runId}-${process.pid}`;

  // A service-account token where the shipped rule and the default sensitive paths look; only what we create is removed.
  const tokenDir = `/run/secrets/kubernetes.io/${marker}`;
  const firstMissing = ['/run/secrets', '/run/secrets/kubernetes.io', tokenDir].find((dir) => !existsSync(dir))!;
  mkdirSync(tokenDir, { recursive: true });
  t.teardown(() => rmSync(firstMissing, { recursive: true, force: true }));
  const token = path.join(tokenDir, 'token');
  writeFileSync(token, 'eyJhbGciOiJSUzI1NiJ9.test.token\n');

  const agent = await startAgent({ env: securityEnv });
  t.teardown(() => agent.stop());
  await agent.waitForLog((l) => l.msg === 'security probes attached', 'the security probes');
  const inActor = (m: Match) => m.event.workload.cgroup === actor.cgroupPath;

  // shell-in-container: a shell in the pod; twins: another binary in the pod, a shell on the node.
  t.equal((await actor.exec('/bin/sh', ['-c', 'exit 0'])).code, 0);
  t.equal((await actor.exec('/bin/true', [])).code, 0);
  t.equal((await collect(spawn('/bin/sh', ['-c', `exit 0 # ${marker}`]))).code, 0);

  // write-under-etc: a file created and removed under /etc; twins: the same under /tmp, a read of /etc/shadow.
  const etcFile = `/etc/${marker}`;
  t.teardown(() => rmSync(etcFile, { force: true }));
  t.equal((await actor.exec('cp', ['/dev/null', etcFile])).code, 0);
  t.equal((await actor.exec('rm', [etcFile])).code, 0);
  t.equal((await actor.exec('cp', ['/dev/null', `/tmp/${marker}`])).code, 0);
  t.equal((await actor.exec('rm', [`/tmp/${marker}`])).code, 0);
  t.equal((await actor.exec('cat', ['/etc/shadow'])).code, 0);

  // service-account-token-read: cat of the token; twin: the application (node) reading it.
  t.equal((await actor.exec('cat', [token])).code, 0);
  t.equal((await actor.exec(process.execPath, ['-e', `require('node:fs').readFileSync(${JSON.stringify(token)})`])).code, 0);

  // setuid-to-root: the set-user-ID binary run by nobody (its exec and its setuid(0));
  // twins: root running it, nobody running a binary that is not set-user-ID.
  const nobody = ['--reuid', '65534', '--regid', '65534', '--clear-groups'];
  const escalated = await actor.exec('setpriv', [...nobody, setuidBinary]);
  t.equal(escalated.code, 0, `the setuid binary got root (${escalated.stderr})`);
  t.equal((await actor.exec(setuidBinary, [])).code, 0);
  t.equal((await actor.exec('setpriv', [...nobody, '/bin/true'])).code, 0);

  // outbound-admin-port-to-world: a connect to port 22 of a peer that is no pod, host or private address
  // (standalone mode knows no pods; 198.18.0.0/15 is none of the private ranges); twin: port 8080 of the same peer.
  const listener = server.run(process.execPath, ['-e', `const net = require('node:net'); let n = 0; for (const p of [22, 8080]) net.createServer((s) => s.end()).listen(p, '0.0.0.0', () => { if (++n === 2) console.log('ready'); });`]);
  t.teardown(() => listener.kill());
  await new Promise<void>((resolve) => listener.stdout!.once('data', () => resolve()));
  for (const port of [22, 8080]) {
    const connect = await actor.exec(process.execPath, ['-e', `const s = require('node:net').connect(${port}, '${server.ipv4}', () => s.end())`]);
    t.equal(connect.code, 0, `the pod connected to port ${port}`);
  }

  // module-load-from-pod: finit_module from the pod; twin: the same from the node.
  // A kernel without module support has no such syscall tracepoint (the agent runs the kind without it).
  const moduleHook = existsSync('/sys/kernel/tracing/events/syscalls/sys_enter_finit_module');
  t.equal((await actor.exec(finitModule, [bogusModule])).code, 0, 'the kernel refused the bogus module');
  t.equal((await collect(spawn(finitModule, [bogusModule]))).code, 0);

  const settled = moduleHook
    ? () => loggedSecurityEvents(agent).filter((e) => e.kind === 'module_load' && e.comm === 'ppfinitmod').length === 2
    : () => loggedSecurityEvents(agent).filter((e) => e.kind === 'exec' && e.comm === 'ppfinitmod').length === 2;
  await waitFor(settled, { timeoutMs: 15_000, what: moduleHook ? 'both module load events' : 'both execs of the module loader' });
  await new Promise((r) => setTimeout(r, 500));

  const matches = matchesOf(agent);
  const byRule = (rule: string) => matches.filter((m) => m.rule === rule);
  const shells = byRule('shell-in-container');
  t.same(shells.map((m) => [m.event.workload.cgroup, m.event.path, m.severity]), [[actor.cgroupPath, '/bin/sh', 'high']], 'shell-in-container: the pod\'s one shell; not /bin/true, not the node\'s shell');
  const etc = byRule('write-under-etc').filter((m) => m.event.path?.includes(marker));
  t.same(etc.map((m) => [m.event.kind, m.event.path, m.event.workload.cgroup]), [['open_write', etcFile, actor.cgroupPath], ['unlink', etcFile, actor.cgroupPath]], 'write-under-etc: the create and the removal under /etc, nothing for /tmp');
  t.notOk(byRule('write-under-etc').some((m) => inActor(m) && m.event.path === '/etc/shadow'), 'the read of /etc/shadow is no write');
  t.ok(loggedSecurityEvents(agent).some((e) => e.workload.cgroup === actor.cgroupPath && e.kind === 'open_read' && e.path === '/etc/shadow'), 'though it is an event');
  const tokens = byRule('service-account-token-read').filter((m) => m.event.path === token);
  t.same(tokens.map((m) => [m.event.comm, m.event.workload.cgroup]), [['cat', actor.cgroupPath]], 'service-account-token-read: cat, not the application');
  const appRead = loggedSecurityEvents(agent).filter((e) => e.path === token && e.kind === 'open_read' && e.comm !== 'cat' && e.workload.cgroup === actor.cgroupPath);
  t.ok(appRead.length >= 1 && appRead.every((e) => e.rules === undefined), 'the application\'s read is an event that matched no rule');
  const setuid = byRule('setuid-to-root').filter(inActor);
  t.same(setuid.map((m) => [m.event.kind, m.event.uid]).sort(), [['setuid', 65534], ['setuid_exec', 65534]], 'setuid-to-root: the set-user-ID exec and the setuid(0) of nobody; nothing for root, nothing for /bin/true');
  const outbound = byRule('outbound-admin-port-to-world').filter(inActor);
  t.same(outbound.map((m) => [m.event.address, m.event.port]), [[server.ipv4, 22]], 'outbound-admin-port-to-world: port 22, not 8080');
  t.equal(loggedSecurityEvents(agent).filter((e) => e.kind === 'connect' && e.workload.cgroup === actor.cgroupPath).length, 2, 'both connects are events');
  const modules = byRule('module-load-from-pod');
  if (moduleHook) t.same(modules.map((m) => [m.event.workload.cgroup, m.severity]), [[actor.cgroupPath, 'critical']], 'module-load-from-pod: the pod\'s attempt, not the node\'s');
  else {
    // No module support in this kernel: the rule cannot fire (test/unit/rules.test.ts checks it), and the agent must say why.
    t.same(modules, [], 'module-load-from-pod: no match on a kernel without module support');
    t.ok(
      agent.logs.some((l) => l.msg === 'tracepoint unavailable; its events are off' && l.tracepoint === 'syscalls:sys_enter_finit_module'),
      'the agent logs that the module load tracepoint is unavailable',
    );
  }

  // The event's own line names its rules; the counter equals the matches logged, per rule, for the pod.
  const shellEvent = loggedSecurityEvents(agent).find((e) => e.workload.cgroup === actor.cgroupPath && e.kind === 'exec' && e.path === '/bin/sh');
  t.match(shellEvent, { rules: ['shell-in-container'], severity: 'high' }, 'the event carries the rules it matched');
  const metrics = parseExposition(await agent.metrics());
  for (const rule of ['shell-in-container', 'write-under-etc', 'service-account-token-read', 'setuid-to-root', 'outbound-admin-port-to-world', 'module-load-from-pod']) {
    t.equal(sumSamples(metrics, 'probepilot_security_rule_matches_total', { cgroup: actor.cgroupPath, rule }), matches.filter((m) => inActor(m) && m.rule === rule).length, `${rule}: the counter equals the matches logged for the pod`);
  }
  t.equal(sumSamples(metrics, 'probepilot_security_rule_matches_total', { cgroup: server.cgroupPath }), 0, 'nothing for the listening pod');
  t.equal(sumSamples(metrics, 'probepilot_security_rules', {}), 6, 'the six shipped rules');
  t.equal(sumSamples(metrics, 'probepilot_security_rules_last_reload_success', {}), 1);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});

t.test('a changed rule file is used without a restart; a broken one keeps the previous rules', async (t) => {
  if (!requirePrivileges(t, 'security probes')) return;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-rules-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'rules.yaml');
  const rule = (name: string, binary: string, severity = 'low') => `  - name: ${name}\n    severity: ${severity}\n    description: ${binary} ran in a pod\n    match: {kind: exec, binary: ${binary}, inPod: true}\n`;
  writeFileSync(file, `rules:\n${rule('true-in-pod', '/bin/true')}`);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const pod = await net.addPod();
  const agent = await startAgent({ env: { ...securityEnv, PROBEPILOT_SECURITY_RULES_PATH: file, PROBEPILOT_SECURITY_RULES_RELOAD_INTERVAL_SECONDS: '1' } });
  t.teardown(() => agent.stop());
  await agent.waitForLog((l) => l.msg === 'security probes attached', 'the security probes');
  const count = (name: string) => matchesOf(agent).filter((m) => m.rule === name && m.event.workload.cgroup === pod.cgroupPath).length;
  const gauges = async () => {
    const metrics = parseExposition(await agent.metrics());
    return [sumSamples(metrics, 'probepilot_security_rules', {}), sumSamples(metrics, 'probepilot_security_rules_last_reload_success', {})];
  };

  await pod.exec('/bin/true', []);
  await pod.exec('/bin/echo', []);
  await waitFor(() => count('true-in-pod') === 1, { timeoutMs: 10_000, what: 'the first rule to match' });
  t.same(await gauges(), [1, 1]);

  writeFileSync(file, `rules:\n${rule('true-in-pod', '/bin/true')}${rule('echo-in-pod', '/bin/echo')}`);
  const reloaded = await agent.waitForLog((l) => l.msg === 'security rules reloaded' && l.rules === 2, 'the changed rules');
  t.equal(reloaded.file, file);
  await pod.exec('/bin/echo', []);
  await waitFor(() => count('echo-in-pod') === 1, { timeoutMs: 10_000, what: 'the new rule to match' });
  t.same(await gauges(), [2, 1], 'two rules in use, the reload succeeded');

  writeFileSync(file, `rules:\n${rule('true-in-pod', '/bin/true')}${rule('echo-in-pod', '/bin/echo', 'urgent')}`);
  const failed = await agent.waitForLog((l) => l.msg === 'security rules not reloaded; keeping the previous rules', 'the broken file to be refused');
  t.match(failed, { level: 'error', file, rules: 2 });
  t.match(String(failed.err), `config key "security.rules.path (${file})": rules[1] "echo-in-pod" severity: got "urgent", allowed values: low, medium, high, critical`);
  await pod.exec('/bin/echo', []);
  await pod.exec('/bin/true', []);
  await waitFor(() => count('echo-in-pod') === 2 && count('true-in-pod') === 2, { timeoutMs: 10_000, what: 'the previous rules to match still' });
  t.same(await gauges(), [2, 0], 'the previous two rules stay, the reload failed');
  await new Promise((r) => setTimeout(r, 2500));
  t.equal(agent.logs.filter((l) => l.msg === 'security rules not reloaded; keeping the previous rules').length, 1, 'the broken file is logged once, not at every check');
  t.equal(count('echo-in-pod'), 2, 'one match per exec: two execs of /bin/echo since the rule came');
  t.equal(await agent.stop(), 0);
  t.equal(agent.stderr(), '');
});

t.test('a broken rule file at start is a config error naming the rule and field, exit 2', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-rules-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'rules.yaml');
  writeFileSync(file, 'rules:\n  - name: shell\n    severity: high\n    description: a shell\n    match: {kind: exec, bianry: /bin/sh}\n');
  const res = spawnSync(process.execPath, [cli, 'agent', '--listen', '127.0.0.1:0'], {
    env: { ...process.env, ...onlyCollectors(), PROBEPILOT_PINS_ENABLED: 'false', PROBEPILOT_SECURITY_RULES_PATH: file },
    encoding: 'utf8',
    timeout: 30_000,
  });
  t.equal(res.status, 2, res.stderr);
  t.match(res.stderr, `config key "security.rules.path (${file})": rules[0] "shell" match.bianry: unknown field; allowed keys: kind, path, binary`);
});
