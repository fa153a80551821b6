// Fault injection against the real kernel: the agent SIGKILLed in the middle
// of a scrape and restarted, interfaces that vanish while it attaches, a full
// kernel map, an OTLP endpoint that accepts and never answers, a Kubernetes
// API server that comes and goes. Each case checks numbers against an oracle
// (veth statistics, calls made, the fds the agent holds, its RSS) and that the
// agent keeps serving.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, existsSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sampleValue, sumSamples } from '../helpers/exposition.js';
import { execChecked, trueLoopScript } from '../helpers/proc.js';
import { compileWorkload } from '../helpers/workload.js';
import { cgroup2Root } from '../helpers/cgroups.js';
import { fillSyscallStats, syntheticWorkloads } from '../helpers/syscall-table.js';
import { OtlpReceiver } from '../helpers/otlp-receiver.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { waitFor } from '../helpers/wait.js';
import { envName } from '../../src/config.js';

/** argv[1] getppid calls, each a real syscall (libc may cache getppid). */
const getppidLoop = `
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) { long n = atol(argv[1]); for (long i = 0; i < n; i++) syscall(SYS_getppid); return 0; }
`;
import { projectRoot } from '../helpers/helm.js';

t.setTimeout(600_000);

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

async function scrape(agent: AgentProcess) {
  return parseExposition(await agent.metrics());
}

function egressPacketsIn(families: ReturnType<typeof parseExposition>, pod: Pod): number {
  return sumSamples(families, 'probepilot_network_packets_total', { cgroup: pod.cgroupPath, direction: 'egress' });
}

async function egressPackets(agent: AgentProcess, pod: Pod): Promise<number> {
  return egressPacketsIn(await scrape(agent), pod);
}

function attached(agent: AgentProcess, pod: Pod) {
  return agent.waitForLog((l) => l.interface === pod.hostVeth && l.workload === pod.cgroupPath, `attach to ${pod.hostVeth}`);
}

/** ICMP echo requests from `from` to `to`: `count` of them, `gap` seconds apart (root may go below 0.2 s). */
async function ping(from: Pod, to: Pod, count: number, gap: number): Promise<void> {
  const { code, stderr } = await from.exec('ping', ['-q', '-c', String(count), '-i', String(gap), '-W', '1', to.ipv4]);
  if (code !== 0) throw new Error(`ping failed (${code}): ${stderr}`);
}

/**
 * Pod a pings b `count` times; what the agent counted as a's egress packets over
 * it, against what a's host veth received, and the scrape taken after.
 */
async function pingCounted(agent: AgentProcess, a: Pod, b: Pod, count: number): Promise<{ counted: number; veth: number; families: ReturnType<typeof parseExposition> }> {
  const before = await egressPackets(agent, a);
  const vethBefore = a.vethStats().rxPackets;
  await ping(a, b, count, 0.01);
  const families = await scrape(agent);
  const counted = egressPacketsIn(families, a) - before;
  return { counted, veth: a.vethStats().rxPackets - vethBefore, families };
}

/** Open fds of a process whose fdinfo names a BPF link (TCX links, tracepoint links): what a leak of attachments would grow. */
function linkFds(pid: number): number {
  let links = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').includes('link_type:')) links++;
    } catch {
      // closed between the listing and the read
    }
  }
  return links;
}

