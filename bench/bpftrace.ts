// bpftrace as a peer: a script run as bpftrace runs it, its programs found by
// id in bpftool and their kernel run-time statistics read the same way as ours.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execChecked } from '../test/helpers/proc.js';
import { waitFor } from '../test/helpers/wait.js';

interface BpftoolProgram {
  id: number;
  type: string;
  run_time_ns?: number;
  run_cnt?: number;
}

async function listPrograms(): Promise<BpftoolProgram[]> {
  return JSON.parse(await execChecked('bpftool', ['prog', 'show', '-j'])) as BpftoolProgram[];
}

export interface Bpftrace {
  /** Run count and run time of its programs so far. */
  totals(): Promise<{ runs: number; timeNs: number }>;
  stop(): Promise<void>;
}

/** bpftrace running `script`; resolves once its `programs` tracepoint programs are loaded. */
export async function startBpftrace(script: string, programs: number): Promise<Bpftrace> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-bpftrace-'));
  const file = path.join(dir, 'script.bt');
  writeFileSync(file, script);
  const known = new Set((await listPrograms()).map((p) => p.id));
  const child: ChildProcess = spawn('bpftrace', [file], { stdio: 'ignore' });
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      // SIGKILL: on SIGINT bpftrace prints its maps, which takes long for a per-cgroup histogram.
      child.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const ids = await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`bpftrace exited with ${child.exitCode}`);
        const fresh = (await listPrograms()).filter((p) => p.type === 'tracepoint' && !known.has(p.id));
        return fresh.length >= programs ? new Set(fresh.map((p) => p.id)) : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 200, what: 'bpftrace to load its programs' },
    );
    return {
      totals: async () => {
        const mine = (await listPrograms()).filter((p) => ids.has(p.id));
        return { runs: mine.reduce((n, p) => n + (p.run_cnt ?? 0), 0), timeNs: mine.reduce((n, p) => n + (p.run_time_ns ?? 0), 0) };
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
