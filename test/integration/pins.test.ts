// Counters that survive restarts and coexistence with a CNI's TC program,
// against the kernel: a SIGKILLed agent's pinned links keep counting, the
// restarted agent adopts them and its counters continue (oracle: datagrams
// sent, veth statistics); a changed map layout is re-created with a log
// line; --cleanup removes what is ours and leaves another program working.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { bpfObjectDir, loadAddon, type BpfObject, type TcAttachMode } from '../../src/bpf/addon.js';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod, type TestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { collect, execChecked } from '../helpers/proc.js';
import { compileWorkload } from '../helpers/workload.js';
import { cgroup2Root } from '../helpers/cgroups.js';
import { waitFor } from '../helpers/wait.js';

// Five agents' lifetimes per case on real veths: longer than the suite's default per file on a loaded machine.
t.setTimeout(900_000);

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');
const okPort = 40_001;
const dropPort = 40_002;

const receiverScript = `
import json, select, socket, sys, time
socks = {}
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); socks[s] = port
counts = {str(p): 0 for p in socks.values()}
print("ready", flush=True)
# Until 2 s after the last datagram; a sender slow to start (a loaded machine) gets 30 s for its first.
started, last = time.time(), None
while (time.time() - last < 2.0) if last else (time.time() - started < 30.0):
    ready, _, _ = select.select(list(socks), [], [], 0.2)
    for s in ready:
        s.recv(2048); counts[str(socks[s])] += 1; last = time.time()
print(json.dumps(counts), flush=True)
`;

const senderScript = `
import socket, sys, time
dst, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(b"x" * 100, (dst, port)); time.sleep(gap)
`;

/** Datagrams received per port by a receiver in `pod` while `traffic` runs (it stops 2 s after the last one, or after 30 s of none). */
async function receive(pod: Pod, ports: readonly number[], traffic: () => Promise<void>): Promise<Record<string, number>> {
  const child = pod.run('python3', ['-c', receiverScript, ...ports.map(String)]);
  const result = collect(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('ready') && resolve());
    child.once('exit', () => reject(new Error('receiver exited early')));
  });
  await traffic();
  const { stdout, code } = await result;
  if (code !== 0) throw new Error(`receiver failed (${code})`);
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, number>;
}

async function send(from: Pod, to: Pod, port: number, count: number, gapSeconds = 0.001): Promise<void> {
  const { code, stderr } = await from.exec('python3', ['-c', senderScript, to.ipv4, String(port), String(count), String(gapSeconds)]);
  if (code !== 0) throw new Error(`sender failed: ${stderr}`);
}

function pinsEnv(net: TestNetwork, root: string, stateDir: string, mode: TcAttachMode): NodeJS.ProcessEnv {
  return {
    ...onlyCollectors('network'),
    PROBEPILOT_PINS_ENABLED: 'true',
    PROBEPILOT_PINS_ROOT: root,
    PROBEPILOT_PINS_STATE_DIR: stateDir,
    PROBEPILOT_COLLECTORS_NETWORK_ATTACH_MODE: mode,
    PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
    PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.2',
    PROBEPILOT_COLLECTORS_NETWORK_FLOWS_ENABLED: 'false',
  };
}

function runCleanup(env: NodeJS.ProcessEnv): { code: number | null; logs: Array<Record<string, unknown>> } {
  const res = spawnSync(process.execPath, [cli, 'agent', '--cleanup'], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 60_000 });
  const logs = res.stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code: res.status, logs };
}

async function udpPackets(agent: AgentProcess, pod: Pod, direction: 'ingress' | 'egress'): Promise<number> {
  return sumSamples(parseExposition(await agent.metrics()), 'probepilot_network_packets_total', { cgroup: pod.cgroupPath, direction, protocol: 'udp' });
}

