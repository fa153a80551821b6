// Self-test of the pods helper on the real kernel: the fixtures other
// integration tests build on must themselves be right and leave nothing behind.
import t from 'tap';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { cgroup2Root } from '../helpers/cgroups.js';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout } from 'node:timers/promises';

function leftovers(pod: Pod): string[] {
  return [
    existsSync(`/run/netns/${pod.netns}`) && `netns ${pod.netns}`,
    existsSync(`/sys/class/net/${pod.hostVeth}`) && `veth ${pod.hostVeth}`,
    existsSync(pod.cgroupDir) && `cgroup ${pod.cgroupDir}`,
  ].filter((x): x is string => typeof x === 'string');
}

/** A killed orphan may stay a zombie until its new parent reaps it: that counts as gone. */
function running(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0] !== 'Z';
  } catch {
    return false;
  }
}

if (requirePrivileges(t, 'the pods helper')) {
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());

  const a = await net.addPod({ layout: 'systemd', qos: 'burstable' });
  const b = await net.addPod({ layout: 'plain', name: 'standalone' });
  const c = await net.addPod({ layout: 'cgroupfs', qos: 'guaranteed' });

  t.test('cgroup paths look like the kubelet\'s', async (t) => {
    t.match(a.cgroupPath, new RegExp(`^/probepilot-test/\\d+-${net.runId}/kubepods\\.slice/kubepods-burstable\\.slice/kubepods-burstable-pod${a.uid.replaceAll('-', '_')}\\.slice/cri-containerd-${a.containerId}\\.scope$`));
    t.match(b.cgroupPath, new RegExp(`^/probepilot-test/\\d+-${net.runId}/standalone$`));
    t.match(c.cgroupPath, new RegExp(`/kubepods/pod${c.uid}/${c.containerId}$`));
    t.equal(`${cgroup2Root()}${a.cgroupPath}`, a.cgroupDir);
    t.match(a.containerId, /^[0-9a-f]{64}$/);
  });

  t.test('the pause process lives in the pod cgroup and netns', async (t) => {
    for (const pod of [a, b, c]) {
      const cgroupLine = readFileSync(`/proc/${pod.pausePid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
      t.equal(cgroupLine, `0::${pod.cgroupPath}`, `${pod.name} pause cgroup`);
      t.equal(statSync(`/proc/${pod.pausePid}/ns/net`).ino, statSync(`/run/netns/${pod.netns}`).ino, `${pod.name} pause netns`);
      const inNs = await pod.exec('ip', ['-o', 'addr', 'show', 'dev', 'eth0']);
      t.match(inNs.stdout, pod.ipv4, `${pod.name} has its IPv4 address on eth0`);
      t.match(inNs.stdout, pod.ipv6, `${pod.name} has its IPv6 address on eth0`);
    }
  });

  t.test('processes started with run/exec join the pod cgroup', async (t) => {
    const res = await b.exec('cat', ['/proc/self/cgroup']);
    t.equal(res.code, 0);
    t.match(res.stdout, `0::${b.cgroupPath}\n`);
  });

  t.test('counters stay still when no test traffic flows', async (t) => {
    const before = [a, b, c].map((p) => p.vethStats());
    await setTimeout(1500);
    t.same([a, b, c].map((p) => p.vethStats()), before, 'no background packets (router solicitations, multicast reports)');
  });

  t.test('pods on the bridge reach each other over IPv4 and IPv6', async (t) => {
    const before = a.vethStats();
    for (const [from, to] of [[a, b], [b, c]] as const) {
      const v4 = await from.exec('ping', ['-c', '5', '-i', '0.2', '-W', '2', to.ipv4], { timeoutMs: 20_000 });
      t.match(v4.stdout, / 0% packet loss/, `${from.name} -> ${to.ipv4}`);
      const v6 = await from.exec('ping', ['-6', '-c', '5', '-i', '0.2', '-W', '2', to.ipv6], { timeoutMs: 20_000 });
      t.match(v6.stdout, / 0% packet loss/, `${from.name} -> ${to.ipv6}`);
    }
    const gw = await a.exec('ping', ['-c', '1', '-W', '2', net.gatewayIpv4], { timeoutMs: 10_000 });
    t.equal(gw.code, 0, 'the host answers on the bridge address');
    const after = a.vethStats();
    // 10 echo requests of 84 bytes (IPv4) / 104 bytes (IPv6) at least left a's eth0 through the host veth.
    t.ok(after.rxPackets - before.rxPackets >= 10, 'host veth counted the pod\'s packets');
    t.ok(after.rxBytes - before.rxBytes >= 5 * 98 + 5 * 118, 'host veth counted the pod\'s bytes');
  });

  t.test('destroy removes everything, also a daemon left in the netns, and is idempotent', async (t) => {
    // Daemonized: outside the pod cgroup, kept alive only by the netns.
    const daemon = await c.exec('iperf3', ['-s', '-D', '-p', '5999']);
    t.equal(daemon.code, 0, 'iperf3 -D started');
    await c.destroy();
    t.same(leftovers(c), [], 'pod c is gone');
    await c.destroy();
    await net.destroy();
    for (const pod of net.pods) t.same(leftovers(pod), [], `${pod.name} is gone`);
    t.notOk(existsSync(`/sys/class/net/${net.bridge}`), 'bridge is gone');
    t.notOk(existsSync(net.cgroupDir), 'run cgroup is gone');
    await net.destroy();
  });

  t.test('a crashed run is swept by the next createTestNetwork', async (t) => {
    const helper = new URL('../helpers/pods.js', import.meta.url).href;
    const script = `
      const { createTestNetwork } = await import(${JSON.stringify(helper)});
      const net = await createTestNetwork();
      const pod = await net.addPod();
      console.log(JSON.stringify({ netns: pod.netns, hostVeth: pod.hostVeth, bridge: net.bridge, cgroupDir: net.cgroupDir, pausePid: pod.pausePid }));
      setInterval(() => {}, 1000);`;
    const crashing = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [line] = (await once(crashing.stdout, 'data')) as [Buffer];
    const left = JSON.parse(line.toString()) as { netns: string; hostVeth: string; bridge: string; cgroupDir: string; pausePid: number };
    crashing.kill('SIGKILL');
    await once(crashing, 'exit');
    t.ok(existsSync(`/run/netns/${left.netns}`), 'the crashed run left its netns behind');

    const next = await createTestNetwork();
    t.teardown(() => next.destroy());
    t.notOk(existsSync(`/run/netns/${left.netns}`), 'stale netns removed');
    t.notOk(existsSync(`/sys/class/net/${left.hostVeth}`), 'stale veth removed');
    t.notOk(existsSync(`/sys/class/net/${left.bridge}`), 'stale bridge removed');
    t.notOk(existsSync(left.cgroupDir), 'stale cgroups removed');
    t.notOk(running(left.pausePid), 'stale pause process killed');
  });
}
