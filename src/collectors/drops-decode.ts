// Layout of bpf/drops.bpf.c's map and the names of drop reasons, decoded
// without the kernel so both can be unit-tested.
import { sanitizeLabelValue } from '../metrics/model.js';

/** struct drop_key: u64 cgroup id, u32 network namespace inode, u32 reason. */
export const dropKeySize = 16;

export interface DropKey {
  /** The socket's cgroup; 0 when the packet had none (see netnsInode). */
  cgroupId: bigint;
  /** With cgroupId 0: the network namespace the packet was in; 0 when unknown (the node). */
  netnsInode: number;
  /** enum skb_drop_reason. */
  reason: number;
}

export function decodeDropKey(key: Buffer): DropKey {
  if (key.length !== dropKeySize) throw new Error(`drop_counts key is ${key.length} bytes, expected ${dropKeySize}: object and agent disagree`);
  return { cgroupId: key.readBigUInt64LE(0), netnsInode: key.readUInt32LE(8), reason: key.readUInt32LE(12) };
}

/** The label of a reason number this kernel's enum does not name, so the label set stays bounded. */
export const unknownReason = 'unknown';

const reasonPrefix = 'SKB_DROP_REASON_';
/** Enumerators of enum skb_drop_reason that are bounds or masks, not reasons. */
const notReasons = new Set(['SKB_DROP_REASON_MAX', 'SKB_DROP_REASON_SUBSYS_MASK']);

/**
 * Reason numbers to labels, from the running kernel's enum skb_drop_reason
 * (as the addon's btfEnum reads it): SKB_DROP_REASON_NO_SOCKET → NO_SOCKET.
 * Numbers shift between kernel versions; names do not.
 */
export class DropReasonNames {
  private readonly labels = new Map<number, string>();
  /** SKB_CONSUMED: freed after use, not dropped (kernels ≥ 6.0); undefined on older kernels. */
  readonly consumed: number | undefined;

  constructor(enumerators: Readonly<Record<string, number | bigint>>) {
    let consumed: number | undefined;
    for (const [name, value] of Object.entries(enumerators)) {
      if (typeof value !== 'number') continue; // beyond 2^53: no reason number is
      if (name === 'SKB_CONSUMED') consumed = value;
      if (name.startsWith(reasonPrefix) && !notReasons.has(name) && !this.labels.has(value)) {
        this.labels.set(value, sanitizeLabelValue(name.slice(reasonPrefix.length)));
      }
    }
    this.consumed = consumed;
  }

  get size(): number {
    return this.labels.size;
  }

  label(reason: number): string {
    return this.labels.get(reason) ?? unknownReason;
  }
}
