// A collection's first step at scale: the addon's batch read of a big map.
// Two copies of the syscalls collector's objects are loaded (not attached, so
// nothing but this writes them): one syscall_stats filled with synthetic
// entries (test/helpers/syscall-table.ts, one per syscall slot of empty
// cgroups), the other left empty. Rounds interleave the read of the full map,
// of the empty one (the floor: one batch call's fixed cost) and a
// `bpftool map dump` of the full one (a peer: libbpf's per-key walk, and
// printing), normalized per 10,000 entries.
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { bpfObjectDir, type BpfObject, type NativeAddon } from '../src/bpf/addon.js';
import { execChecked } from '../test/helpers/proc.js';
import { fillSyscallMap, syntheticSlots, syntheticWorkloads } from '../test/helpers/syscall-table.js';
import { median, type BenchOptions, type BenchSection } from './common.js';

function loadSyscallObject(addon: NativeAddon, maxEntries: number): { object: BpfObject; mapId: number } {
  const object = new addon.BpfObject(path.join(bpfObjectDir, 'syscalls.bpf.o'));
  object.setMapMaxEntries('syscall_stats', maxEntries);
  object.load();
  const map = object.maps().find((m) => m.name === 'syscall_stats');
  if (!map) throw new Error('syscalls.bpf.o has no syscall_stats map');
  return { object, mapId: map.id };
}

async function timed(run: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await run();
  return performance.now() - started;
}

export async function benchMaps(addon: NativeAddon, opts: BenchOptions): Promise<BenchSection> {
  const target = opts.quick ? 10_000 : 50_000;
  const rounds = opts.quick ? 3 : 5 * opts.rounds;
  const workloads = syntheticWorkloads(Math.ceil(target / syntheticSlots.length));
  const full = loadSyscallObject(addon, target * 2);
  const empty = loadSyscallObject(addon, target * 2);
  try {
    const entries = await fillSyscallMap(full.mapId, workloads);
    const read = await full.object.readMap('syscall_stats');
    if (read.count !== entries) throw new Error(`the batch read found ${read.count} entries of the ${entries} written`);
    const per10k = (ms: number) => (ms * 10_000) / entries;
    const samples = { addon: [] as number[], addonCpu: [] as number[], empty: [] as number[], bpftool: [] as number[] };
    for (let i = 0; i < rounds; i++) {
      // CPU time too (this process's, the read's worker thread included): on a loaded machine the wall clock is mostly waiting.
      const cpu = process.cpuUsage();
      samples.addon.push(per10k(await timed(() => full.object.readMap('syscall_stats'))));
      const used = process.cpuUsage(cpu);
      samples.addonCpu.push(per10k((used.user + used.system) / 1000));
      samples.empty.push(await timed(() => empty.object.readMap('syscall_stats')));
      samples.bpftool.push(per10k(await timed(() => execChecked('bpftool', ['map', 'dump', 'id', String(full.mapId), '-j'], { timeoutMs: 120_000 }))));
    }
    const value = median(samples.addon);
    const label = `${entries.toLocaleString('en-US')} per-CPU entries`;
    return {
      rows: [
        { measure: 'map read per 10k entries (ms, addon batch read)', baseline: `empty map read (ms); ${label}`, base: median(samples.empty), value, ratio: value / median(samples.empty) },
        { measure: 'map read CPU per 10k entries (ms, addon batch read)', baseline: 'its wall clock (ms)', base: value, value: median(samples.addonCpu), ratio: median(samples.addonCpu) / value },
        { measure: 'map read per 10k entries vs bpftool (ms)', baseline: `bpftool map dump -j per 10k; ${label}`, base: median(samples.bpftool), value, ratio: value / median(samples.bpftool) },
      ],
      samples: { maps: { ...samples, entries: [entries] } },
    };
  } finally {
    full.object.close();
    empty.object.close();
    await workloads.remove();
  }
}