function rssBytes(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

function up(families: ReturnType<typeof parseExposition>, collector: string): number | undefined {
  return sampleValue(families, 'probepilot_collector_up', { collector });
}

t.test('SIGKILL in the middle of a scrape, then a restart: the pins are reused, counts continue with no reset and no double counting', async (t) => {
  if (!requirePrivileges(t, 'pinned maps and links on real veths')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'plain' });
  const b = await net.addPod({ layout: 'plain' });
  const root = `/sys/fs/bpf/pp-faults-${net.runId}-${process.pid}`;
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'pp-faults-state-'));
  const env = {
    ...onlyCollectors('network'),
    PROBEPILOT_PINS_ENABLED: 'true',
    PROBEPILOT_PINS_ROOT: root,
    PROBEPILOT_PINS_STATE_DIR: stateDir,
    PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
    PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.2',
    PROBEPILOT_COLLECTORS_NETWORK_FLOWS_ENABLED: 'false',
  };
  t.teardown(() => {
    spawnSync(process.execPath, [cli, 'agent', '--cleanup'], { env: { ...process.env, ...env }, stdio: 'ignore', timeout: 60_000 });
    rmSync(root, { recursive: true, force: true });
    rmSync(stateDir, { recursive: true, force: true });
  });

  const first = await startAgent({ env });
  await attached(first, a);
  await ping(a, b, 50, 0.01);
  const before = await egressPackets(first, a);
  const vethBefore = a.vethStats().rxPackets;
  t.ok(before >= 50, `the first agent counted pod a's pings (${before} packets)`);

  // Pings for ~3 s; scrapes back to back; the kill lands while one is in flight.
  const traffic = ping(a, b, 300, 0.01);
  let scrapes = 0;
  let stopScraping = false;
  const scraping = (async () => {
    while (!stopScraping) {
      await first.metrics().then(() => scrapes++, () => (stopScraping = true));
    }
  })();
  await sleep(800);
  const inFlight = fetch(`${first.url}/metrics`).then(
    (r) => r.text().then(() => 'answered', () => 'cut off mid-body'),
    () => 'cut off',
  );
  await sleep(5);
  first.child.kill('SIGKILL');
  await once(first.child, 'exit');
  stopScraping = true;
  await scraping;
  t.ok(scrapes > 0, `${scrapes} scrapes answered before the kill; the one sent 5 ms before it: ${await inFlight}`);
  await traffic;

  const second = await startAgent({ env });
  t.teardown(() => second.stop());
  await attached(second, a);
  const after = await egressPackets(second, a);
  const vethDelta = a.vethStats().rxPackets - vethBefore;
  t.ok(after >= before, `no counter reset: ${before} packets before the kill, ${after} after the restart`);
  t.ok(Math.abs(after - before - vethDelta) <= 2, `every packet counted once, those sent while no agent ran included: ${after - before} counted, veth ${vethDelta} (tolerance 2 for neighbour discovery between the reads)`);
  const pinned = second.logs.find((l) => l.msg === 'pinned maps');
  t.same(pinned?.recreated, [], 'no map re-created');
  t.ok(Array.isArray(pinned?.reused) && (pinned.reused as string[]).includes('net_traffic'), 'net_traffic reused', { pinned });
  t.equal(sampleValue(await scrape(second), 'probepilot_pinned_map_reused', { collector: 'network', map: 'net_traffic' }), 1, 'and the metric says so');
  t.same(second.logs.filter((l) => /attaching anew|incompatible layout/.test(l.msg)), [], 'the links were adopted, none attached twice');
  t.equal(second.stderr(), '', 'nothing on stderr');
});