async function allPackets(agent: AgentProcess, pod: Pod, direction: 'ingress' | 'egress'): Promise<number> {
  return sumSamples(parseExposition(await agent.metrics()), 'probepilot_network_packets_total', { cgroup: pod.cgroupPath, direction });
}

function attached(agent: AgentProcess, pod: Pod) {
  return agent.waitForLog((l) => l.interface === pod.hostVeth && l.workload === pod.cgroupPath, `attach to ${pod.hostVeth}`);
}

function ifindexOf(name: string): number {
  return Number(execFileSync('cat', [`/sys/class/net/${name}/ifindex`], { encoding: 'utf8' }).trim());
}

function mapGone(id: number): boolean {
  return spawnSync('bpftool', ['map', 'show', 'id', String(id)], { stdio: 'ignore' }).status !== 0;
}

function scratch(t: Test, runId: string): { root: string; stateDir: string } {
  const root = `/sys/fs/bpf/pp-test-${runId}-${process.pid}`;
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'pp-state-'));
  t.teardown(() => {
    rmSync(root, { recursive: true, force: true });
    rmSync(stateDir, { recursive: true, force: true });
  });
  return { root, stateDir };
}

/** Two pods on a test network and the environment of a network-only agent with its own pin root and state directory, cleaned up after the test. */
async function twoPodsWithPins(t: Test, mode: TcAttachMode) {
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'plain' });
  const b = await net.addPod({ layout: 'plain' });
  const { root, stateDir } = scratch(t, net.runId);
  const env = pinsEnv(net, root, stateDir, mode);
  t.teardown(() => void runCleanup(env));
  return { a, b, root, env };
}

for (const mode of ['tcx', 'clsact'] as const) t.test(`restart in ${mode} mode: a SIGKILLed agent loses no count and its counters do not reset; an incompatible layout is re-created; --cleanup removes ours`, async (t) => {
  if (!requirePrivileges(t, 'pinned maps and links on real veths')) return;
  const { a, b, root, env } = await twoPodsWithPins(t, mode);

  const first = await startAgent({ env });
  await attached(first, a);
  await attached(first, b);
  await send(a, b, okPort, 100);
  const before = await udpPackets(first, a, 'egress');
  t.equal(before, 100, 'the first agent counted the first 100 datagrams');
  const vethBefore = a.vethStats();
  const totalBefore = await allPackets(first, a, 'egress');

  // 600 datagrams over ~1.5 s; the agent dies with SIGKILL in the middle and is down for the rest.
  const datagrams = 600;
  const traffic = send(a, b, okPort, datagrams, 0.0025);
  await sleep(400);
  first.child.kill('SIGKILL');
  await once(first.child, 'exit');
  await traffic;

  const second = await startAgent({ env });
  t.teardown(() => second.stop());
  await attached(second, a);
  const after = await udpPackets(second, a, 'egress');
  const vethAfter = a.vethStats();
  const totalAfter = await allPackets(second, a, 'egress');
  t.ok(after >= before, `no counter reset: ${before} UDP packets before the kill, ${after} after the restart`);
  t.equal(after - before, datagrams, `every datagram counted once, those sent while the agent was down included (${datagrams} sent, exact)`);
  const vethDelta = vethAfter.rxPackets - vethBefore.rxPackets;
  t.ok(Math.abs(totalAfter - totalBefore - vethDelta) <= 2, `all of pod a's packets: ${totalAfter - totalBefore} counted, veth ${vethDelta} (tolerance 2 for IPv6 neighbour discovery between the reads)`);
  const replaced = second.logs.filter((l) => /attaching anew|incompatible layout|updated in place/.test(l.msg));
  t.same(replaced, [], 'the identical program\'s links were kept, the maps reused');

  // A changed capacity is a new layout of net_traffic: re-created, with a line naming it.
  t.equal(await second.stop(), 0, 'SIGTERM exits 0');
  t.ok(existsSync(path.join(root, 'net/maps-v1/net_traffic')), 'the stopped agent left its maps pinned');
  const third = await startAgent({ env: { ...env, PROBEPILOT_COLLECTORS_NETWORK_MAX_ENTRIES: '4096' } });
  t.teardown(() => third.stop());
  const recreated = await third.waitForLog((l) => l.msg.includes('incompatible layout') && l.map === 'net_traffic', 'the re-created net_traffic log line');
  t.match(String(recreated.reason), /max entries 65536 pinned, 4096 wanted/, `says why: ${String(recreated.reason)}`);
  const updated = third.logs.filter((l) => /attaching anew|updated in place/.test(l.msg));
  t.ok(updated.length > 0 && updated.every((l) => l.msg.includes('updated in place')), mode === 'tcx' ? 'the old TCX links now run the new program (bpf_link_update)' : 'the old clsact filters now run the new program (replaced on their handle and priority)', { updated });
  await attached(third, a);
  await send(a, b, okPort, 50);
  await sleep(300);
  t.equal(await udpPackets(third, a, 'egress'), 50, 'the new map counts from zero, and only once (the old program was replaced, not doubled)');

  const trafficMapId = loadAddon().pinnedMapInfo(path.join(root, 'net/maps-v1/net_traffic'))!.id;
  t.equal(await third.stop(), 0, 'SIGTERM exits 0');
  const cleaned = runCleanup(env);
  t.equal(cleaned.code, 0, '--cleanup exits 0');
  t.notOk(existsSync(root), 'no pin of ours left');
  t.ok(mapGone(trafficMapId), 'the traffic map is freed: no program of ours references it any more');
  for (const pod of [a, b]) {
    for (const direction of ['ingress', 'egress'] as const) t.same(loadAddon().listTcFilters(ifindexOf(pod.hostVeth), direction), [], `no clsact filter left on ${pod.hostVeth} ${direction}`);
  }
});

