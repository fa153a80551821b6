// Test "pods" built the way a node builds them: a network namespace with a
// veth pair whose host end sits on a bridge (like cni0), and a cgroup v2
// directory laid out like the kubelet's, holding a pause process that keeps
// both alive. Everything a run creates carries the run's id in its name so
// teardown (and the stale-run sweep after a crash) finds all of it.
//
//   const net = await createTestNetwork();
//   t.teardown(() => net.destroy());
//   const a = await net.addPod();
//   await a.exec('ping', ['-c', '1', b.ipv4]);
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { cgroup2Root, removeCgroupTree, killCgroupTree } from './cgroups.js';
import { collect, execChecked, execCommand, killPid, processAlive, type CollectOptions, type ExecResult } from './proc.js';
import { StopWaiting, waitFor } from './wait.js';

/** Parent of every run's cgroups, directly under the cgroup2 mount. */
const TEST_CGROUP = 'probepilot-test';
const MAX_PODS = 250;

/**
 * `systemd`: kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope
 * `cgroupfs`: kubepods/<qos>/pod<uid>/<id>
 * `plain`: <name> (a non-Kubernetes workload, as in standalone mode)
 */
export type CgroupLayout = 'systemd' | 'cgroupfs' | 'plain';
export type QosClass = 'guaranteed' | 'burstable' | 'besteffort';

export interface PodOptions {
  /** Defaults to pod<index>; with the plain layout it is also the cgroup name, so it must be unique. */
  name?: string;
  /** Default systemd (the kubelet's default cgroup driver). */
  layout?: CgroupLayout;
  /** Default burstable. Guaranteed pods sit directly under kubepods, as the kubelet puts them. */
  qos?: QosClass;
  /**
   * The bridge floods nothing onto this pod's port (broadcasts, multicast,
   * unknown unicast; set before the port comes up), so its veth counters hold
   * only its own traffic even while other pods on the bridge ARP and report.
   * Pods that talk to each other need their floods: default false.
   */
  isolated?: boolean;
}

