// cgroup v2 ids (the kernfs inode the kernel hands to BPF) to paths relative
// to the cgroup2 mount, which is what standalone mode calls a workload.
import { readdirSync, statSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const rootCgroup = '/';
const pathSeparator = Buffer.from('/');

/** The cgroup v2 path of a process ("0::/…" in /proc/PID/cgroup); undefined when it is gone. */
export function cgroupOfPid(pid: number, procRoot = '/proc'): string | undefined {
  let text: string;
  try {
    text = readFileSync(`${procRoot}/${pid}/cgroup`, 'utf8');
  } catch {
    return undefined;
  }
  const line = text.split('\n').find((l) => l.startsWith('0::'));
  return line ? line.slice(3) || rootCgroup : undefined;
}

/** Deepest cgroup containing all the given ones ("/a/b" and "/a/c" → "/a"). */
export function commonAncestor(paths: readonly string[]): string {
  const [first, ...rest] = paths.map((p) => p.split('/').filter(Boolean));
  if (!first) return rootCgroup;
  let depth = first.length;
  for (const parts of rest) {
    let i = 0;
    while (i < depth && parts[i] === first[i]) i++;
    depth = i;
  }
  return `/${first.slice(0, depth).join('/')}`;
}

export interface CgroupPathsOptions {
  /** Minimum time between two walks of the cgroup tree, however many lookups miss. */
  minRefreshIntervalMs?: number;
  now?: () => number;
}

export class CgroupPaths {
  private readonly paths = new Map<bigint, string>();
  /** Ids whose directory disappeared: their last path, until forget(). */
  private readonly gone = new Set<bigint>();
  private lastRefresh = -Infinity;
  private readonly minRefreshIntervalMs: number;
  private readonly now: () => number;

  constructor(
    readonly root: string,
    options: CgroupPathsOptions = {},
  ) {
    this.minRefreshIntervalMs = options.minRefreshIntervalMs ?? 2000;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.paths.size;
  }

  /** The path of a cgroup id, walking the tree again (rate-limited) when it is new to us. */
  resolve(id: bigint): string | undefined {
    if (id === 0n) return undefined;
    const known = this.paths.get(id);
    if (known !== undefined) return known;
    this.refresh();
    return this.paths.get(id);
  }

  /** Every cgroup seen by the last walk (and gone ones until forgotten): id and path. */
  known(): IterableIterator<[bigint, string]> {
    return this.paths.entries();
  }

  isGone(id: bigint): boolean {
    return this.gone.has(id);
  }

  forget(id: bigint): void {
    this.paths.delete(id);
    this.gone.delete(id);
  }

  /** Walks the tree when the last walk is old enough; returns whether it walked. */
  refresh(force = false): boolean {
    const now = this.now();
    if (!force && now - this.lastRefresh < this.minRefreshIntervalMs) return false;
    this.lastRefresh = now;
    const seen = new Set<bigint>();
    this.walk(Buffer.from(this.root), rootCgroup, seen);
    for (const id of this.paths.keys()) if (!seen.has(id)) this.gone.add(id);
    return true;
  }

  /**
   * Directory names are bytes (cgroupfs takes any but '/' and NUL): the walk
   * goes by Buffer paths so a name that is no valid UTF-8 is still found and
   * descended into; only its label text is decoded (invalid bytes as U+FFFD).
   */
  private walk(dir: Buffer, relative: string, seen: Set<bigint>): void {
    let id: bigint;
    try {
      id = statSync(dir, { bigint: true }).ino;
    } catch {
      return; // removed while we walked
    }
    seen.add(id);
    this.paths.set(id, relative);
    this.gone.delete(id);
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true, encoding: 'buffer' });
    } catch {
      return;
    }
    for (const entry of entries) {
      if (entry.isDirectory()) this.walk(Buffer.concat([dir, pathSeparator, entry.name]), path.posix.join(relative, entry.name.toString('utf8')), seen);
    }
  }
}
