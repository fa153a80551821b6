// An OOM kill on demand: a program that touches memory until the kernel's
// OOM killer kills it inside a memory-limited cgroup of a test pod.
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { readMounts } from '../../src/system/mounts.js';
import type { Pod } from './pods.js';
import { collect, type ExecResult } from './proc.js';
import { compileWorkload } from './workload.js';

const memoryLimitBytes = 32 << 20;

/** Touches memory 1 MiB at a time until the kernel kills it. */
const hogSource = `
#include <stdlib.h>
#include <string.h>
int main(void) {
  for (int i = 0; i < 4096; i++) {
    char *chunk = malloc(1 << 20);
    if (!chunk) return 2;
    memset(chunk, 1, 1 << 20);
  }
  return 3; /* 4 GiB never ran into the limit */
}
`;

/**
 * Where a test can set a memory limit: the pod's own cgroup when cgroup v2
 * has the memory controller there, else a cgroup of the v1 memory hierarchy
 * (hybrid hosts), which a process joins besides its v2 cgroup.
 */
function memoryLimit(podCgroupDir: string, name: string): { alsoJoin: string[]; cleanup: () => void } {
  if (existsSync(path.join(podCgroupDir, 'memory.max'))) {
    writeFileSync(path.join(podCgroupDir, 'memory.max'), String(memoryLimitBytes));
    writeFileSync(path.join(podCgroupDir, 'memory.swap.max'), '0');
    return { alsoJoin: [], cleanup: () => {} };
  }
  const v1 = readMounts().find((m) => m.fsType === 'cgroup' && existsSync(path.join(m.mountPoint, 'memory.limit_in_bytes')));
  if (!v1) throw new Error('no memory controller: neither cgroup v2 memory.max in the pod cgroup nor a v1 memory hierarchy');
  const dir = path.join(v1.mountPoint, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'memory.limit_in_bytes'), String(memoryLimitBytes));
  // With swap accounting, memory+swap must be capped too or the hog just swaps.
  if (existsSync(path.join(dir, 'memory.memsw.limit_in_bytes'))) writeFileSync(path.join(dir, 'memory.memsw.limit_in_bytes'), String(memoryLimitBytes));
  return {
    alsoJoin: [dir],
    cleanup: () => {
      if (existsSync(dir)) rmdirSync(dir);
    },
  };
}

/**
 * Caps the pod's memory (for good: use a pod that does nothing else) and runs
 * the hog in it until the OOM killer ends it; resolves with how it ended.
 */
export async function oomKillIn(t: Test, pod: Pod): Promise<ExecResult> {
  const hog = await compileWorkload(t, 'hog', hogSource);
  const limit = memoryLimit(pod.cgroupDir, `probepilot-test-${pod.uid}`);
  t.teardown(limit.cleanup);
  return collect(pod.run(hog, [], { alsoJoin: limit.alsoJoin }));
}