export interface VethStats {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

export interface RunOptions {
  /** Default: all pipes. */
  stdio?: StdioOptions;
  env?: NodeJS.ProcessEnv;
  /** Other cgroup directories to join first (e.g. a v1 memory cgroup on a hybrid host, which /sys inside the netns no longer shows). */
  alsoJoin?: readonly string[];
}

export interface Pod {
  readonly name: string;
  /** Kubernetes metadata.uid the cgroup path encodes. */
  readonly uid: string;
  /** 64 hex digits, as containerd ids are; part of the cgroup path except with the plain layout. */
  readonly containerId: string;
  readonly netns: string;
  /** The bridge port in the host namespace; its rx is what the pod sent. */
  readonly hostVeth: string;
  readonly podVeth: string;
  readonly ipv4: string;
  readonly ipv6: string;
  /** Absolute directory of the container cgroup (where the pause process and run() processes live). */
  readonly cgroupDir: string;
  /** cgroupDir relative to the cgroup2 mount, starting with '/': what the agent labels standalone series with. */
  readonly cgroupPath: string;
  readonly pausePid: number;
  /** Spawns cmd inside the pod's netns and cgroup (it joins the cgroup before exec). */
  run(cmd: string, args: readonly string[], opts?: RunOptions): ChildProcess;
  /** Runs cmd to completion inside the pod; a non-zero exit is a result, not an error. */
  exec(cmd: string, args: readonly string[], opts?: CollectOptions): Promise<ExecResult>;
  /** Counters of the host end of the veth, straight from sysfs. */
  vethStats(): VethStats;
  /** Idempotent; throws (after finishing every step) when something could not be removed. */
  destroy(): Promise<void>;
}

/**
 * A pod without a network of its own (as if it were on the host network): a
 * kubelet-shaped cgroup holding one live process, for scale runs where a
 * netns and a veth per pod would cost more than the pods measure.
 */
export interface CgroupPod {
  readonly name: string;
  readonly uid: string;
  readonly containerId: string;
  readonly cgroupDir: string;
  readonly cgroupPath: string;
  readonly pid: number;
  destroy(): Promise<void>;
}

export interface TestNetwork {
  /** 4 hex digits in every name this run creates. */
  readonly runId: string;
  readonly bridge: string;
  /** The bridge's addresses: the pods' default gateways, reachable from the host. */
  readonly gatewayIpv4: string;
  readonly gatewayIpv6: string;
  readonly ipv4Prefix: string;
  readonly ipv6Prefix: string;
  /** Absolute cgroup directory holding all of this run's pods. */
  readonly cgroupDir: string;
  readonly pods: readonly Pod[];
  addPod(opts?: PodOptions): Promise<Pod>;
  /**
   * A pod of cgroup and process only, running `command` (which must keep
   * running) in its container cgroup; not limited to the network's 250
   * addresses. Removed with the network.
   */
  addCgroupPod(command: readonly [string, ...string[]], opts?: PodOptions): Promise<CgroupPod>;
  /** Idempotent; removes every pod, the bridge and the run's cgroups. */
  destroy(): Promise<void>;
}

/** Every name carries the run id: pp<id>p<i> (netns), pp<id>h<i> (host veth), ppbr<id> (bridge). */
const names = {
  netns: (run: string, i: number) => `pp${run}p${i}`,
  hostVeth: (run: string, i: number) => `pp${run}h${i}`,
  bridge: (run: string) => `ppbr${run}`,
  netnsPattern: /^pp([0-9a-f]{4})p\d+$/,
  linkPattern: /^pp(?:br([0-9a-f]{4})|([0-9a-f]{4})h\d+)$/,
  /** The run's cgroup is <owner pid>-<run id>: a dead owner marks the run stale. */
  runCgroup: (run: string) => `${process.pid}-${run}`,
  runCgroupPattern: /^(\d+)-([0-9a-f]{4})$/,
};

/** Subnet n is one /24 of 198.18.0.0/15 (RFC 2544 benchmarking) and the /64 n of 2001:2::/48 (RFC 5180). */
function subnetBase(subnet: number): { v4: string; v6: string } {
  return { v4: `198.${18 + (subnet >> 8)}.${subnet & 0xff}.`, v6: `2001:2:0:${subnet.toString(16)}::` };
}

function subnetAddresses(subnet: number, host: number): { ipv4: string; ipv6: string } {
  const base = subnetBase(subnet);
  return { ipv4: `${base.v4}${host}`, ipv6: `${base.v6}${host.toString(16)}` };
}

function ip(...args: string[]): Promise<string> {
  return execChecked('ip', args, { timeoutMs: 15_000 });
}

const netnsExists = (ns: string): boolean => existsSync(`/run/netns/${ns}`);
const linkExists = (link: string): boolean => existsSync(`/sys/class/net/${link}`);

/**
 * sysctl settings that keep an interface from sending traffic of its own
 * after it comes up (router solicitations every 4 s, multicast reports spread
 * over seconds), so a pod's counters hold only what a test sent. The few
 * reports left go out during setup, which waits for them (Network#settle).
 */
function quietInterface(dev: string): string[] {
  return [
    `net.ipv6.conf.${dev}.router_solicitations=0`,
    `net.ipv6.conf.${dev}.accept_ra=0`,
    `net.ipv6.conf.${dev}.mldv1_unsolicited_report_interval=0`,
    `net.ipv6.conf.${dev}.mldv2_unsolicited_report_interval=0`,
    `net.ipv4.conf.${dev}.igmpv2_unsolicited_report_interval=0`,
    `net.ipv4.conf.${dev}.igmpv3_unsolicited_report_interval=0`,
  ];
}

async function netnsPids(ns: string): Promise<number[]> {
  if (!netnsExists(ns)) return [];
  return (await ip('netns', 'pids', ns)).split('\n').filter(Boolean).map(Number);
}

/**
 * Kills everything in the namespace, including processes that never joined a
 * pod cgroup (a daemonized iperf3): one of them keeps the netns, and with it
 * the veth, alive after `ip netns del`.
 */
async function killNetns(ns: string): Promise<void> {
  (await netnsPids(ns)).forEach(killPid);
  await waitFor(async () => (await netnsPids(ns)).length === 0, { timeoutMs: 10_000, intervalMs: 20, what: `netns ${ns} to have no processes` });
}

async function deleteNetns(ns: string): Promise<void> {
  await killNetns(ns);
  if (netnsExists(ns)) await ip('netns', 'del', ns);
}

async function deleteLink(link: string): Promise<void> {
  if (!linkExists(link)) return;
  const res = await execCommand('ip', ['link', 'del', link], { timeoutMs: 15_000 });
  // The kernel may have removed it meanwhile (its netns went away).
  if (res.code !== 0 && linkExists(link)) throw new Error(`ip link del ${link}: ${res.stderr.trim()}`);
}

/** Runs every step even when earlier ones fail, then reports all failures at once. */
async function allSteps(what: string, steps: Array<() => Promise<void>>): Promise<void> {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length) {
    const detail = errors.map((e) => (e instanceof Error ? e.message : String(e))).join('; ');
    throw new AggregateError(errors, `${what} incomplete: ${detail}`);
  }
}

