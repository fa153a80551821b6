// The syscalls collector's cost: per syscall (enter + exit) against empty
// programs on the same raw_syscalls hooks (kernel run-time statistics), and
// against a bpftrace per-cgroup, per-syscall count (a peer doing less: one
// program, no latency), and the slowdown of a getppid loop with the
// collector attached versus without, in interleaved rounds.
import path from 'node:path';
import { bpfObjectDir, type NativeAddon, type ProgramInfo } from '../src/bpf/addon.js';
import { syscallsCollector } from '../src/collectors/syscalls.js';
import { execChecked } from '../test/helpers/proc.js';
import { compileC } from '../test/helpers/workload.js';
import { startBpftrace } from './bpftrace.js';
import { collectorContext, medianRow, withTarget, nsPerRun, runTotals, type BenchOptions, type BenchSection } from './common.js';

/** Makes N getppid syscalls and prints the mean ns per call (clock_gettime is vDSO: no syscall of its own). */
const loopSource = `
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) syscall(SYS_getppid);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.3f\\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
  return 0;
}
`;

/** What the simplest per-workload syscall accounting in bpftrace looks like. */
const syscountScript = `tracepoint:raw_syscalls:sys_enter { @[cgroup, args->id] = count(); }\n`;

interface Attached {
  programs(): ProgramInfo[];
  detach(): Promise<void>;
}

function attachEmpty(addon: NativeAddon): Attached {
  const object = new addon.BpfObject(path.join(bpfObjectDir, 'empty_syscalls.bpf.o'));
  object.load();
  object.attachTracepoint('pp_empty_sys_enter', 'raw_syscalls', 'sys_enter');
  object.attachTracepoint('pp_empty_sys_exit', 'raw_syscalls', 'sys_exit');
  return { programs: () => object.programs(), detach: async () => object.close() };
}

async function attachCollector(addon: NativeAddon): Promise<Attached> {
  const collector = syscallsCollector(collectorContext(addon));
  await collector.start();
  return { programs: () => collector.programs(), detach: () => collector.stop() };
}

export async function benchSyscalls(addon: NativeAddon, opts: BenchOptions): Promise<BenchSection> {
  const loop = await compileC('getppid-loop', loopSource);
  const calls = opts.quick ? 300_000 : 2_000_000;
  const nsPerCall = async (): Promise<number> => Number(await execChecked(loop.binary, [String(calls)]));
  try {
    const cost = { empty: [] as number[], collector: [] as number[], bpftrace: [] as number[] };
    const stats = addon.enableStats();
    try {
      for (let round = 0; round < opts.rounds; round++) {
        for (const variant of ['empty', 'collector'] as const) {
          const attached = variant === 'empty' ? attachEmpty(addon) : await attachCollector(addon);
          try {
            const before = runTotals(attached.programs());
            await nsPerCall();
            // Two program runs (enter, exit) make one syscall.
            cost[variant].push(2 * nsPerRun(before, runTotals(attached.programs())));
          } finally {
            await attached.detach();
          }
        }
        const bpftrace = await startBpftrace(syscountScript, 1);
        try {
          const before = await bpftrace.totals();
          await nsPerCall();
          // One program run (enter) per syscall.
          cost.bpftrace.push(nsPerRun(before, await bpftrace.totals()));
        } finally {
          await bpftrace.stop();
        }
      }
    } finally {
      addon.disableStats(stats);
    }

    const loopNs = { without: [] as number[], with: [] as number[] };
    for (let round = 0; round < opts.rounds; round++) {
      loopNs.without.push(await nsPerCall());
      const attached = await attachCollector(addon);
      try {
        loopNs.with.push(await nsPerCall());
      } finally {
        await attached.detach();
      }
    }
    return {
      rows: [
        medianRow('syscall programs per syscall (ns, enter+exit, bpf_stats)', 'empty raw_syscalls programs', cost.empty, cost.collector),
        withTarget(medianRow('syscall programs per syscall vs bpftrace (ns, bpf_stats)', 'bpftrace per-cgroup syscall count', cost.bpftrace, cost.collector), 'ratio ≤ 1/3', (r) => r.ratio <= 1 / 3),
        medianRow('getppid loop (ns per call)', 'no agent', loopNs.without, loopNs.with),
      ],
      samples: { syscallCost: cost, getppidNs: loopNs },
    };
  } finally {
    loop.remove();
  }
}
