// Preflight checks: what this host gives the agent, each with PASS, WARN or
// FAIL and, when not PASS, the remedy. `probepilot doctor` runs them all; the
// agent logs the host checks at start.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { bpfObjectDir, loadAddon, type NativeAddon } from './bpf/addon.js';
import type { AgentConfig } from './config.js';
import { describeError } from './errors.js';
import { bpffsMounted, findCgroup2Mount, tracefsMounted } from './system/mounts.js';

export type Verdict = 'PASS' | 'WARN' | 'FAIL';

export interface CheckResult {
  check: string;
  verdict: Verdict;
  detail: string;
  /** What to do about it; empty for PASS. */
  remedy: string;
}

const pass = (check: string, detail: string): CheckResult => ({ check, verdict: 'PASS', detail, remedy: '' });
const warn = (check: string, detail: string, remedy: string): CheckResult => ({ check, verdict: 'WARN', detail, remedy });
const fail = (check: string, detail: string, remedy: string): CheckResult => ({ check, verdict: 'FAIL', detail, remedy });

/** (major, minor) of the running kernel. */
export function kernelVersion(release = os.release()): [number, number] {
  const [major = 0, minor = 0] = release.split(/[.-]/).map(Number);
  return [major, minor];
}

const atLeast = ([major, minor]: [number, number], wantMajor: number, wantMinor: number) => major > wantMajor || (major === wantMajor && minor >= wantMinor);

// Capability bits (linux/capability.h).
const caps = { NET_ADMIN: 12, SYS_PTRACE: 19, SYS_ADMIN: 21, SYS_RESOURCE: 24, PERFMON: 38, BPF: 39 } as const;

function effectiveCapabilities(): bigint {
  const line = readFileSync('/proc/self/status', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('CapEff:'));
  return line ? BigInt(`0x${line.split(/\s+/)[1]}`) : 0n;
}

const has = (set: bigint, cap: number) => (set & (1n << BigInt(cap))) !== 0n;

function kernelCheck(): CheckResult {
  const version = kernelVersion();
  const text = os.release();
  if (!atLeast(version, 5, 8)) return fail('kernel', `${text}: older than 5.8 (BPF ring buffer, CO-RE tracepoints)`, 'run a kernel of 5.8 or newer (5.17+ for drop reasons, 6.5+ for block I/O, 6.6+ for TCX)');
  const missing = [
    ...(atLeast(version, 5, 17) ? [] : ['drop reasons (5.17)']),
    ...(atLeast(version, 6, 5) ? [] : ['block I/O (6.5)']),
    ...(atLeast(version, 6, 8) ? [] : ['OOM victims by task (6.8)']),
  ];
  return missing.length ? warn('kernel', `${text}: without ${missing.join(', ')}`, 'those collectors report why they are down; a newer kernel brings them') : pass('kernel', `${text}: every collector's kernel features`);
}

function btfCheck(): CheckResult {
  return existsSync('/sys/kernel/btf/vmlinux')
    ? pass('btf', '/sys/kernel/btf/vmlinux present (CO-RE)')
    : fail('btf', 'no /sys/kernel/btf/vmlinux: BPF programs cannot be relocated for this kernel', 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major distribution since 2020 is); in a container, mount /sys/kernel/btf');
}

function capabilitiesCheck(): CheckResult {
  const set = effectiveCapabilities();
  const need = (['BPF', 'PERFMON', 'NET_ADMIN', 'SYS_PTRACE'] as const).filter((c) => !has(set, caps[c]) && !has(set, caps.SYS_ADMIN));
  if (need.length) return fail('capabilities', `missing CAP_${need.join(', CAP_')}`, 'run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE (the Helm chart does)');
  return pass('capabilities', has(set, caps.SYS_ADMIN) ? 'CAP_SYS_ADMIN (all BPF operations)' : 'CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE');
}