/**
 * Removes what crashed runs left behind: runs whose owning process is gone.
 * Interfaces and namespaces are listed before the cgroups, and a live run
 * creates its cgroup before anything else, so a run being set up concurrently
 * is never mistaken for a stale one.
 */
async function sweepStaleRuns(testCgroup: string): Promise<void> {
  const netnsList = JSON.parse((await ip('-j', 'netns', 'list')) || '[]') as Array<{ name: string }>;
  const links = JSON.parse((await ip('-j', 'link', 'show')) || '[]') as Array<{ ifname: string }>;
  const live = new Set<string>();
  const staleDirs: string[] = [];
  for (const entry of existsSync(testCgroup) ? readdirSync(testCgroup) : []) {
    const m = names.runCgroupPattern.exec(entry);
    if (!m?.[1] || !m[2]) continue;
    if (processAlive(Number(m[1]))) live.add(m[2]);
    else staleDirs.push(path.join(testCgroup, entry));
  }
  // Best effort: a leftover that cannot be removed must not stop this run.
  const attempt = (step: Promise<void>) => step.catch(() => undefined);
  for (const { name } of netnsList) {
    const run = names.netnsPattern.exec(name)?.[1];
    if (run && !live.has(run)) await attempt(deleteNetns(name));
  }
  for (const { ifname } of links) {
    const m = names.linkPattern.exec(ifname);
    const run = m?.[1] ?? m?.[2];
    if (run && !live.has(run)) await attempt(deleteLink(ifname));
  }
  for (const dir of staleDirs) await attempt(removeCgroupTree(dir));
}

function usedSubnets(addresses: Array<{ addr_info?: Array<{ local?: string }> }>): Set<number> {
  const used = new Set<number>();
  for (const { local } of addresses.flatMap((a) => a.addr_info ?? [])) {
    const m = /^198\.(18|19)\.(\d+)\./.exec(local ?? '');
    if (m?.[1] && m[2]) used.add(((Number(m[1]) - 18) << 8) | Number(m[2]));
  }
  return used;
}

function kubeletCgroup(layout: CgroupLayout, qos: QosClass, name: string, uid: string, containerId: string): { podDir: string; containerDir: string } {
  switch (layout) {
    case 'plain':
      return { podDir: name, containerDir: name };
    case 'cgroupfs': {
      const podDir = qos === 'guaranteed' ? `kubepods/pod${uid}` : `kubepods/${qos}/pod${uid}`;
      return { podDir, containerDir: `${podDir}/${containerId}` };
    }
    case 'systemd': {
      // The systemd driver escapes the uid's dashes, which are unit name separators.
      const escaped = uid.replaceAll('-', '_');
      const podDir =
        qos === 'guaranteed'
          ? `kubepods.slice/kubepods-pod${escaped}.slice`
          : `kubepods.slice/kubepods-${qos}.slice/kubepods-${qos}-pod${escaped}.slice`;
      return { podDir, containerDir: `${podDir}/cri-containerd-${containerId}.scope` };
    }
  }
}

