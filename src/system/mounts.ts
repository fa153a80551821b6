// Where the kernel's pseudo filesystems live on this host, and mounting the
// ones BPF needs when the host has not (containers often start without them).
import { readFileSync, existsSync, mkdirSync, statfsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

const octalEscape = /\\([0-7]{3})/g;

/** Parses /proc/self/mountinfo (proc(5)); mount points keep their real names. */
export function parseMountInfo(text: string): MountEntry[] {
  const mounts: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const fields = left.split(' ');
    const [fsType, source] = right.split(' ');
    const mountPoint = fields[4];
    if (!mountPoint || !fsType) continue;
    mounts.push({
      mountPoint: mountPoint.replace(octalEscape, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))),
      fsType,
      source: source ?? '',
    });
  }
  return mounts;
}

export function readMounts(): MountEntry[] {
  return parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** The cgroup v2 mount (unified or hybrid hosts); undefined when there is none. */
export function findCgroup2Mount(mounts: MountEntry[] = readMounts()): string | undefined {
  return mounts.find((m) => m.fsType === 'cgroup2')?.mountPoint;
}

const BPF_FS_MAGIC = 0xcafe4a11;
const TRACEFS_MAGIC = 0x74726163;

function hasFs(dir: string, magic: number): boolean {
  try {
    return statfsSync(dir).type === magic;
  } catch {
    return false;
  }
}

export interface EnsuredMount {
  path: string;
  /** True when this call mounted it. */
  mounted: boolean;
}

/** Where bpffs is mounted at the usual place; undefined when it is not. */
export function bpffsMounted(dir = '/sys/fs/bpf'): string | undefined {
  return hasFs(dir, BPF_FS_MAGIC) ? dir : undefined;
}

/** Whether `target` (or, when it does not exist yet, its nearest existing parent) is on a bpffs: where pins can live. */
export function onBpffs(target: string): boolean {
  for (let dir = path.resolve(target); ; dir = path.dirname(dir)) {
    if (existsSync(dir)) return hasFs(dir, BPF_FS_MAGIC);
    if (dir === path.dirname(dir)) return false;
  }
}

/** Where tracefs is mounted (the usual place or inside debugfs); undefined when nowhere. */
export function tracefsMounted(): string | undefined {
  return ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'].find((dir) => hasFs(dir, TRACEFS_MAGIC));
}

function ensureMount(dir: string, fsType: string, magic: number): EnsuredMount {
  if (hasFs(dir, magic)) return { path: dir, mounted: false };
  if (!existsSync(dir)) mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', fsType, fsType, dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  return { path: dir, mounted: true };
}

export function ensureBpffs(dir = '/sys/fs/bpf'): EnsuredMount {
  return ensureMount(dir, 'bpf', BPF_FS_MAGIC);
}

/** tracefs at /sys/kernel/tracing, or the older debugfs location when that one is already there. */
export function ensureTracefs(): EnsuredMount {
  const legacy = '/sys/kernel/debug/tracing';
  if (hasFs(legacy, TRACEFS_MAGIC)) return { path: legacy, mounted: false };
  return ensureMount('/sys/kernel/tracing', 'tracefs', TRACEFS_MAGIC);
}