function bpfLoadCheck(addon: NativeAddon | undefined): CheckResult {
  if (!addon) return fail('bpf', 'the native addon does not load', 'build it: ./scripts/dev true (npm run build:native)');
  const object = path.join(bpfObjectDir, 'process.bpf.o');
  try {
    const bpf = new addon.BpfObject(object);
    try {
      bpf.load();
    } finally {
      bpf.close();
    }
    return pass('bpf', 'a BPF object loads and verifies (bpf() works here)');
  } catch (err) {
    return fail('bpf', `cannot load ${path.basename(object)}: ${describeError(err)}`, 'run as root or with CAP_BPF and CAP_PERFMON; a seccomp profile must allow bpf() (the chart sets Unconfined)');
  }
}

function mountCheck(check: string, found: string | undefined, set: bigint, command: string): CheckResult {
  if (found) return pass(check, `mounted at ${found}`);
  if (has(set, caps.SYS_ADMIN)) return warn(check, 'not mounted; the agent mounts it at start (it has CAP_SYS_ADMIN)', command);
  return fail(check, 'not mounted, and the agent cannot mount it without CAP_SYS_ADMIN', command);
}

function cgroupCheck(): CheckResult {
  const mount = findCgroup2Mount();
  return mount
    ? pass('cgroup2', `cgroup v2 at ${mount}`)
    : fail('cgroup2', 'no cgroup v2 mount: every workload would be the node', 'mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1');
}

function tcxCheck(config: AgentConfig): CheckResult {
  const tcx = atLeast(kernelVersion(), 6, 6);
  const setting = config.collectors.network.attachMode;
  if (setting === 'tcx' && !tcx) return fail('tc attach', `attachMode tcx, but TCX needs Linux 6.6 (this is ${os.release()})`, 'set collectors.network.attachMode to auto or clsact');
  return pass('tc attach', tcx ? `TCX links (attachMode ${setting}): appended after other programs, never replacing a CNI's` : `clsact filters (TCX needs 6.6): on their own handle and priority, next to a CNI's`);
}

interface NetShow {
  xdp?: Array<{ devname: string; name?: string }>;
  tc?: Array<{ devname: string; kind: string; name?: string }>;
}

/** TC and XDP programs others (a CNI) attached to this namespace's interfaces, as bpftool lists them. */
function attachedCheck(): CheckResult {
  let listing: NetShow[];
  try {
    listing = JSON.parse(execFileSync('bpftool', ['-j', 'net', 'show'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] })) as NetShow[];
  } catch {
    return warn('other programs', 'cannot list the programs on the interfaces (bpftool is not installed)', 'install bpftool to see what a CNI attached; the agent coexists either way');
  }
  const others = listing.flatMap((ns) => [...(ns.tc ?? []), ...(ns.xdp ?? [])]).filter((p) => !p.name?.startsWith('pp_'));
  if (others.length === 0) return pass('other programs', 'no other TC or XDP programs on this namespace\'s interfaces');
  const interfaces = [...new Set(others.map((p) => p.devname))];
  return pass('other programs', `${others.length} program(s) of others on ${interfaces.slice(0, 5).join(', ')}${interfaces.length > 5 ? ', …' : ''}: ours attach beside them (TCX appends; clsact takes its own handle and priority and passes packets on), never replacing them`);
}

function paranoidCheck(set: bigint): CheckResult {
  let level: number;
  try {
    level = Number(readFileSync('/proc/sys/kernel/perf_event_paranoid', 'utf8').trim());
  } catch {
    return warn('perf_event_paranoid', 'cannot read /proc/sys/kernel/perf_event_paranoid', 'mount /proc');
  }
  if (has(set, caps.PERFMON) || has(set, caps.SYS_ADMIN)) return pass('perf_event_paranoid', `${level}; tracepoints attach with CAP_PERFMON regardless`);
  return level > 2
    ? fail('perf_event_paranoid', `${level} and no CAP_PERFMON: tracepoints cannot be attached`, 'grant CAP_PERFMON (or sysctl kernel.perf_event_paranoid=2)')
    : pass('perf_event_paranoid', String(level));
}

