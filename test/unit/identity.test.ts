import t from 'tap';
import { mkdtempSync, mkdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgroupPaths, commonAncestor } from '../../src/identity/cgroups.js';
import { NetnsWorkloads } from '../../src/identity/netns.js';
import { workloadBehind, workloadChanges, type PeerWorkload } from '../../src/collectors/tc-interfaces.js';
import type { LinkInfo } from '../../src/bpf/addon.js';
import { Attribution } from '../../src/collectors/network-decode.js';
import { parseMountInfo, findCgroup2Mount } from '../../src/system/mounts.js';
import { sanitizeLabelValue } from '../../src/metrics/model.js';

t.test('common ancestor of cgroup paths', async (t) => {
  t.equal(commonAncestor(['/kubepods/burstable/podA/c1', '/kubepods/burstable/podA/c2']), '/kubepods/burstable/podA');
  t.equal(commonAncestor(['/a/b']), '/a/b');
  t.equal(commonAncestor(['/a/b', '/c']), '/');
  t.equal(commonAncestor(['/a/bc', '/a/b']), '/a', 'compares whole path segments');
  t.equal(commonAncestor([]), '/');
});

t.test('cgroup2 mount from mountinfo, hybrid and unified hosts', async (t) => {
  const hybrid = [
    '25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755',
    '26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate',
    '27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd',
  ].join('\n');
  t.equal(findCgroup2Mount(parseMountInfo(hybrid)), '/sys/fs/cgroup/unified');
  const unified = '30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n';
  t.equal(findCgroup2Mount(parseMountInfo(unified)), '/sys/fs/cgroup');
  t.equal(parseMountInfo('40 1 0:30 / /mnt/with\\040space rw - ext4 /dev/x rw')[0]?.mountPoint, '/mnt/with space');
  t.equal(findCgroup2Mount([]), undefined);
});

t.test('cgroup ids resolve to paths, new ones after a refresh, deleted ones are marked gone', async (t) => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pp-cg-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(path.join(root, 'a/b'), { recursive: true });
  let now = 0;
  const paths = new CgroupPaths(root, { minRefreshIntervalMs: 1000, now: () => now });
  const idOf = (p: string): bigint => statSync(path.join(root, p), { bigint: true }).ino;
  t.equal(paths.resolve(idOf('a/b')), '/a/b');
  t.equal(paths.resolve(idOf('.')), '/');
  mkdirSync(path.join(root, 'c'));
  t.equal(paths.resolve(idOf('c')), undefined, 'no second walk within the refresh interval');
  now = 1000;
  t.equal(paths.resolve(idOf('c')), '/c');
  const gone = idOf('a/b');
  rmSync(path.join(root, 'a/b'), { recursive: true });
  now = 2000;
  paths.refresh();
  t.ok(paths.isGone(gone));
  t.equal(paths.resolve(gone), '/a/b', 'a gone id keeps its last path until forgotten');
  paths.forget(gone);
  t.equal(paths.resolve(gone), undefined);
  t.equal(paths.resolve(0n), undefined, 'id 0 is "no socket", never a cgroup');
});

t.test('network namespaces resolve to workloads by inode and by id; gone ones keep their last workload', async (t) => {
  const proc = mkdtempSync(path.join(os.tmpdir(), 'pp-proc-'));
  t.teardown(() => rmSync(proc, { recursive: true, force: true }));
  /** A fake /proc/PID: its ns/net link (dangling, as readlink sees it) and its cgroup file. */
  const addProcess = (pid: string, netnsInode: number, cgroup?: string) => {
    mkdirSync(path.join(proc, pid, 'ns'), { recursive: true });
    symlinkSync(`net:[${netnsInode}]`, path.join(proc, pid, 'ns/net'));
    if (cgroup) writeFileSync(path.join(proc, pid, 'cgroup'), `12:cpu:/elsewhere\n0::${cgroup}\n`);
  };
  const host = 4026531840;
  const podA = 4026532001;
  const podB = 4026532002;
  addProcess('self', host);
  addProcess('1', host, '/init.scope');
  addProcess('100', podA, '/kubepods/podA/pause');
  addProcess('101', podA, '/kubepods/podA/app');
  addProcess('200', podB, '/podB');
  // podA has a veth of ours leading to it (nsid 7), podB none.
  const nsids: Record<string, number> = { [`${proc}/100/ns/net`]: 7, [`${proc}/101/ns/net`]: 7 };
  let now = 0;
  const netns = new NetnsWorkloads((p) => nsids[p] ?? -1, { procRoot: proc, minRefreshIntervalMs: 1000, now: () => now });

  t.same(netns.resolveInode(podA), { workload: { cgroupPath: '/kubepods/podA', pids: 2 }, gone: false }, 'common ancestor of its processes');
  t.same(netns.resolveInode(podB), { workload: { cgroupPath: '/podB', pids: 1 }, gone: false }, 'a namespace without nsid resolves by inode');
  t.equal(netns.resolve(7)?.cgroupPath, '/kubepods/podA', 'the same workload by namespace id');
  t.equal(netns.resolveInode(host), undefined, "the agent's own namespace is the node's");
  t.equal(netns.resolveInode(4026532999), undefined, 'an unknown inode');

  rmSync(path.join(proc, '200'), { recursive: true });
  addProcess('300', 4026532003, '/podC');
  t.equal(netns.resolveInode(4026532003), undefined, 'no second scan within the refresh interval');
  now = 1000;
  t.same(netns.resolveInode(4026532003)?.workload.cgroupPath, '/podC', 'a new namespace after the interval');
  t.same(netns.resolveInode(podB), { workload: { cgroupPath: '/podB', pids: 1 }, gone: true }, 'a namespace with no process left is gone, with its last workload');
  netns.forgetInode(podB);
  t.equal(netns.resolveInode(podB), undefined, 'forgotten');
});

