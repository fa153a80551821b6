// The security probes' cost to workloads: an exec loop (vfork + exec of a
// static no-op, the test's storm fixture) and an open/close loop on an
// unwatched file, with no probes, with the agent's security probes and
// pipeline (ring buffer drained and counted per workload, no rate limit so
// every event is paid for), and with a bpftrace script doing the same work
// (an event per exec and exit, a prefix test on every openat), in
// interleaved rounds; medians.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NativeAddon } from '../src/bpf/addon.js';
import { EventPipeline } from '../src/events/pipeline.js';
import { SecurityMonitor } from '../src/events/security.js';
import { execChecked } from '../test/helpers/proc.js';
import { compileC, type CompiledProgram } from '../test/helpers/workload.js';
import { startBpftrace } from './bpftrace.js';
import { collectorContext, medianRow, type BenchOptions, type BenchSection } from './common.js';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/fixtures');

/** Opens and closes argv[2] argv[1] times; prints the mean ns per open + close. */
const openLoopSource = `
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) { int fd = open(argv[2], O_RDONLY); if (fd < 0) return 1; close(fd); }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.1f\\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
  return 0;
}
`;

/** The same events as the agent's exec, exit and watched-open probes, the way one writes them in bpftrace. */
const securityScript = `
tracepoint:sched:sched_process_exec { printf("exec %d %d %s %s\\n", pid, uid, comm, str(args->filename)); }
tracepoint:sched:sched_process_exit /pid == tid/ { printf("exit %d %d\\n", pid, curtask->exit_code); }
tracepoint:syscalls:sys_enter_openat /strncmp(str(args->filename), "/etc/", 5) == 0/ { printf("open %d %s\\n", pid, str(args->filename)); }
`;

type Variant = 'off' | 'probes' | 'bpftrace';

/** The agent's security path in this process: the pipeline, its security kind attached, events counted as the agent counts them. */
async function startProbes(addon: NativeAddon): Promise<() => Promise<void>> {
  const context = collectorContext(addon, { events: { ratePerSecond: 0 }, security: { enabled: true } });
  const pipeline = new EventPipeline({ ...context });
  const monitor = new SecurityMonitor({ ...context, pipeline });
  await monitor.start();
  const up = monitor.metrics().find((family) => family.name === 'probepilot_security_up');
  if (up?.type !== 'gauge' || up.samples[0]?.value !== 1) {
    await pipeline.stop();
    throw new Error('the security probes did not attach (the agent log says why)');
  }
  return async () => {
    await monitor.stop();
    await pipeline.stop();
  };
}

export async function benchSecurity(addon: NativeAddon, opts: BenchOptions): Promise<BenchSection> {
  const programs: CompiledProgram[] = [];
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-bench-security-'));
  try {
    const storm = await compileC('exec-storm', readFileSync(path.join(fixtures, 'exec-storm.c'), 'utf8'));
    programs.push(storm);
    const nop = await compileC('nop', readFileSync(path.join(fixtures, 'nop.c'), 'utf8'), ['-static', '-nostdlib']);
    programs.push(nop);
    const openLoop = await compileC('open-loop', openLoopSource);
    programs.push(openLoop);
    const file = path.join(dir, 'unwatched');
    writeFileSync(file, 'x');
    const execs = opts.quick ? 300 : 3000;
    const opens = opts.quick ? 30_000 : 300_000;
    const usPerExec = async (): Promise<number> => Number((await execChecked(storm.binary, [String(execs), nop.binary, '120'])).trim().split(' ')[1]) / 1000;
    const nsPerOpen = async (): Promise<number> => Number(await execChecked(openLoop.binary, [String(opens), file]));

    const exec: Record<Variant, number[]> = { off: [], probes: [], bpftrace: [] };
    const open: Record<Variant, number[]> = { off: [], probes: [], bpftrace: [] };
    for (let round = 0; round < opts.rounds; round++) {
      for (const variant of ['off', 'probes', 'bpftrace'] as const) {
        const stop =
          variant === 'off'
            ? async () => undefined
            : variant === 'probes'
              ? await startProbes(addon)
              : await startBpftrace(securityScript, 3).then((b) => () => b.stop());
        try {
          exec[variant].push(await usPerExec());
          open[variant].push(await nsPerOpen());
        } finally {
          await stop();
        }
      }
    }
    return {
      rows: [
        medianRow('exec loop, security probes on (µs per vfork+exec)', 'probes off', exec.off, exec.probes),
        medianRow('exec loop, security probes vs bpftrace (µs per vfork+exec)', 'bpftrace exec/exit/open script', exec.bpftrace, exec.probes),
        medianRow('open/close loop, security probes on (ns per open+close)', 'probes off', open.off, open.probes),
        medianRow('open/close loop, security probes vs bpftrace (ns per open+close)', 'bpftrace exec/exit/open script', open.bpftrace, open.probes),
      ],
      samples: { execUs: exec, openNs: open },
    };
  } finally {
    for (const program of programs) program.remove();
    rmSync(dir, { recursive: true, force: true });
  }
}
