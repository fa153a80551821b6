// The sched collector's cost per program run against an equivalent bpftrace
// run-queue-latency script (a per-pid wait start, a per-cgroup log2
// histogram) on the same tracepoints, under the same context-switch load,
// in interleaved rounds. bpftrace's programs are found by id in bpftool.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { NativeAddon } from '../src/bpf/addon.js';
import { schedCollector } from '../src/collectors/sched.js';
import { execChecked } from '../test/helpers/proc.js';
import { waitFor } from '../test/helpers/wait.js';
import { compileC } from '../test/helpers/workload.js';
import { collectorContext, medianRow, nsPerRun, runTotals, type BenchOptions, type BenchSection } from './common.js';

/** Two processes bounce a byte over pipes N times: two wakeups and switches per round trip. */
const pingPongSource = `
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  int there[2], back[2];
  char c = 0;
  if (pipe(there) || pipe(back)) return 1;
  if (fork() == 0) {
    for (long i = 0; i < n; i++) { if (read(there[0], &c, 1) != 1 || write(back[1], &c, 1) != 1) return 1; }
    return 0;
  }
  for (long i = 0; i < n; i++) { if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1) return 1; }
  wait(NULL);
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

interface BpftoolProgram {
  id: number;
  type: string;
  run_time_ns?: number;
  run_cnt?: number;
}

async function listPrograms(): Promise<BpftoolProgram[]> {
  return JSON.parse(await execChecked('bpftool', ['prog', 'show', '-j'])) as BpftoolProgram[];
}

/** bpftrace running the script; resolves once its three programs are loaded. */
async function startBpftrace(scriptFile: string): Promise<{ child: ChildProcess; ids: Set<number> }> {
  const known = new Set((await listPrograms()).map((p) => p.id));
  const child = spawn('bpftrace', [scriptFile], { stdio: 'ignore' });
  const ids = await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`bpftrace exited with ${child.exitCode}`);
      const fresh = (await listPrograms()).filter((p) => p.type === 'tracepoint' && !known.has(p.id));
      return fresh.length >= 3 ? new Set(fresh.map((p) => p.id)) : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 200, what: 'bpftrace to load its programs' },
  );
  return { child, ids };
}

async function bpftraceTotals(ids: Set<number>): Promise<{ runs: number; timeNs: number }> {
  const programs = (await listPrograms()).filter((p) => ids.has(p.id));
  return { runs: programs.reduce((n, p) => n + (p.run_cnt ?? 0), 0), timeNs: programs.reduce((n, p) => n + (p.run_time_ns ?? 0), 0) };
}

export async function benchSched(addon: NativeAddon, opts: BenchOptions): Promise<BenchSection> {
  const pingPong = await compileC('ping-pong', pingPongSource);
  const scriptDir = mkdtempSync(path.join(os.tmpdir(), 'pp-runqlat-'));
  const scriptFile = path.join(scriptDir, 'runqlat.bt');
  writeFileSync(scriptFile, runqlatScript);
  const load = () => execChecked(pingPong.binary, [String(opts.quick ? 20_000 : 200_000)], { timeoutMs: 120_000 });
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

        const bpftrace = await startBpftrace(scriptFile);
        try {
          const before = await bpftraceTotals(bpftrace.ids);
          await load();
          cost.bpftrace.push(nsPerRun(before, await bpftraceTotals(bpftrace.ids)));
        } finally {
          const { child } = bpftrace;
          if (child.exitCode === null && child.signalCode === null) {
            const exited = once(child, 'exit');
            child.kill('SIGKILL');
            await exited;
          }
        }
      }
    } finally {
      addon.disableStats(stats);
    }
    return {
      rows: [medianRow('sched programs per run (ns, bpf_stats)', 'bpftrace run-queue latency script', cost.bpftrace, cost.collector)],
      samples: { schedCost: cost },
    };
  } finally {
    pingPong.remove();
    rmSync(scriptDir, { recursive: true, force: true });
  }
}