t.test('a veth attributed to a visitor of its young namespace is corrected while the answer settles, and trusted after', async (t) => {
  const proc = mkdtempSync(path.join(os.tmpdir(), 'pp-proc-'));
  t.teardown(() => rmSync(proc, { recursive: true, force: true }));
  const addProcess = (pid: string, netnsInode: number, cgroup: string) => {
    mkdirSync(path.join(proc, pid, 'ns'), { recursive: true });
    symlinkSync(`net:[${netnsInode}]`, path.join(proc, pid, 'ns/net'));
    writeFileSync(path.join(proc, pid, 'cgroup'), `0::${cgroup}\n`);
  };
  const pod = 4026532001;
  addProcess('self', 4026531840, '/agent');
  // A set-up tool (the CNI plugin, `ip netns exec …`) is in the pod's namespace before the pod's own process.
  addProcess('50', pod, '/system.slice/containerd.service');
  let now = 0;
  // Every process of the test's namespace finds it as nsid 3.
  const netns = new NetnsWorkloads(() => 3, { procRoot: proc, minRefreshIntervalMs: 1000, now: () => now });
  const link: LinkInfo = { ifindex: 9, name: 'veth9', iflink: 2, kind: 'veth', linkNetnsId: 3, hwType: 1, flags: 0, master: 0 };
  const iface: PeerWorkload = { attribution: Attribution.peerWorkload, peerNetnsId: 3, ...workloadBehind(netns, link, now) };
  t.equal(iface.workload, '/system.slice/containerd.service', 'the first answer names the visitor');

  rmSync(path.join(proc, '50'), { recursive: true });
  addProcess('100', pod, '/kubepods/podA/pause');
  now = 500;
  t.same(workloadChanges(netns, [iface], now), [], 'no second scan within the refresh interval');
  now = 1000;
  const changes = workloadChanges(netns, [iface], now);
  t.same(changes.map((c) => c.workload), ['/kubepods/podA/pause'], "corrected to the pod's own process once the visitor left");
  iface.workload = changes[0]?.workload;

  rmSync(path.join(proc, '100'), { recursive: true });
  addProcess('101', pod, '/elsewhere');
  now = 30_000;
  t.same(workloadChanges(netns, [iface], now), [], 'settled 30 s after it was first seen: no longer asked');

  const node: PeerWorkload = { attribution: Attribution.socket, peerNetnsId: -1, workload: undefined, workloadCheckUntil: 0 };
  const pending: PeerWorkload = { attribution: Attribution.peerWorkload, peerNetnsId: 3, workload: undefined, workloadCheckUntil: 0 };
  now = 31_000;
  const found = workloadChanges(netns, [node, pending], now);
  t.same(found.map((c) => c.workload), ['/elsewhere'], 'a pending veth is resolved; a node interface never');
  t.equal(pending.workloadCheckUntil, now + 30_000, 'and settles from when it was first found');
});

t.test('cgroup directories named with bytes that are no UTF-8 are found, and so are their children', async (t) => {
  const root = t.testdir({});
  const bad = Buffer.concat([Buffer.from(root), Buffer.from('/pod-'), Buffer.from([0xff, 0xe2, 0x82])]);
  mkdirSync(bad);
  mkdirSync(Buffer.concat([bad, Buffer.from('/ctr')]));
  const paths = new CgroupPaths(root);
  const idOf = (dir: Buffer): bigint => statSync(dir, { bigint: true }).ino;
  t.equal(paths.resolve(idOf(bad)), '/pod-\ufffd\ufffd', 'its path, the bad bytes decoded as U+FFFD');
  t.equal(paths.resolve(idOf(Buffer.concat([bad, Buffer.from('/ctr')]))), '/pod-\ufffd\ufffd/ctr', 'the walk descends into it');
});

t.test('label values are valid UTF-8 and bounded', async (t) => {
  t.equal(sanitizeLabelValue('/system.slice/nginx.service'), '/system.slice/nginx.service');
  t.equal(sanitizeLabelValue('a\0b\nc\x1bd\x7fe'), 'a\ufffdb\ufffdc\ufffdd\ufffde', 'NUL, newline, escape and DEL become U+FFFD');
  t.equal(sanitizeLabelValue('say "hi" \\ bye'), 'say "hi" \\ bye', 'quotes and backslashes are kept for the exporters to escape');
  t.equal(sanitizeLabelValue(Buffer.from([0x61, 0xe2, 0x82, 0x62]).toString('utf8')), 'a\ufffdb', 'bytes that cut a multi-byte character were decoded as U+FFFD and stay so');
  t.equal(sanitizeLabelValue('bad\ud800x'), 'bad\ufffdx', 'a lone surrogate becomes U+FFFD');
  const long = sanitizeLabelValue('x'.repeat(1000));
  t.equal(long.length, 257);
  t.ok(long.endsWith('…'));
  const huge = sanitizeLabelValue('y'.repeat(4 * 1024 * 1024));
  t.equal(huge, `${'y'.repeat(256)}…`, 'megabytes are cut to 256 characters and the mark of the cut');
  const cutAtPair = sanitizeLabelValue(`${'x'.repeat(256)}😀tail`);
  t.equal(cutAtPair, `${'x'.repeat(256)}…`, 'a pair just past the limit is cut whole, not left as a lone surrogate');
  const emoji = sanitizeLabelValue(`${'x'.repeat(255)}😀`);
  t.equal(Buffer.from(emoji, 'utf8').toString('utf8'), emoji, 'a surrogate pair is not cut in half');
});