interface PodSpec {
  name: string;
  uid: string;
  containerId: string;
  netns: string;
  hostVeth: string;
  ipv4: string;
  ipv6: string;
  /** Directory removed with the pod (shared QoS levels above it go with the network). */
  podCgroupDir: string;
  cgroupDir: string;
  cgroupPath: string;
}

class TestPod implements Pod {
  readonly podVeth = 'eth0';
  readonly name: string;
  readonly uid: string;
  readonly containerId: string;
  readonly netns: string;
  readonly hostVeth: string;
  readonly ipv4: string;
  readonly ipv6: string;
  readonly cgroupDir: string;
  readonly cgroupPath: string;
  readonly #podCgroupDir: string;
  #pausePid = 0;

  constructor(spec: PodSpec) {
    this.name = spec.name;
    this.uid = spec.uid;
    this.containerId = spec.containerId;
    this.netns = spec.netns;
    this.hostVeth = spec.hostVeth;
    this.ipv4 = spec.ipv4;
    this.ipv6 = spec.ipv6;
    this.cgroupDir = spec.cgroupDir;
    this.cgroupPath = spec.cgroupPath;
    this.#podCgroupDir = spec.podCgroupDir;
  }

  get pausePid(): number {
    return this.#pausePid;
  }

  async setUp(bridge: string, gatewayIpv4: string, gatewayIpv6: string, isolated: boolean): Promise<void> {
    mkdirSync(this.cgroupDir, { recursive: true });
    await ip('netns', 'add', this.netns);
    await ip('link', 'add', this.hostVeth, 'type', 'veth', 'peer', 'name', this.podVeth, 'netns', this.netns);
    // A bridge port needs no address; without one it sends no IPv6 DAD/MLD
    // packets that would show up in the byte counters tests compare.
    await ip('link', 'set', this.hostVeth, 'addrgenmode', 'none');
    await ip('link', 'set', this.hostVeth, 'master', bridge);
    if (isolated) await ip('link', 'set', this.hostVeth, 'type', 'bridge_slave', 'flood', 'off', 'mcast_flood', 'off', 'bcast_flood', 'off');
    await ip('link', 'set', this.hostVeth, 'up');
    const inNs = (...args: string[]) => ip('-n', this.netns, ...args);
    await execChecked('ip', ['netns', 'exec', this.netns, 'sysctl', '-q', '-w', ...quietInterface(this.podVeth)]);
    await inNs('link', 'set', this.podVeth, 'addrgenmode', 'none');
    await inNs('link', 'set', 'lo', 'up');
    await inNs('addr', 'add', `${this.ipv4}/24`, 'dev', this.podVeth);
    // nodad: usable at once instead of after ~2 s of duplicate detection.
    await inNs('addr', 'add', `${this.ipv6}/64`, 'dev', this.podVeth, 'nodad');
    await inNs('link', 'set', this.podVeth, 'up');
    await inNs('route', 'add', 'default', 'via', gatewayIpv4);
    await inNs('-6', 'route', 'add', 'default', 'via', gatewayIpv6);
    await this.#startPause();
  }

