// probepilot doctor on this machine, and on hosts missing what the agent
// needs — simulated: bpffs and tracefs hidden in a private mount namespace,
// every capability dropped, the listen port taken — each reported with the
// check that failed and its remedy; the agent logs the host checks at start.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onlyCollectors, startAgent } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import type { CheckResult } from '../../src/doctor.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

function doctor(prefix: string[] = [], env: NodeJS.ProcessEnv = {}): { status: number | null; results: CheckResult[]; stderr: string } {
  const [command, ...args] = [...prefix, process.execPath, cli, 'doctor', '-o', 'json'];
  const res = spawnSync(command!, args, { encoding: 'utf8', timeout: 60_000, env: { ...process.env, PROBEPILOT_LISTEN: '127.0.0.1:0', ...env } });
  let results: CheckResult[] = [];
  try {
    results = JSON.parse(res.stdout) as CheckResult[];
  } catch {
    results = [];
  }
  return { status: res.status, results, stderr: res.stderr };
}

const byCheck = (results: readonly CheckResult[], check: string) => results.find((r) => r.check === check);

t.test('doctor passes on this machine', async (t) => {
  if (!requirePrivileges(t, 'doctor as root')) return;
  const { status, results, stderr } = doctor();
  t.equal(status, 0, `exit 0 ${stderr}`);
  t.same(
    results.map((r) => r.check),
    ['kernel', 'btf', 'capabilities', 'bpffs', 'tracefs', 'cgroup2', 'tc attach', 'other programs', 'perf_event_paranoid', 'memlock', 'bpf', 'kubernetes', 'nvml', 'listen'],
    'every check ran',
  );
  t.same(results.filter((r) => r.verdict === 'FAIL'), [], 'nothing fails');
  for (const r of results.filter((x) => x.verdict !== 'PASS')) t.ok(r.remedy.length > 0, `${r.check} (${r.verdict}) says what to do`);
  const table = spawnSync(process.execPath, [cli, 'doctor'], { encoding: 'utf8', env: { ...process.env, PROBEPILOT_LISTEN: '127.0.0.1:0' } });
  t.match(table.stdout, /^PASS {2}kernel {16}/m, 'a readable table');
});

t.test('hidden bpffs and tracefs are reported with the mount to run', async (t) => {
  if (!requirePrivileges(t, 'a private mount namespace')) return;
  const hide = 'umount -l /sys/fs/bpf; umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; exec "$@"';
  const { results } = doctor(['unshare', '-m', '--propagation', 'private', 'sh', '-c', hide, 'sh']);
  t.match(byCheck(results, 'bpffs'), { verdict: 'WARN', detail: /not mounted/, remedy: /mount -t bpf bpf \/sys\/fs\/bpf/ }, 'bpffs: not mounted, and how to mount it');
  t.match(byCheck(results, 'tracefs'), { verdict: 'WARN', detail: /not mounted/, remedy: /mount -t tracefs tracefs \/sys\/kernel\/tracing/ }, 'tracefs likewise');
});

t.test('without capabilities, doctor fails and says which are missing', async (t) => {
  if (!requirePrivileges(t, 'dropping capabilities')) return;
  const { status, results } = doctor(['setpriv', '--bounding-set', '-all', '--inh-caps', '-all']);
  t.equal(status, 1, 'exit 1 on a FAIL');
  t.match(byCheck(results, 'capabilities'), { verdict: 'FAIL', detail: /missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE/, remedy: /run as root/ });
  t.match(byCheck(results, 'bpf'), { verdict: 'FAIL', remedy: /CAP_BPF/ }, 'and bpf() itself is refused');
});

t.test('a taken listen port fails', async (t) => {
  if (!requirePrivileges(t, 'doctor as root')) return;
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const { status, results } = doctor([], { PROBEPILOT_LISTEN: `127.0.0.1:${(server.address() as AddressInfo).port}` });
  t.equal(status, 1);
  t.match(byCheck(results, 'listen'), { verdict: 'FAIL', detail: /EADDRINUSE/, remedy: /another agent/ });
});

t.test('the agent logs the host checks at start', async (t) => {
  if (!requirePrivileges(t, 'the agent')) return;
  const agent = await startAgent({ env: onlyCollectors('process') });
  t.teardown(() => agent.stop());
  const logged = agent.logs.filter((l) => l.msg === 'preflight check');
  t.same(
    logged.map((l) => l.check),
    ['kernel', 'btf', 'capabilities', 'bpffs', 'tracefs', 'cgroup2', 'tc attach', 'other programs', 'perf_event_paranoid', 'memlock'],
    'each host check, logged',
  );
  t.same(logged.filter((l) => l.verdict !== 'PASS').map((l) => l.check), [], 'all passing here');
});
