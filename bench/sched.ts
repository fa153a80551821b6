// The sched collector's cost per program run against an equivalent bpftrace
// run-queue-latency script (a per-pid wait start, a per-cgroup log2
// histogram) on the same tracepoints, under the same context-switch load,
// in interleaved rounds; and the ping-pong's time per round trip with the
// collector attached versus without.
import type { NativeAddon } from '../src/bpf/addon.js';
import { schedCollector } from '../src/collectors/sched.js';
import { execChecked } from '../test/helpers/proc.js';
import { compileC } from '../test/helpers/workload.js';
import { startBpftrace } from './bpftrace.js';
import { collectorContext, medianRow, withTarget, nsPerRun, runTotals, type BenchOptions, type BenchSection } from './common.js';

/** Two processes bounce a byte over pipes N times (two wakeups and switches per round trip); prints the mean ns per round trip. */
const pingPongSource = `
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  int there[2], back[2];
  char c = 0;
  struct timespec a, b;
  if (pipe(there) || pipe(back)) return 1;
  if (fork() == 0) {
    for (long i = 0; i < n; i++) { if (read(there[0], &c, 1) != 1 || write(back[1], &c, 1) != 1) return 1; }
    return 0;
  }
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) { if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1) return 1; }
  clock_gettime(CLOCK_MONOTONIC, &b);
  wait(NULL);
  printf("%.1f\\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
  return 0;
}
`;

const runqlatScript = `
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @qtime[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0) { @qtime[args->prev_pid] = nsecs; }
  $ns = @qtime[args->next_pid];
  if ($ns) { @usecs[cgroup] = hist((nsecs - $ns) / 1000); }
  delete(@qtime[args->next_pid]);
}
`;

export async function benchSched(addon: NativeAddon, opts: BenchOptions): Promise<BenchSection> {
  const pingPong = await compileC('ping-pong', pingPongSource);
  const roundTrips = opts.quick ? 20_000 : 200_000;
  /** Runs the load; resolves with its ns per round trip. */
  const load = async (): Promise<number> => Number(await execChecked(pingPong.binary, [String(roundTrips)], { timeoutMs: 120_000 }));
  try {
    const cost = { bpftrace: [] as number[], collector: [] as number[] };
    const stats = addon.enableStats();
    try {
      for (let round = 0; round < opts.rounds; round++) {
        const collector = schedCollector(collectorContext(addon));
        await collector.start();
        try {
          const before = runTotals(collector.programs());
          await load();
          cost.collector.push(nsPerRun(before, runTotals(collector.programs())));
        } finally {
          await collector.stop();
        }

        const bpftrace = await startBpftrace(runqlatScript, 3);
        try {
          const before = await bpftrace.totals();
          await load();
          cost.bpftrace.push(nsPerRun(before, await bpftrace.totals()));
        } finally {
          await bpftrace.stop();
        }
      }
    } finally {
      addon.disableStats(stats);
    }

    // Workload slowdown, statistics off, interleaved.
    const roundTripNs = { without: [] as number[], with: [] as number[] };
    for (let round = 0; round < opts.rounds; round++) {
      roundTripNs.without.push(await load());
      const collector = schedCollector(collectorContext(addon));
      await collector.start();
      try {
        roundTripNs.with.push(await load());
      } finally {
        await collector.stop();
      }
    }
    return {
      rows: [
        withTarget(medianRow('sched programs per run (ns, bpf_stats)', 'bpftrace run-queue latency script', cost.bpftrace, cost.collector), 'ratio ≤ 1/3', (r) => r.ratio <= 1 / 3),
        medianRow('pipe ping-pong (ns per round trip, 2 context switches)', 'no agent', roundTripNs.without, roundTripNs.with),
      ],
      samples: { schedCost: cost, pingPongNs: roundTripNs },
    };
  } finally {
    pingPong.remove();
  }
}