for (const mode of ['tcx', 'clsact'] as const) {
  t.test(`coexistence with a CNI program in ${mode} mode: its verdicts hold, our counts are right, our cleanup leaves it working`, async (t) => {
    if (!requirePrivileges(t, 'TC programs side by side on real veths')) return;
    const { a, b, root, env } = await twoPodsWithPins(t, mode);

    // The "CNI" is there first, on the way into pod b.
    const cni: BpfObject = new (loadAddon().BpfObject)(path.join(bpfObjectDir, 'cni_drop.bpf.o'));
    t.teardown(() => cni.close());
    const port = Buffer.alloc(2);
    port.writeUInt16LE(dropPort);
    cni.setConst('drop_port', port);
    cni.load();
    cni.attachTc('cni_drop_udp_port', ifindexOf(b.hostVeth), 'egress', mode);

    const agent = await startAgent({ env });
    t.teardown(() => agent.stop());
    await attached(agent, a);
    await attached(agent, b);
    const sentBefore = await udpPackets(agent, a, 'egress');
    const receivedBefore = await udpPackets(agent, b, 'ingress');
    const vethBefore = b.vethStats();
    const counts = await receive(b, [okPort, dropPort], async () => {
      await send(a, b, okPort, 200);
      await send(a, b, dropPort, 100);
    });
    t.same(counts, { [okPort]: 200, [dropPort]: 0 }, 'the CNI dropped every datagram to its port and passed the others');
    t.equal((await udpPackets(agent, a, 'egress')) - sentBefore, 300, 'pod a sent 300 datagrams: all counted on its veth');
    const received = (await udpPackets(agent, b, 'ingress')) - receivedBefore;
    const vethTx = b.vethStats().txPackets - vethBefore.txPackets;
    // TCX appends us after the CNI: we see what it passed. A clsact filter added later gets a lower
    // priority number, so ours runs first and also sees what the CNI then drops.
    const expected = mode === 'tcx' ? 200 : 300;
    t.equal(received, expected, `pod b's ingress: ${received} UDP datagrams counted (${mode}: ${expected})`);
    t.ok(Math.abs(received - (mode === 'tcx' ? vethTx : vethTx + 100)) <= 2, `against the veth: ${vethTx} packets left b's host veth (tolerance 2 for neighbour discovery)`);

    // Disabling the collector at run time takes ours out, and only ours.
    const disabled = await fetch(`${agent.url}/api/v1/collectors/network`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"enabled":false}' });
    t.equal(disabled.status, 200, 'network collector disabled through the API');
    t.notOk(existsSync(path.join(root, 'net')), 'its pins are gone with it');
    if (mode === 'clsact') {
      t.same(loadAddon().listTcFilters(ifindexOf(b.hostVeth), 'egress').map((f) => f.programId), cni.programs().map((p) => p.id), 'after the disable only the CNI\'s filter is on b\'s veth');
    }
    const whileDisabled = await receive(b, [okPort, dropPort], async () => {
      await send(a, b, okPort, 20);
      await send(a, b, dropPort, 20);
    });
    t.same(whileDisabled, { [okPort]: 20, [dropPort]: 0 }, 'with our collector disabled the CNI program still holds its verdicts');
    const enabled = await fetch(`${agent.url}/api/v1/collectors/network`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"enabled":true}' });
    t.equal(enabled.status, 200, 'enabled again (a fresh collector, pins re-created)');

    t.equal(await agent.stop(), 0, 'SIGTERM exits 0');
    t.ok(existsSync(path.join(root, 'net')), 'the stopped agent left its pins');
    const cleaned = runCleanup(env);
    t.equal(cleaned.code, 0, '--cleanup exits 0');
    t.notOk(existsSync(root), 'no pin of ours left');
    if (mode === 'clsact') {
      const filters = loadAddon().listTcFilters(ifindexOf(b.hostVeth), 'egress');
      t.same(filters.map((f) => f.programId), cni.programs().map((p) => p.id), 'only the CNI\'s filter is left on b\'s veth');
      t.same(loadAddon().listTcFilters(ifindexOf(a.hostVeth), 'ingress'), [], 'nothing left on a\'s veth');
      t.ok(cleaned.logs.some((l) => l.msg === 'removed the clsact qdisc the agent created'), 'the qdisc the agent created on a\'s veth is removed');
      t.ok(execFileSync('tc', ['qdisc', 'show', 'dev', b.hostVeth], { encoding: 'utf8' }).includes('clsact'), 'the CNI\'s qdisc stays');
    }
    const afterCleanup = await receive(b, [okPort, dropPort], async () => {
      await send(a, b, okPort, 20);
      await send(a, b, dropPort, 20);
    });
    t.same(afterCleanup, { [okPort]: 20, [dropPort]: 0 }, 'after our cleanup the CNI program is still attached and its verdicts hold');
  });
}