  /** Like the Kubernetes pause container: holds the namespace and cgroup for the pod's lifetime. */
  async #startPause(): Promise<void> {
    const pause = this.run('sleep', ['infinity'], { stdio: 'ignore' });
    // A test that forgets destroy() must not hang on it; the stale sweep reaps it.
    pause.unref();
    const pid = pause.pid;
    if (pid === undefined) throw new Error(`pod ${this.name}: could not start the pause process`);
    const nsInode = statSync(`/run/netns/${this.netns}`).ino;
    // comm becomes "sleep" only after the wrapper joined the cgroup and the netns.
    await waitFor(() => {
      if (pause.exitCode !== null || pause.signalCode !== null) throw new StopWaiting(`pause process of pod ${this.name} exited (${pause.exitCode ?? pause.signalCode})`);
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep' && statSync(`/proc/${pid}/ns/net`).ino === nsInode;
    }, {
      timeoutMs: 10_000,
      intervalMs: 10,
      what: `pause process of pod ${this.name}`,
    });
    this.#pausePid = pid;
  }

  run(cmd: string, args: readonly string[], opts: RunOptions = {}): ChildProcess {
    // Joining the cgroup from inside the child before exec means no instant of
    // the workload runs outside it (as runc does); $0 is the cgroup dir.
    const joins = (opts.alsoJoin ?? []).map((dir) => `echo $$ > '${dir.replaceAll("'", "'\\''")}/cgroup.procs' && `).join('');
    const script = `${joins}echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@"`;
    return spawn('sh', ['-c', script, this.cgroupDir, this.netns, cmd, ...args], {
      stdio: opts.stdio ?? 'pipe',
      env: opts.env ?? process.env,
    });
  }

  exec(cmd: string, args: readonly string[], opts: CollectOptions = {}): Promise<ExecResult> {
    return collect(this.run(cmd, args), opts);
  }

  vethStats(): VethStats {
    const read = (counter: string) => Number(readFileSync(`/sys/class/net/${this.hostVeth}/statistics/${counter}`, 'utf8'));
    return { rxBytes: read('rx_bytes'), txBytes: read('tx_bytes'), rxPackets: read('rx_packets'), txPackets: read('tx_packets') };
  }

  destroy(): Promise<void> {
    return allSteps(`teardown of pod ${this.name}`, [
      () => killCgroupTree(this.#podCgroupDir),
      () => killNetns(this.netns),
      // Deleting the host end removes the pair at once; the netns going away
      // would only free it asynchronously.
      () => deleteLink(this.hostVeth),
      () => deleteNetns(this.netns),
      () => removeCgroupTree(this.#podCgroupDir),
    ]);
  }
}

class ProcessPod implements CgroupPod {
  readonly #podCgroupDir: string;
  #pid = 0;

  constructor(
    readonly name: string,
    readonly uid: string,
    readonly containerId: string,
    podCgroupDir: string,
    readonly cgroupDir: string,
    readonly cgroupPath: string,
  ) {
    this.#podCgroupDir = podCgroupDir;
  }

  get pid(): number {
    return this.#pid;
  }

  async start(command: readonly [string, ...string[]]): Promise<void> {
    mkdirSync(this.cgroupDir, { recursive: true });
    // Joins the cgroup before exec, as TestPod#run does, so no instant of the workload runs outside it.
    const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', this.cgroupDir, ...command], { stdio: 'ignore' });
    child.unref();
    const pid = child.pid;
    if (pid === undefined) throw new Error(`pod ${this.name}: could not start ${command[0]}`);
    await waitFor(
      () => {
        if (child.exitCode !== null || child.signalCode !== null) throw new StopWaiting(`${command[0]} of pod ${this.name} exited (${child.exitCode ?? child.signalCode})`);
        return readFileSync(path.join(this.cgroupDir, 'cgroup.procs'), 'utf8').split('\n').includes(String(pid));
      },
      { timeoutMs: 10_000, intervalMs: 10, what: `process of pod ${this.name} in its cgroup` },
    );
    this.#pid = pid;
  }

  destroy(): Promise<void> {
    return removeCgroupTree(this.#podCgroupDir);
  }
}

class Network implements TestNetwork {
  readonly #pods: TestPod[] = [];
  readonly #cgroupPods: ProcessPod[] = [];
  readonly #subnet: number;
  readonly #cgroupRoot: string;
  readonly runId: string;
  readonly bridge: string;
  readonly gatewayIpv4: string;
  readonly gatewayIpv6: string;
  readonly ipv4Prefix: string;
  readonly ipv6Prefix: string;
  readonly cgroupDir: string;

  constructor(runId: string, subnet: number, cgroupRoot: string) {
    this.runId = runId;
    this.#subnet = subnet;
    this.#cgroupRoot = cgroupRoot;
    this.bridge = names.bridge(runId);
    const gateway = subnetAddresses(subnet, 1);
    this.gatewayIpv4 = gateway.ipv4;
    this.gatewayIpv6 = gateway.ipv6;
    const base = subnetBase(subnet);
    this.ipv4Prefix = `${base.v4}0/24`;
    this.ipv6Prefix = `${base.v6}/64`;
    this.cgroupDir = path.join(cgroupRoot, TEST_CGROUP, names.runCgroup(runId));
  }

  get pods(): readonly Pod[] {
    return this.#pods;
  }

  async setUp(): Promise<void> {
    mkdirSync(this.cgroupDir, { recursive: true });
    await ip('link', 'add', this.bridge, 'type', 'bridge');
    await ip('link', 'set', this.bridge, 'addrgenmode', 'none');
    await execChecked('sysctl', ['-q', '-w', ...quietInterface(this.bridge)]);
    await ip('addr', 'add', `${this.gatewayIpv4}/24`, 'dev', this.bridge);
    await ip('addr', 'add', `${this.gatewayIpv6}/64`, 'dev', this.bridge, 'nodad');
    await ip('link', 'set', this.bridge, 'up');
  }

  async addPod(opts: PodOptions = {}): Promise<Pod> {
    const index = this.#pods.length;
    if (index >= MAX_PODS) throw new Error(`at most ${MAX_PODS} pods per test network`);
    const name = opts.name ?? `pod${index}`;
    if (this.#pods.some((p) => p.name === name)) throw new Error(`pod name ${name} already used in this network`);
    const uid = randomUUID();
    const containerId = randomBytes(32).toString('hex');
    const { podDir, containerDir } = kubeletCgroup(opts.layout ?? 'systemd', opts.qos ?? 'burstable', name, uid, containerId);
    const cgroupDir = path.join(this.cgroupDir, containerDir);
    const addresses = subnetAddresses(this.#subnet, index + 2);
    const pod = new TestPod({
      name,
      uid,
      containerId,
      netns: names.netns(this.runId, index),
      hostVeth: names.hostVeth(this.runId, index),
      ipv4: addresses.ipv4,
      ipv6: addresses.ipv6,
      podCgroupDir: path.join(this.cgroupDir, podDir),
      cgroupDir,
      cgroupPath: `/${path.relative(this.#cgroupRoot, cgroupDir)}`,
    });
    // Registered first so that destroy() removes a half-built pod too.
    this.#pods.push(pod);
    try {
      await pod.setUp(this.bridge, this.gatewayIpv4, this.gatewayIpv6, opts.isolated ?? false);
      await this.#settle(pod);
    } catch (err) {
      await pod.destroy().catch(() => undefined);
      throw err;
    }
    return pod;
  }

  async addCgroupPod(command: readonly [string, ...string[]], opts: PodOptions = {}): Promise<CgroupPod> {
    const name = opts.name ?? `cpod${this.#cgroupPods.length}`;
    if (this.#cgroupPods.some((p) => p.name === name)) throw new Error(`pod name ${name} already used in this network`);
    const uid = randomUUID();
    const containerId = randomBytes(32).toString('hex');
    const { podDir, containerDir } = kubeletCgroup(opts.layout ?? 'systemd', opts.qos ?? 'burstable', name, uid, containerId);
    const cgroupDir = path.join(this.cgroupDir, containerDir);
    const pod = new ProcessPod(name, uid, containerId, path.join(this.cgroupDir, podDir), cgroupDir, `/${path.relative(this.#cgroupRoot, cgroupDir)}`);
    this.#cgroupPods.push(pod);
    try {
      await pod.start(command);
    } catch (err) {
      await pod.destroy().catch(() => undefined);
      throw err;
    }
    return pod;
  }

  /**
   * Waits until the packets the kernel sends by itself when carriers come up
   * (multicast reports, after linkwatch delays of up to 1 s) are out, so that
   * the counters a test reads from here on hold only the traffic it makes.
   * Only the new pod's host veth is watched: everything its set-up sends
   * crosses it (its reports, and the bridge's own when this port brought the
   * bridge up), and what the bridge floods from it to the other ports has
   * left by the time it is quiet. Traffic other pods carry meanwhile (a
   * running test, a soak) is not waited for; only their broadcasts flooded
   * onto the new port can delay the quiet, never prevent it.
   */
  async #settle(pod: TestPod): Promise<void> {
    const operstate = (dev: string) => readFileSync(`/sys/class/net/${dev}/operstate`, 'utf8').trim();
    await waitFor(() => operstate(this.bridge) === 'up' && operstate(pod.hostVeth) === 'up', {
      timeoutMs: 5_000,
      intervalMs: 20,
      what: `carrier on ${pod.hostVeth} and ${this.bridge}`,
    });
    const counters = () => JSON.stringify(pod.vethStats());
    let last = counters();
    let quietSince = Date.now();
    await waitFor(
      () => {
        const now = counters();
        if (now !== last) [last, quietSince] = [now, Date.now()];
        return Date.now() - quietSince >= 300;
      },
      { timeoutMs: 5_000, intervalMs: 25, what: `${pod.hostVeth} to go quiet after adding ${pod.name}` },
    );
  }

  destroy(): Promise<void> {
    return allSteps(`teardown of test network ${this.runId}`, [
      // Hundreds of cgroup pods are killed at once (cgroup.kill on the run's tree), not one wait each.
      ...(this.#cgroupPods.length ? [() => killCgroupTree(this.cgroupDir)] : []),
      ...this.#pods.map((pod) => () => pod.destroy()),
      ...this.#cgroupPods.map((pod) => () => pod.destroy()),
      () => deleteLink(this.bridge),
      () => removeCgroupTree(this.cgroupDir),
      async () => {
        try {
          rmdirSync(path.dirname(this.cgroupDir));
        } catch {
          // Still holds other runs (concurrent test files): theirs to remove.
        }
      },
    ]);
  }
}

function pickRunId(testCgroup: string): string {
  const taken = new Set(readdirSync(testCgroup).map((d) => names.runCgroupPattern.exec(d)?.[2]));
  for (let attempt = 0; attempt < 100; attempt++) {
    const id = randomBytes(2).toString('hex');
    if (!taken.has(id) && !linkExists(names.bridge(id))) return id;
  }
  throw new Error('no free test network id');
}

async function pickSubnet(): Promise<number> {
  const used = usedSubnets(JSON.parse((await ip('-j', '-4', 'addr', 'show')) || '[]') as Array<{ addr_info?: Array<{ local?: string }> }>);
  const free = Array.from({ length: 512 }, (_, i) => i).filter((i) => !used.has(i));
  const pick = free[Math.floor(Math.random() * free.length)];
  if (pick === undefined) throw new Error('198.18.0.0/15 is exhausted on this host');
  return pick;
}

/** Needs root. Sweeps leftovers of crashed runs, then builds a bridge with no pods yet. */
export async function createTestNetwork(): Promise<TestNetwork> {
  const cgroupRoot = cgroup2Root();
  const testCgroup = path.join(cgroupRoot, TEST_CGROUP);
  await sweepStaleRuns(testCgroup);
  mkdirSync(testCgroup, { recursive: true });
  const network = new Network(pickRunId(testCgroup), await pickSubnet(), cgroupRoot);
  try {
    await network.setUp();
  } catch (err) {
    await network.destroy().catch(() => undefined);
    throw err;
  }
  return network;
}
