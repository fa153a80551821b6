// cgroup v2 trees for test pods: creating them and, above all, removing them
// completely — a cgroup cannot be removed while any process is left in it, and
// a leftover pause process would otherwise live forever.
import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { findCgroup2Mount } from '../../src/system/mounts.js';
import { killPid } from './proc.js';
import { waitFor } from './wait.js';

export function cgroup2Root(): string {
  const mount = findCgroup2Mount();
  if (!mount) throw new Error('no cgroup v2 mount found in /proc/self/mountinfo');
  return mount;
}

/** Child directories, deepest first, ending with `dir` itself. */
function subtreePostOrder(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) out.push(...subtreePostOrder(path.join(dir, entry.name)));
  }
  out.push(dir);
  return out;
}

function pidsOf(dir: string): number[] {
  return readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
}

function populated(dir: string): boolean {
  return /^populated 1$/m.test(readFileSync(path.join(dir, 'cgroup.events'), 'utf8'));
}

/** SIGKILLs every process in the subtree and waits until the kernel reports it empty. */
export async function killCgroupTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  const killFile = path.join(dir, 'cgroup.kill');
  // cgroup.kill (5.14+) also catches processes forking while we kill; the
  // per-pid walk is for older kernels.
  if (existsSync(killFile)) writeFileSync(killFile, '1');
  else for (const d of subtreePostOrder(dir)) pidsOf(d).forEach(killPid);
  await waitFor(() => !populated(dir), { timeoutMs: 10_000, intervalMs: 20, what: `cgroup ${dir} to empty` });
}

/** Kills what runs in the subtree, then removes its directories deepest first. Missing is fine. */
export async function removeCgroupTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  await killCgroupTree(dir);
  for (const d of subtreePostOrder(dir)) {
    try {
      rmdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}