t.test('restart of a tracepoint collector: pinned links keep counting while it is down, and a series holding a gone cgroup\'s final counts does not go backwards', async (t) => {
  if (!requirePrivileges(t, 'syscalls collector with pins')) return;
  const binary = await compileWorkload(t, 'getppid', `
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) { long n = atol(argv[1]); for (long i = 0; i < n; i++) syscall(SYS_getppid); return 0; }
`);
  const runId = `${process.pid}`;
  const { root, stateDir } = scratch(t, runId);
  const env = {
    ...onlyCollectors('syscalls'),
    PROBEPILOT_PINS_ENABLED: 'true',
    PROBEPILOT_PINS_ROOT: root,
    PROBEPILOT_PINS_STATE_DIR: stateDir,
    PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'getppid',
  };
  t.teardown(() => void runCleanup(env));
  // A service restarted in place: the same cgroup path with a new cgroup id, so one series fed by two kernel entries.
  const cgroupDir = path.join(cgroup2Root(), `pp-pins-${runId}`);
  const cgroupPath = `/${path.basename(cgroupDir)}`;
  t.teardown(() => existsSync(cgroupDir) && rmdirSync(cgroupDir));
  const triggerDirs = [1, 2].map((i) => `${cgroupDir}-walk${i}`);
  t.teardown(() => triggerDirs.forEach((d) => existsSync(d) && rmdirSync(d)));
  const runIn = (n: number, dir = cgroupDir) => execChecked('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$1" "$2"', dir, binary, String(n)]);
  // The agent walks the cgroup tree (at most every 2 s) when it meets an id it does not know: a process in a new cgroup makes it walk.
  const walk = async (agent: AgentProcess, dir: string) => {
    await sleep(2100);
    mkdirSync(dir);
    await runIn(10, dir);
    await agent.metrics();
  };
  const calls = async (agent: AgentProcess) => sumSamples(parseExposition(await agent.metrics()), 'probepilot_syscalls_total', { cgroup: cgroupPath, syscall: 'getppid' });
  const tolerance = 0.001;
  const near = (actual: number, expected: number, what: string) =>
    t.ok(Math.abs(actual - expected) <= expected * tolerance, `${what}: ${actual} counted, ${expected} made (tolerance ${tolerance * 100} %)`);

  const first = await startAgent({ env });
  mkdirSync(cgroupDir);
  await runIn(50_000);
  near(await calls(first), 50_000, 'first cgroup');
  rmdirSync(cgroupDir);
  await walk(first, triggerDirs[0]!);
  // Scrapes until the agent saw the cgroup go: its final counts then live in the series and the state file only.
  const statePath = path.join(stateDir, 'syscalls.json');
  await waitFor(async () => (await calls(first), existsSync(statePath) && readFileSync(statePath, 'utf8').includes(cgroupPath)), { timeoutMs: 15_000, what: 'the retired entry saved' });
  mkdirSync(cgroupDir);
  // Named before it makes calls: counts seen under no name would stay with the node.
  await walk(first, triggerDirs[1]!);
  await runIn(30_000);
  near(await calls(first), 80_000, 'both cgroups of the same path, one series');

  first.child.kill('SIGKILL');
  await once(first.child, 'exit');
  await runIn(20_000); // while no agent runs

  const second = await startAgent({ env });
  t.teardown(() => second.stop());
  near(await calls(second), 100_000, 'after the SIGKILL and restart: the retired counts, the live entry, and the calls made while the agent was down');
  t.same(second.logs.filter((l) => /attaching anew|incompatible layout|updated in place/.test(l.msg)), [], 'links kept, maps reused');

  // Another tracked list changes what the key slots mean (a new layout) and the programs' read-only data;
  // raw tracepoint links cannot be updated in place, so they are replaced with a warning.
  t.equal(await second.stop(), 0, 'SIGTERM exits 0');
  const third = await startAgent({ env: { ...env, PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'getppid,close' } });
  t.teardown(() => third.stop());
  const recreated = await third.waitForLog((l) => l.msg.includes('incompatible layout') && l.map === 'syscall_stats', 'the re-created syscall map');
  t.match(String(recreated.reason), /^layout maps-v1-\w+ pinned, maps-v1-\w+ wanted$/, `says why: ${String(recreated.reason)}`);
  const replaced = third.logs.filter((l) => l.msg.startsWith('pinned link cannot be updated in place'));
  t.ok(replaced.length > 0 && replaced.every((l) => /not ours|read-only data/.test(String(l.reason))), 'the old raw tracepoint links were replaced, saying why', { replaced });
  await runIn(5_000);
  near(await calls(third), 5_000, 'the new layout counts from zero, once');

  t.equal(await third.stop(), 0, 'SIGTERM exits 0');
  t.equal(runCleanup(env).code, 0, '--cleanup exits 0');
  t.notOk(existsSync(root), 'no pin left');
  t.notOk(existsSync(statePath), 'no state file left');
});
