// The process collector: a workload that execs exactly K programs, and one
// the kernel's OOM killer kills inside a memory-limited cgroup.
import t from 'tap';
import { existsSync, mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { startAgent } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { readMounts } from '../../src/system/mounts.js';
import { compileWorkload } from '../helpers/workload.js';
import { collect } from '../helpers/proc.js';

const execs = 40;
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

t.test('execs and OOM kills are counted for the workload they happened to', async (t) => {
  if (!requirePrivileges(t, 'process collector on tracepoints')) return;
  const hog = await compileWorkload(t, 'hog', hogSource);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const looping = await net.addPod({ layout: 'systemd' });
  const once = await net.addPod({ layout: 'plain' });
  const victim = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());

  // Both pods go through the same command path (ip netns exec → sh): the pod that runs no loop measures its execs.
  const loop = `i=0; while [ $i -lt ${execs} ]; do /bin/true; i=$((i+1)); done`;
  t.equal((await looping.exec('sh', ['-c', loop])).code, 0, 'exec loop ran');
  t.equal((await once.exec('sh', ['-c', 'i=0'])).code, 0, 'baseline ran');

  const limit = memoryLimit(victim.cgroupDir, `probepilot-test-${process.pid}-${net.runId}`);
  t.teardown(limit.cleanup);
  const killed = await collect(victim.run(hog, [], { alsoJoin: limit.alsoJoin }));
  t.equal(killed.signal, 'SIGKILL', `the hog was killed by SIGKILL (exit ${killed.code}, ${killed.stderr.trim()})`);

  const families = parseExposition(await agent.metrics());
  const execsOf = (cgroup: string) => sumSamples(families, 'probepilot_process_execs_total', { cgroup });
  const overhead = execsOf(once.cgroupPath);
  t.ok(overhead >= 1 && overhead <= 3, `the command path itself execs ${overhead} time(s) (ip, sh)`);
  t.equal(execsOf(looping.cgroupPath), execs + overhead, `${execs} execs of /bin/true plus the command path's ${overhead}, exactly`);

  const oomKills = (cgroup: string) => sumSamples(families, 'probepilot_oom_kills_total', { cgroup });
  t.equal(oomKills(victim.cgroupPath), 1, 'one OOM kill, charged to the victim\'s own cgroup');
  t.equal(oomKills(looping.cgroupPath) + oomKills(once.cgroupPath), 0, 'no other test workload is charged with it');
  t.equal(sumSamples(families, 'probepilot_collector_up', { collector: 'process' }), 1, 'collector is up');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
