// Decoding helpers for map dumps: per-CPU values are one slot per possible
// CPU, each `stride` bytes apart, which userspace sums.
import type { BpfObject, MapDump } from './addon.js';

/** Sum over CPUs of the u64 at `fieldOffset` of entry `index`. */
export function sumPerCpuU64(dump: MapDump, index: number, fieldOffset: number, stride: number, cpus: number): number {
  const base = index * dump.valueSize + fieldOffset;
  let total = 0n;
  for (let cpu = 0; cpu < cpus; cpu++) total += dump.values.readBigUInt64LE(base + cpu * stride);
  return Number(total);
}

/** Concatenates the keys of the selected entries, as deleteKeys() takes them. */
export function selectKeys(dump: MapDump, indexes: readonly number[]): Buffer {
  const out = Buffer.allocUnsafe(indexes.length * dump.keySize);
  indexes.forEach((index, i) => dump.keys.copy(out, i * dump.keySize, index * dump.keySize, (index + 1) * dump.keySize));
  return out;
}

/** Slots of the `pp_stats` array every object declares (bpf/probepilot.h). */
export const ppStatSlots = { droppedMapFull: 0, eventsRingBufferFull: 1, eventsRateLimited: 2 } as const;

/** Sums a slot of the object's pp_stats per-CPU array. */
export function readPpStat(object: BpfObject, slot: number, cpus: number): number {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(slot);
  const value = object.lookup('pp_stats', key);
  if (!value) return 0;
  let total = 0n;
  for (let cpu = 0; cpu < cpus; cpu++) total += value.readBigUInt64LE(cpu * 8);
  return Number(total);
}
