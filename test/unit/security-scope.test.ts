// The verdicts the kernel's security_scope map gets (bpf/events.bpf.c: the
// deepest decided ancestor of a task's cgroup decides). The oracle is the
// decision the kernel makes for a cgroup, recomputed here by walking its
// ancestors over the verdicts, for each configuration the README documents.
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resolveConfig, ConfigError } from '../../src/config.js';
import { CgroupPaths } from '../../src/identity/cgroups.js';
import { StandaloneIdentity, type Identity } from '../../src/identity/identity.js';
import { NetnsWorkloads } from '../../src/identity/netns.js';
import { securityScope, securityScoped, scopeVerdicts } from '../../src/events/scope.js';

const podA = 'kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice';
const podB = 'kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod66666666_7777_8888_9999_000000000000.slice';
const containerA = `${podA}/cri-containerd-${'a'.repeat(64)}.scope`;
const namespaceOf: Record<string, string> = { [`/${podA}`]: 'shop', [`/${podB}`]: 'batch' };

function tree(t: Test): CgroupPaths {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pp-scope-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const dir of [containerA, podB, 'system.slice/cron.service', 'user.slice']) mkdirSync(path.join(root, dir), { recursive: true });
  const cgroups = new CgroupPaths(root, { minRefreshIntervalMs: 0 });
  cgroups.refresh(true);
  return cgroups;
}

/** A Kubernetes identity over the tree: pods' namespaces from namespaceOf. */
function kubernetes(cgroups: CgroupPaths): Identity {
  const standalone = new StandaloneIdentity(cgroups, new NetnsWorkloads(() => -1));
  return {
    ...standalone,
    mode: 'kubernetes',
    cgroups,
    netns: standalone.netns,
    families: [],
    labelNames: () => ['namespace'],
    labelsFor: (cgroupPath) => ({ namespace: namespaceOf[cgroupPath ?? '/'] ?? '' }),
    peers: () => standalone.peers(),
    describe: () => ({}),
    metrics: () => [],
  };
}

/** What the kernel decides for a cgroup path: the deepest ancestor with a verdict. */
function decided(identity: Identity, verdicts: ReadonlyMap<bigint, number>, cgroupPath: string): boolean {
  const ids = new Map([...identity.cgroups.known()].map(([id, p]) => [p, id]));
  let verdict: number = scopeVerdicts.include;
  const parts = cgroupPath.split('/').filter(Boolean);
  for (let level = 0; level <= parts.length; level++) {
    const found = verdicts.get(ids.get(`/${parts.slice(0, level).join('/')}`)!);
    if (found !== undefined) verdict = found;
  }
  return verdict === scopeVerdicts.include;
}

function security(file: Record<string, unknown>) {
  return resolveConfig({ file: { security: file } }).security;
}

t.test('namespaces, cgroups and the node, deepest rule first', async (t) => {
  const identity = kubernetes(tree(t));
  const cases: Array<{ name: string; config: Record<string, unknown>; in: string[]; out: string[] }> = [
    { name: 'exclude a namespace', config: { namespaces: { exclude: ['shop'] } }, in: [podB, 'system.slice/cron.service', ''], out: [podA, containerA] },
    { name: 'include a namespace', config: { namespaces: { include: ['shop'] } }, in: [podA, containerA], out: [podB, 'user.slice', ''] },
    { name: 'include a namespace and the node', config: { namespaces: { include: ['shop'] }, nodeProcesses: 'include' }, in: [podA, 'user.slice', ''], out: [podB] },
    { name: 'exclude the node only', config: { nodeProcesses: 'exclude' }, in: [podA, containerA, podB], out: ['system.slice/cron.service', ''] },
    { name: 'include a cgroup, exclude one below', config: { cgroups: { include: ['/system.slice/'], exclude: ['/system.slice/cron.service'] } }, in: ['system.slice'], out: ['system.slice/cron.service', podA, 'user.slice'] },
    // An include list narrows: what it does not name is out.
    { name: 'a cgroup rule inside an excluded namespace', config: { namespaces: { exclude: ['shop'] }, cgroups: { include: [`/${containerA}`] } }, in: [containerA], out: [podA, podB, ''] },
  ];
  for (const c of cases) {
    const config = security(c.config);
    t.ok(securityScoped(config), `${c.name}: scoped`);
    const verdicts = securityScope(config, identity);
    for (const p of c.in) t.ok(decided(identity, verdicts, p), `${c.name}: /${p} in`);
    for (const p of c.out) t.notOk(decided(identity, verdicts, p), `${c.name}: /${p} out`);
  }
  t.notOk(securityScoped(security({})), 'no rules: the kernel skips the lookup');
});

t.test('standalone: cgroup rules apply, namespaces need pods', async (t) => {
  const cgroups = tree(t);
  const identity = new StandaloneIdentity(cgroups, new NetnsWorkloads(() => -1));
  const verdicts = securityScope(security({ cgroups: { exclude: ['/user.slice'] }, namespaces: { exclude: ['shop'] } }), identity);
  t.notOk(decided(identity, verdicts, 'user.slice'), 'an excluded cgroup is out');
  t.ok(decided(identity, verdicts, podA), 'namespaces name nothing without pod identity');
  t.equal(verdicts.size, 2, 'only the root and the listed cgroup get a verdict');
});

t.test('bad values name the key', async (t) => {
  t.throws(() => security({ namespaces: { include: ['Shop'] } }), new ConfigError('security.namespaces.include', 'got "Shop", expected a list of namespace names (lower-case letters, digits and -)'));
  t.throws(() => security({ cgroups: { exclude: ['system.slice'] } }), { name: 'ConfigError', message: /security\.cgroups\.exclude.*cgroup paths/ });
  t.throws(() => security({ nodeProcesses: 'sometimes' }), { message: /security\.nodeProcesses.*auto, include, exclude/ });
});