t.test('interfaces created and deleted in a tight loop while the agent rescans every 0.1 s: no crash, no leaked link, the collector stays up and counts the stable pod right', async (t) => {
  if (!requirePrivileges(t, 'TC programs on real veths')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'plain' });
  const b = await net.addPod({ layout: 'plain' });
  // pp<run>c<i>a / pp<run>c<i>b: matched by the include pattern, like the pods' veths.
  const churnName = (i: number) => `pp${net.runId}c${i}a`;
  const slots = 8;
  t.teardown(() => {
    for (let i = 0; i < slots; i++) spawnSync('ip', ['link', 'del', churnName(i)], { stdio: 'ignore' });
  });
  const agent = await startAgent({
    env: {
      ...onlyCollectors('network'),
      PROBEPILOT_COLLECTORS_NETWORK_ATTACH_MODE: 'tcx',
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}*`,
      PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.1',
      PROBEPILOT_COLLECTORS_NETWORK_FLOWS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());
  await attached(agent, a);
  await attached(agent, b);
  const pid = agent.child.pid!;
  const linksBefore = linkFds(pid);
  t.equal(linksBefore, 4, 'two veths, two TCX links each');
  const before = await egressPackets(agent, a);
  const vethBefore = a.vethStats().rxPackets;

  // ~8 s of churn: each pair lives a few milliseconds, often less than one rescan, sometimes vanishing mid-attach.
  const prefix = `pp${net.runId}c`;
  const script = `end=$(($(date +%s) + 8)); n=0
while [ "$(date +%s)" -lt "$end" ]; do i=$((n % ${slots}))
  ip link add ${prefix}\${i}a type veth peer name ${prefix}\${i}b 2>/dev/null
  ip link set ${prefix}\${i}a up 2>/dev/null
  [ $((n % 3)) -eq 0 ] && sleep 0.05
  ip link del ${prefix}\${i}a 2>/dev/null
  n=$((n + 1)); done; echo $n`;
  let scrapes = 0;
  let churning = true;
  const scraping = (async () => {
    while (churning) {
      await agent.metrics();
      scrapes++;
      await sleep(50);
    }
  })();
  const [cycles] = await Promise.all([execChecked('sh', ['-c', script], { timeoutMs: 60_000 }), ping(a, b, 200, 0.02)]);
  churning = false;
  await scraping;
  t.ok(Number(cycles) >= 10, `${Number(cycles)} veth pairs created and deleted, ${scrapes} scrapes answered meanwhile`);

  // The last rescans see the churn's interfaces gone.
  await sleep(1000);
  const families = await scrape(agent);
  t.equal(agent.child.exitCode, null, 'the agent is alive');
  t.equal(up(families, 'network'), 1, 'probepilot_collector_up{collector="network"} stayed 1');
  t.equal(sumSamples(families, 'probepilot_network_interfaces_attached'), 2, 'attached to the two pods\' veths only');
  t.equal(linkFds(pid), linksBefore, `link fds held by the agent: ${linksBefore} before, the same after (none leaked for the deleted interfaces)`);
  const after = await egressPackets(agent, a);
  const vethDelta = a.vethStats().rxPackets - vethBefore;
  t.ok(Math.abs(after - before - vethDelta) <= 2, `pod a during the churn: ${after - before} packets counted, veth ${vethDelta} (tolerance 2)`);
  const attachedLines = agent.logs.filter((l) => l.msg === 'attached to interface' && String(l.interface).startsWith(prefix)).length;
  const detachedLines = agent.logs.filter((l) => l.msg === 'detached from interface' && String(l.interface).startsWith(prefix)).length;
  t.equal(detachedLines, attachedLines, `every churn interface attached (${attachedLines}) was detached again (${detachedLines})`);
  t.same(agent.logs.filter((l) => l.level === 'error' || l.level === 'fatal'), [], 'no error logged');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});

t.test('a full syscall map: the drop counter rises by the calls that found no room, the agent keeps collecting and counts what fits exactly', async (t) => {
  if (!requirePrivileges(t, 'the syscalls collector')) return;
  const binary = await compileWorkload(t, 'getppid-full', getppidLoop);
  const base = path.join(cgroup2Root(), `pp-faults-full-${process.pid}`);
  const fits = `${base}-fits`;
  const late = `${base}-late`;
  for (const dir of [fits, late]) {
    mkdirSync(dir);
    t.teardown(() => existsSync(dir) && rmdirSync(dir));
  }
  const runIn = (dir: string, n: number) => execChecked('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$1" "$2"', dir, binary, String(n)]);
  const agent = await startAgent({
    env: { ...onlyCollectors('syscalls'), PROBEPILOT_COLLECTORS_SYSCALLS_MAX_ENTRIES: '1024', PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'getppid' },
  });
  t.teardown(() => agent.stop());
  const calls = async (dir: string) => sumSamples(await scrape(agent), 'probepilot_syscalls_total', { cgroup: `/${path.basename(dir)}`, syscall: 'getppid' });
  const dropped = async () => sampleValue(await scrape(agent), 'probepilot_collector_events_dropped_total', { collector: 'syscalls', reason: 'map_full' }) ?? 0;

  await runIn(fits, 10_000);
  // The agent walks the cgroup tree at most every 2 s to name a new id.
  await waitFor(async () => (await calls(fits)) > 0, { timeoutMs: 15_000, what: 'the first cgroup named' });
  t.equal(await calls(fits), 10_000, 'before the map is full: 10000 calls made, counted');

  // Synthetic workloads (real empty cgroups) fill every free entry: bpftool stops at the first update that finds no room.
  const workloads = syntheticWorkloads(30);
  t.teardown(() => workloads.remove());
  const filled = await fillSyscallStats(agent, workloads).then(
    () => false,
    (err: unknown) => /E2BIG|No space|Argument list too long|full/i.test(String(err)),
  );
  t.ok(filled, 'bpftool filled the map until an update found it full');
  const droppedBefore = await dropped();
  const made = 20_000;
  await runIn(late, made);
  await runIn(fits, 5_000);
  const droppedAfter = await dropped();
  t.ok(droppedAfter - droppedBefore >= made, `drop counter rose by ${droppedAfter - droppedBefore}: at least the ${made} calls of a cgroup that found no room (others on the node are dropped too)`);
  t.equal(await calls(late), 0, 'the cgroup that found no room has no series (its counts are the dropped ones)');
  t.equal(await calls(fits), 15_000, 'the entry that fits keeps counting exactly: 10000 + 5000 calls');
  t.equal(up(await scrape(agent), 'syscalls'), 1, 'the collector stays up');
  t.equal(agent.child.exitCode, null, 'the agent is alive');
});

t.test('an OTLP endpoint that accepts connections and never answers for two minutes: memory stays bounded, failures are counted, pushes resume when it comes back', async (t) => {
  const sockets = new Set<Socket>();
  const blackHole = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  blackHole.listen(0, '127.0.0.1');
  await once(blackHole, 'listening');
  const port = (blackHole.address() as { port: number }).port;
  const closeBlackHole = async () => {
    for (const s of sockets) s.destroy();
    if (blackHole.listening) await new Promise((resolve) => blackHole.close(resolve));
  };
  t.teardown(closeBlackHole);
  const agent = await startAgent({
    env: {
      ...onlyCollectors(),
      [envName('otlp.endpoint')]: `http://127.0.0.1:${port}`,
      [envName('otlp.intervalSeconds')]: '0.5',
      [envName('otlp.timeoutSeconds')]: '1',
      [envName('otlp.retry.initialBackoffMs')]: '100',
      [envName('otlp.retry.maxBackoffMs')]: '500',
      [envName('otlp.retry.maxAttempts')]: '3',
    },
  });
  t.teardown(() => agent.stop());
  const results = async () => {
    const families = await scrape(agent);
    return (result: string) => sumSamples(families, 'probepilot_otlp_exports_total', { result });
  };

  // A warm-up under the black hole, then the RSS to compare with.
  await sleep(5_000);
  const pid = agent.child.pid!;
  const rssStart = rssBytes(pid);
  const early = await results();
  const failedEarly = early('failure') + early('dropped');
  // Two minutes: long enough for a leak per failed export (one every 0.5 s) to show against the V8 sawtooth.
  const blackHoledMs = 120_000;
  const rss: number[] = [];
  const held: number[] = [];
  for (let waited = 0; waited < blackHoledMs; waited += 2_000) {
    await sleep(2_000);
    rss.push(rssBytes(pid));
    held.push(sockets.size);
  }
  t.comment(`connections held open to the black hole, every 2 s: ${held.join(' ')}`);
  const late = await results();
  const failed = late('failure') + late('dropped') - failedEarly;
  t.equal(late('success'), 0, 'nothing succeeded against the black hole');
  // One export every 0.5 s, each given up after 3 attempts of 1 s (or abandoned past maxInFlight): at least one failure per ~4 s.
  t.ok(failed >= blackHoledMs / 4_000, `${failed} exports failed or were abandoned in ${blackHoledMs / 1000} s (at least ${blackHoledMs / 4_000})`);
  // Exports pending are capped by otlp.maxInFlight: no climb from the first half of the outage to the second
  // (V8 may still grow its heap once, anywhere, before a major collection), and little growth in all.
  const mb = (bytes: number) => Math.round(bytes / 2 ** 20);
  const firstHalf = Math.max(...rss.slice(0, rss.length / 2));
  const secondHalf = Math.max(...rss.slice(rss.length / 2));
  t.ok(secondHalf - firstHalf <= 16 * 2 ** 20, `RSS peak ${mb(firstHalf)} MB in the first half of the outage, ${mb(secondHalf)} MB in the second (bound: +16 MB)`);
  t.ok(Math.max(...rss) - rssStart <= 48 * 2 ** 20, `RSS ${mb(rssStart)} MB after the warm-up, peak ${mb(Math.max(...rss))} MB over ${blackHoledMs / 1000} s black-holed (bound: +48 MB)`);
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  // Before the fix a new connection joined the others every ~2 s for as long as the outage lasted (14 after 30 s).
  t.ok(Math.max(...held) <= 4, `connections held open to the black hole: at most ${Math.max(...held)} at a time (bound 4; they do not pile up); the agent holds ${fds} fds`);

  // The endpoint comes back, a real receiver on the same port.
  await closeBlackHole();
  const receiver = new OtlpReceiver();
  receiver.port = port;
  await receiver.start();
  t.teardown(() => receiver.stop());
  const back = Date.now();
  const resumed = await waitFor(() => receiver.exportAfter(back), { timeoutMs: 30_000, what: 'an export after the endpoint came back' });
  t.ok(resumed.points.length > 0, `pushes resumed ${((resumed.receivedAt - back) / 1000).toFixed(1)} s after the endpoint came back`);
  await waitFor(async () => (await results())('success') > 0, { timeoutMs: 10_000, what: 'a success counted' });
  t.equal(agent.child.exitCode, null, 'the agent is alive');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});

