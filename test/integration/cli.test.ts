// The agent refuses a bad configuration before touching the kernel, and says
// which key is wrong and what it allows.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

function run(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 20_000 });
}

t.test('a bad environment value names the key and allowed values, exit 2', async (t) => {
  const res = run(['agent'], { PROBEPILOT_COLLECTORS_NETWORK_ATTACH_MODE: 'xdp' });
  t.equal(res.status, 2);
  t.match(res.stderr, 'config key "collectors.network.attachMode": got "xdp", allowed values: auto, tcx, clsact');
  t.equal(res.stdout, '', 'nothing started, nothing logged');
});

t.test('a bad config file value and an unknown key', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'config.yaml');
  writeFileSync(file, 'collectors:\n  network:\n    maxEntries: 12\n');
  let res = run(['agent', '--config', file]);
  t.equal(res.status, 2);
  t.match(res.stderr, 'config key "collectors.network.maxEntries": got 12, expected an integer from 1024 to 4194304');
  writeFileSync(file, 'listen: 127.0.0.1:1\nlogLevl: debug\n');
  res = run(['agent', '--config', file]);
  t.equal(res.status, 2);
  t.match(res.stderr, 'config key "logLevl": unknown key; allowed keys: listen, grpcListen, logLevel');
  res = run(['agent', '--config', path.join(dir, 'missing.yaml')]);
  t.equal(res.status, 2);
  t.match(res.stderr, /config key "--config": cannot read .*missing\.yaml/);
  res = run(['agent', '--listen', 'nowhere']);
  t.equal(res.status, 2);
  t.match(res.stderr, 'config key "listen": got "nowhere", expected HOST:PORT');
});

t.test('Kubernetes mode without a usable kubeconfig names the key, exit 2', async (t) => {
  let res = run(['agent', '--listen', '127.0.0.1:0'], { PROBEPILOT_KUBERNETES_ENABLED: 'true', PROBEPILOT_KUBERNETES_KUBECONFIG: '/nonexistent/kubeconfig' });
  t.equal(res.status, 2);
  t.match(res.stderr, 'config key "kubernetes.kubeconfig": cannot load /nonexistent/kubeconfig');
  res = run(['agent', '--listen', '127.0.0.1:0'], { PROBEPILOT_KUBERNETES_ENABLED: 'true', KUBERNETES_SERVICE_HOST: '' });
  t.equal(res.status, 2);
  t.match(res.stderr, 'config key "kubernetes.kubeconfig": empty, and this is not a pod');
});