function memlockCheck(set: bigint): CheckResult {
  if (atLeast(kernelVersion(), 5, 11)) return pass('memlock', 'BPF memory is charged to the cgroup (Linux 5.11+), not to RLIMIT_MEMLOCK');
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max locked memory'));
  const soft = line?.split(/\s{2,}/)[1] ?? '';
  if (soft === 'unlimited' || has(set, caps.SYS_RESOURCE)) return pass('memlock', soft === 'unlimited' ? 'RLIMIT_MEMLOCK unlimited' : 'CAP_SYS_RESOURCE: the agent raises RLIMIT_MEMLOCK');
  return fail('memlock', `RLIMIT_MEMLOCK ${soft} bytes on a kernel before 5.11: maps would not fit`, 'run with ulimit -l unlimited or CAP_SYS_RESOURCE (chart: securityContext.sysResource=true)');
}

/** Checks of the host that the agent also logs at start. */
export function hostChecks(config: AgentConfig): CheckResult[] {
  const set = effectiveCapabilities();
  return [
    kernelCheck(),
    btfCheck(),
    capabilitiesCheck(),
    mountCheck('bpffs', bpffsMounted(), set, 'mount -t bpf bpf /sys/fs/bpf (in Kubernetes: mount the host\'s /sys/fs/bpf, as the chart does)'),
    mountCheck('tracefs', tracefsMounted(), set, 'mount -t tracefs tracefs /sys/kernel/tracing (in Kubernetes: mount the host\'s /sys/kernel/tracing, as the chart does)'),
    cgroupCheck(),
    tcxCheck(config),
    attachedCheck(),
    paranoidCheck(set),
    memlockCheck(set),
  ];
}

async function portCheck(config: AgentConfig): Promise<CheckResult> {
  const { host, port } = config.listen;
  const server = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return pass('listen', `${host}:${port} is free`);
  } catch (err) {
    return fail('listen', `${host}:${port}: ${describeError(err)}`, 'another agent (or program) listens there: stop it, or set listen to another port');
  } finally {
    server.close();
  }
}

async function kubernetesCheck(config: AgentConfig): Promise<CheckResult> {
  if (!config.kubernetes.enabled) return pass('kubernetes', 'standalone mode (kubernetes.enabled is false)');
  try {
    const { CoreV1Api } = await import('@kubernetes/client-node');
    const { loadKubeConfig } = await import('./identity/kubernetes.js');
    const node = config.kubernetes.nodeName || process.env.NODE_NAME || os.hostname();
    const core = loadKubeConfig(config.kubernetes.kubeconfig).makeApiClient(CoreV1Api);
    const pods = await core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}`, limit: 1 });
    return pass('kubernetes', `the API server answers, and pods of node ${node} can be listed (${pods.items.length ? 'some' : 'none yet'})`);
  } catch (err) {
    return fail('kubernetes', `cannot list this node's pods: ${describeError(err)}`, 'check the kubeconfig or the service account, and that its ClusterRole allows get/list/watch on pods (the chart\'s does)');
  }
}

async function nvmlCheck(config: AgentConfig, addon: NativeAddon | undefined): Promise<CheckResult> {
  if (!config.collectors.gpu.enabled) return pass('nvml', 'GPU collector disabled (collectors.gpu.enabled is false)');
  if (!addon) return fail('nvml', 'the native addon does not load', 'build it');
  try {
    const session = await addon.openNvml(config.collectors.gpu.libraryPath);
    const snapshot = await session.sample();
    session.close();
    return pass('nvml', `driver ${snapshot.driverVersion}, ${snapshot.devices.length} GPU(s)`);
  } catch (err) {
    return fail('nvml', describeError(err), 'install the NVIDIA driver, or point collectors.gpu.libraryPath at libnvidia-ml.so.1; in Kubernetes run with the NVIDIA runtime (chart: gpu.enabled)');
  }
}

/** Every check, for `probepilot doctor`. */
export async function allChecks(config: AgentConfig): Promise<CheckResult[]> {
  let addon: NativeAddon | undefined;
  try {
    addon = loadAddon();
  } catch {
    addon = undefined;
  }
  return [...hostChecks(config), bpfLoadCheck(addon), await kubernetesCheck(config), await nvmlCheck(config, addon), await portCheck(config)];
}