/** The capabilities charts/probepilot adds to the agent container (all others dropped), as its template lists them. */
function chartCapabilities(): string[] {
  const template = readFileSync(path.join(projectRoot, 'charts/probepilot/templates/daemonset.yaml'), 'utf8');
  const list = /\$caps := list ((?:"[A-Z_]+" ?)+)/.exec(template)?.[1];
  if (!list) throw new Error('no capability list in the chart\'s daemonset template');
  return [...list.matchAll(/"([A-Z_]+)"/g)].map((m) => m[1]!.toLowerCase());
}

/** setpriv as root: after the exec the process holds exactly the bounding set. */
function withCapabilities(caps: readonly string[]): string[] {
  return ['setpriv', `--bounding-set=-all,${caps.map((c) => `+${c}`).join(',')}`, `--inh-caps=-all`, '--'];
}

function collectorStates(families: ReturnType<typeof parseExposition>): Map<string, { up: number; reason: string }> {
  return new Map(
    families
      .find((f) => f.name === 'probepilot_collector_up')!
      .samples.map((s) => [s.labels.collector!, { up: s.value, reason: s.labels.reason ?? '' }]),
  );
}

t.test('only the capabilities the chart grants: every collector runs or names what it lacks; without NET_ADMIN the network collector names it', async (t) => {
  if (!requirePrivileges(t, 'BPF with a reduced capability set')) return;
  const caps = chartCapabilities();
  t.same(caps, ['bpf', 'perfmon', 'net_admin', 'sys_ptrace'], 'the chart adds BPF, PERFMON, NET_ADMIN and SYS_PTRACE');
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'plain' });
  const b = await net.addPod({ layout: 'plain' });
  const env = { PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`, PROBEPILOT_COLLECTORS_NETWORK_FLOWS_ENABLED: 'false' };

  const agent = await startAgent({ env, wrapper: withCapabilities(caps) });
  t.teardown(() => agent.stop());
  t.match(readFileSync(`/proc/${agent.child.pid}/status`, 'utf8'), /CapEff:\s*000000c000081000/, 'the agent holds exactly the chart\'s capabilities');
  await attached(agent, a);
  const { counted, veth, families } = await pingCounted(agent, a, b, 100);
  t.ok(Math.abs(counted - veth) <= 2, `network counts pod a with the chart's capabilities: ${counted} packets, veth ${veth} (tolerance 2)`);
  const states = collectorStates(families);
  for (const [name, { up: isUp, reason }] of states) {
    // No GPU and no custom probes here: those are down for what the machine lacks, not for a capability.
    if (name === 'gpu' || name === 'custom') continue;
    t.ok(isUp === 1 || /disabled in config/.test(reason), `${name}: up (${reason || 'no reason'})`);
  }
  t.equal(agent.stderr(), '', 'nothing on stderr');
  await agent.stop();

  const noNetAdmin = await startAgent({ env: { ...onlyCollectors('network', 'syscalls'), ...env }, wrapper: withCapabilities(caps.filter((c) => c !== 'net_admin')) });
  t.teardown(() => noNetAdmin.stop());
  const without = collectorStates(await scrape(noNetAdmin));
  t.equal(without.get('network')?.up, 0, 'without NET_ADMIN the network collector is down');
  t.match(without.get('network')?.reason, /lacks CAP_NET_ADMIN/, `and says why: ${without.get('network')?.reason}`);
  t.equal(without.get('syscalls')?.up, 1, 'the syscalls collector (no TC) still runs');
  t.ok(noNetAdmin.logs.some((l) => l.msg.startsWith('collector unavailable') && l.collector === 'network' && /lacks CAP_NET_ADMIN/.test(String(l.reason))), 'the log line names it too');
});

