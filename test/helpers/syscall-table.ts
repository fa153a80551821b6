// A big kernel table for scale tests and benchmarks: empty cgroup v2
// directories (distinct workloads with real cgroup ids) and, for each, one
// syscall_stats entry per syscall slot written into a live agent's map with
// bpftool (the agent's maps are not pinned; bpftool reaches them by id).
// Every entry is a known value, so what /metrics shows can be checked exactly.
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AgentProcess } from './agent.js';
import { cgroup2Root, removeCgroupTree } from './cgroups.js';
import { execChecked } from './proc.js';
import { syscallSlots } from '../../src/collectors/syscalls.js';
import { defaultTrackedSyscalls } from '../../src/collectors/syscall-table.js';
import { histogramSlots } from '../../src/metrics/histogram.js';
import type { AgentStatus } from '../../src/api/service.js';

/** The syscall slots of the default tracked set, in kernel order ("other" first). */
export const syntheticSlots = syscallSlots(defaultTrackedSyscalls).names;

/** Series one entry makes in /metrics: calls, errors, and a histogram (26 buckets, +Inf, sum, count). */
export const seriesPerEntry = 2 + 26 + 3;

/** What is written for workload w and syscall slot s (bpftool gives every CPU the same value). */
export function syntheticValue(w: number, s: number) {
  return { calls: 1000 + w * 100 + s, errors: s, fast: w + 1, slow: s + 1, sumNs: 1_000_000 * (w + 1) + s };
}

function hex(bytes: Buffer): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

/** struct syscall_key and struct syscall_value of bpf/syscalls.bpf.c, as bpftool hex. */
function entryHex(cgroupId: bigint, slot: number, w: number): string {
  const key = Buffer.alloc(16);
  key.writeBigUInt64LE(cgroupId, 0);
  key.writeUInt32LE(slot, 8);
  const v = syntheticValue(w, slot);
  const value = Buffer.alloc(16 + (histogramSlots + 1) * 8);
  value.writeBigUInt64LE(BigInt(v.calls), 0);
  value.writeBigUInt64LE(BigInt(v.errors), 8);
  value.writeBigUInt64LE(BigInt(v.fast), 16 + 10 * 8); // slot 10: [2^10, 2^11) ns
  value.writeBigUInt64LE(BigInt(v.slow), 16 + 20 * 8); // slot 20: [2^20, 2^21) ns
  value.writeBigUInt64LE(BigInt(v.sumNs), 16 + histogramSlots * 8);
  return `key hex ${hex(key)} value hex ${hex(value)}`;
}

export interface SyntheticWorkloads {
  /** Directory name under the cgroup root; workload w's cgroup label is `/${name}/w${w}`. */
  name: string;
  ids: bigint[];
  /** Creates more workloads (before the agent's next cgroup walk finds them). */
  grow(count: number): void;
  remove(): Promise<void>;
}

export function syntheticWorkloads(count: number): SyntheticWorkloads {
  const name = `pp-scale-${process.pid}`;
  const parent = path.join(cgroup2Root(), name);
  mkdirSync(parent);
  const ids: bigint[] = [];
  const grow = (more: number) => {
    for (let i = 0; i < more; i++) {
      const dir = path.join(parent, `w${ids.length}`);
      mkdirSync(dir);
      ids.push(statSync(dir, { bigint: true }).ino); // a cgroup v2 directory's inode number is its cgroup id
    }
  };
  grow(count);
  return { name, ids, grow, remove: () => removeCgroupTree(parent) };
}

async function syscallStatsMapId(agent: AgentProcess): Promise<number> {
  const status = (await (await fetch(`${agent.url}/api/v1/status`)).json()) as AgentStatus;
  const mapIds = new Set<number>();
  for (const program of status.collectors.find((c) => c.name === 'syscalls')?.programs ?? []) {
    const shown = JSON.parse(await execChecked('bpftool', ['prog', 'show', 'id', String(program.id), '-j'])) as { map_ids?: number[] };
    for (const id of shown.map_ids ?? []) mapIds.add(id);
  }
  for (const id of mapIds) {
    const { name } = JSON.parse(await execChecked('bpftool', ['map', 'show', 'id', String(id), '-j'])) as { name: string };
    if (name === 'syscall_stats') return id;
  }
  throw new Error(`no syscall_stats among the maps of the syscalls programs (${[...mapIds].join(', ')})`);
}

/** Writes an entry per slot for workloads [from, ids.length) into the agent's syscall_stats; returns how many. */
export async function fillSyscallStats(agent: AgentProcess, workloads: SyntheticWorkloads, from = 0): Promise<number> {
  return fillSyscallMap(await syscallStatsMapId(agent), workloads, from);
}

/** Likewise into any map shaped like syscall_stats, by kernel map id. */
export async function fillSyscallMap(mapId: number, workloads: SyntheticWorkloads, from = 0): Promise<number> {
  const lines: string[] = [];
  for (let w = from; w < workloads.ids.length; w++) {
    for (let s = 0; s < syntheticSlots.length; s++) lines.push(`map update id ${mapId} ${entryHex(workloads.ids[w]!, s, w)}`);
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-scale-'));
  try {
    writeFileSync(path.join(dir, 'batch'), `${lines.join('\n')}\n`);
    await execChecked('bpftool', ['batch', 'file', path.join(dir, 'batch')], { timeoutMs: 120_000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return lines.length;
}
