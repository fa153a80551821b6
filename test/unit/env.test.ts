// The skip/fail rule of requirePrivileges, exercised for real: a child
// without capabilities (as in an unprivileged container) cannot call bpf(),
// and must skip outside CI but fail with CI=true.
import t from 'tap';
import { execCommand } from '../helpers/proc.js';

const envHelper = new URL('../helpers/env.js', import.meta.url).href;
const script = `
  import t from 'tap';
  import { requirePrivileges } from ${JSON.stringify(envHelper)};
  t.test('needs bpf', async (t) => {
    if (!requirePrivileges(t, 'the probe')) return;
    t.pass('ran with privileges');
  });`;

function runUnprivileged(ci: boolean) {
  const env = { ...process.env, CI: ci ? 'true' : 'false', TAP: '1' };
  const node = [process.execPath, '--input-type=module', '-e', script];
  // Root keeps uid 0 but loses every capability, so the bpf() probe is what says no.
  const [cmd, ...args] = process.getuid?.() === 0 ? ['setpriv', '--bounding-set=-all', '--inh-caps=-all', ...node] : node;
  return execCommand(cmd!, args, { env, timeoutMs: 30_000 });
}

t.test('without privileges a test skips with the reason outside CI', async (t) => {
  const res = await runUnprivileged(false);
  t.equal(res.code, 0, res.stderr);
  t.match(res.stdout, /ok 1 - the probe # SKIP the probe needs root and a BPF-capable kernel: (not running as root|the bpf\(\) syscall is not permitted)/);
  t.notMatch(res.stdout, /ran with privileges/);
});

t.test('without privileges a test fails under CI=true', async (t) => {
  const res = await runUnprivileged(true);
  t.not(res.code, 0);
  t.match(res.stdout, /not ok 1 - the probe needs root and a BPF-capable kernel: .* \(CI=true: kernel tests must run in CI\)/);
  t.notMatch(res.stdout, /# SKIP/);
});