t.test('bpffs and tracefs missing and not mountable (a mount namespace without them, the chart\'s capabilities): pins fall back, tracepoint collectors say tracefs is missing, TC counting and /metrics work', async (t) => {
  if (!requirePrivileges(t, 'BPF in a mount namespace without bpffs and tracefs')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'plain' });
  const b = await net.addPod({ layout: 'plain' });
  const root = `/sys/fs/bpf/pp-faults-nofs-${net.runId}-${process.pid}`;
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'pp-faults-state-'));
  t.teardown(() => {
    rmSync(root, { recursive: true, force: true });
    rmSync(stateDir, { recursive: true, force: true });
  });
  const unmount = 'for m in /sys/fs/bpf /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do umount -l "$m" 2>/dev/null; done; exec "$@"';
  const agent = await startAgent({
    env: {
      ...onlyCollectors('network', 'syscalls'),
      PROBEPILOT_PINS_ENABLED: 'true',
      PROBEPILOT_PINS_ROOT: root,
      PROBEPILOT_PINS_STATE_DIR: stateDir,
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_COLLECTORS_NETWORK_FLOWS_ENABLED: 'false',
    },
    wrapper: ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', unmount, 'sh', ...withCapabilities(chartCapabilities())],
  });
  t.teardown(() => agent.stop());
  t.ok(agent.logs.some((l) => l.msg === 'cannot mount bpffs'), 'bpffs could not be mounted (no CAP_SYS_ADMIN), logged');
  t.ok(agent.logs.some((l) => l.msg === 'cannot mount tracefs'), 'nor tracefs, logged');
  t.ok(agent.logs.some((l) => l.level === 'warn' && String(l.msg).startsWith('pins.root is not on a bpffs')), 'pins fall back, with a log line');
  await attached(agent, a);
  const { counted, veth, families } = await pingCounted(agent, a, b, 100);
  t.ok(Math.abs(counted - veth) <= 2, `TC counting needs neither: ${counted} packets counted, veth ${veth} (tolerance 2)`);
  const states = collectorStates(families);
  t.equal(states.get('network')?.up, 1, 'network up');
  t.equal(states.get('syscalls')?.up, 0, 'syscalls down');
  t.match(states.get('syscalls')?.reason, /tracefs is not mounted/, `and says why: ${states.get('syscalls')?.reason}`);
  t.notOk(existsSync(root), 'nothing was pinned (the host\'s bpffs was not touched)');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});

t.test('cgroups deleted right after their work, while scrapes run: every call ends up under the cgroup or the node, none is lost, nothing crashes', async (t) => {
  if (!requirePrivileges(t, 'the syscalls collector')) return;
  const binary = await compileWorkload(t, 'getppid-short', getppidLoop);
  const agent = await startAgent({ env: { ...onlyCollectors('syscalls'), PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'getppid' } });
  t.teardown(() => agent.stop());
  const prefix = `pp-faults-short-${process.pid}-`;
  const ours = new RegExp(`^/${prefix}`);
  const totals = async () => {
    const families = await scrape(agent);
    return {
      named: sumSamples(families, 'probepilot_syscalls_total', { cgroup: ours, syscall: 'getppid' }),
      node: sumSamples(families, 'probepilot_syscalls_total', { cgroup: '/', syscall: 'getppid' }),
    };
  };
  const start = await totals();
  const cgroups = 20;
  const calls = 5_000;
  let scraping = true;
  let scrapes = 0;
  const scraper = (async () => {
    while (scraping) {
      await agent.metrics();
      scrapes++;
      await sleep(30);
    }
  })();
  for (let i = 0; i < cgroups; i++) {
    const dir = path.join(cgroup2Root(), `${prefix}${i}`);
    mkdirSync(dir);
    try {
      await execChecked('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$1" "$2"', dir, binary, String(calls)]);
    } finally {
      rmdirSync(dir); // the process has exited: the cgroup goes at once, maybe before the agent ever named it
    }
    if (i % 4 === 0) await sleep(2_100); // now and then a cgroup walk (at most every 2 s) finds one still there
  }
  scraping = false;
  await scraper;
  const end = await totals();
  const named = end.named - start.named;
  const node = end.node - start.node;
  t.ok(named <= cgroups * calls, `named under their own cgroups: ${named} of ${cgroups * calls} (never more)`);
  t.ok(named + node >= cgroups * calls, `under their cgroups or the node: ${named} + ${node} >= ${cgroups * calls} made (others' getppid calls may add to the node)`);
  t.ok(scrapes > 0, `${scrapes} scrapes ran meanwhile (each a collection that may meet a cgroup already gone)`);
  t.equal(up(await scrape(agent), 'syscalls'), 1, 'the collector stays up');
  t.equal(agent.child.exitCode, null, 'the agent is alive');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});

t.test('a Kubernetes API server flapping (down 1.5 s, up 1.5 s, 8 times) while pods come and go: scrapes never fail, counts keep their labels, the pods converge to the final set, retries stay bounded, no watch or fd is leaked', async (t) => {
  if (!requirePrivileges(t, 'Kubernetes mode with real pods')) return;
  const { api, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const steady = await net.addPod({ layout: 'systemd' });
  const leaving = await net.addPod({ layout: 'systemd' });
  const early = await net.addPod({ layout: 'systemd' });
  const late = await net.addPod({ layout: 'systemd' });
  const namespace = 'flap';
  const register = (pod: Pod, name: string) => api.upsertPod(podObject(pod, { namespace, name, owner: { kind: 'StatefulSet', name } }));
  register(steady, 'steady');
  register(leaving, 'leaving');
  const agent = await startAgent({
    env: {
      ...onlyCollectors('process'),
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: 'test-node',
      PROBEPILOT_SERIES_GRACE_SECONDS: '3',
    },
  });
  t.teardown(() => agent.stop());
  const pid = agent.child.pid!;
  const execsOf = async (pod: string) => sumSamples(await scrape(agent), 'probepilot_process_execs_total', { namespace, pod });
  // A loop of n /bin/true through the pods helper's `ip netns exec` is n + 2 execs (ip, sh) in the pod's cgroup.
  const execLoop = async (pod: Pod, n: number): Promise<number> => {
    const { code } = await pod.exec('sh', ['-c', trueLoopScript(n)]);
    if (code !== 0) throw new Error(`exec loop in ${pod.cgroupPath} exited ${code}`);
    return n + 2;
  };
  let steadyExecs = await execLoop(steady, 5);
  const leavingExecs = await execLoop(leaving, 5);
  await waitFor(async () => (await execsOf('steady')) === steadyExecs && (await execsOf('leaving')) === leavingExecs, { timeoutMs: 20_000, what: 'both pods\' execs under their pod labels' });
  const watchesBefore = api.openWatches;
  const fdsBefore = readdirSync(`/proc/${pid}/fd`).length;
  const failedWatchLogs = () => agent.logs.filter((l) => l.msg === 'pod watch failed; keeping the last known pods').length;
  const failuresBefore = failedWatchLogs();

  const cycles = 8;
  let flapping = true;
  let scrapes = 0;
  const scrapeFailures: string[] = [];
  const apiUpSeen = new Set<number>();
  const scraper = (async () => {
    while (flapping) {
      try {
        apiUpSeen.add(sumSamples(await scrape(agent), 'probepilot_kubernetes_api_up', {}));
        scrapes++;
      } catch (err) {
        scrapeFailures.push(String(err));
      }
      await sleep(200);
    }
  })();
  for (let cycle = 0; cycle < cycles; cycle++) {
    await api.stop();
    // What changes while the server is away is only seen by listing again once it is back.
    if (cycle === 2) register(early, 'early');
    if (cycle === 4) api.deletePod(namespace, 'leaving');
    if (cycle === cycles - 1) register(late, 'late');
    steadyExecs += await execLoop(steady, 3);
    await sleep(1500);
    await api.start();
    steadyExecs += await execLoop(steady, 3);
    await sleep(1500);
  }
  flapping = false;
  await scraper;
  t.same(scrapeFailures, [], `${scrapes} scrapes during the flapping, none failed`);
  t.same([...apiUpSeen].sort(), [0, 1], 'probepilot_kubernetes_api_up went to 0 and back to 1 while it flapped');
  const failures = failedWatchLogs() - failuresBefore;
  // Backoff from 0.5 s doubling (reset by each success) allows about 3 failed attempts in a 1.5 s outage; a retry loop would make hundreds.
  t.ok(failures >= 1 && failures <= 4 * cycles, `${failures} failed list/watch attempts over ${cycles} outages: retried with backoff`);

  await waitFor(async () => sampleValue(await scrape(agent), 'probepilot_kubernetes_api_up', {}) === 1, { timeoutMs: 40_000, what: 'api_up after the flapping' });
  t.equal(await execsOf('steady'), steadyExecs, `the steady pod's ${steadyExecs} execs, made in and between the outages, all under its labels`);
  const earlyExecs = await execLoop(early, 4);
  const lateExecs = await execLoop(late, 4);
  await waitFor(async () => (await execsOf('early')) === earlyExecs && (await execsOf('late')) === lateExecs, { timeoutMs: 30_000, what: 'the pods added during outages under their labels' });
  t.pass(`pods added during the 3rd and the last outage are known: ${earlyExecs} execs each, exactly`);
  await waitFor(async () => (await execsOf('leaving')) === 0, { timeoutMs: 30_000, what: 'the series of the pod deleted during an outage to go' });
  t.pass('the pod deleted during the 5th outage is gone after the grace period');
  await waitFor(() => api.openWatches === watchesBefore, { timeoutMs: 30_000, what: `the agent's watches back to ${watchesBefore}` });
  await sleep(3000);
  t.equal(api.openWatches, watchesBefore, `${watchesBefore} watch streams open, as before the flapping (none leaked by the reconnects)`);
  const fdsAfter = readdirSync(`/proc/${pid}/fd`).length;
  t.ok(fdsAfter <= fdsBefore + 2, `agent fds ${fdsBefore} before, ${fdsAfter} after`);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});
