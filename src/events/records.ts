// The records bpf/events.bpf.c writes to its ring buffer, decoded into plain
// objects. Layouts mirror the C structs there (little-endian, as the kernel
// writes them on the architectures we build for).
import { formatIp } from '../ip.js';
import { sanitizeLabelValue } from '../metrics/model.js';

/** enum pp_event_kind. */
export const eventKinds = { syscall: 1, tcp: 2 } as const;

/** struct pp_event: every record starts with it. */
export interface EventHeader {
  /** bpf_ktime_get_ns: CLOCK_MONOTONIC, as process.hrtime. */
  monotonicNs: bigint;
  cgroupId: bigint;
  /** 0 when the event happened outside the workload's own task (softirq). */
  pid: number;
  tid: number;
  comm: string;
}

export interface SyscallRecord extends EventHeader {
  kind: 'syscall';
  nr: number;
  ret: bigint;
  durationNs: bigint;
  /** The six argument registers at entry. */
  args: bigint[];
}

export const tcpEventTypes = { 1: 'state', 2: 'retransmit', 3: 'reset_received' } as const;

export interface TcpRecord extends EventHeader {
  kind: 'tcp';
  type: (typeof tcpEventTypes)[keyof typeof tcpEventTypes];
  family: 4 | 6;
  oldState: number;
  newState: number;
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
}

export type EventRecord = SyscallRecord | TcpRecord;

const headerSize = 48;
const syscallRecordSize = headerSize + 72;
const tcpRecordSize = headerSize + 40;
const afInet = 2;
const afInet6 = 10;

/**
 * Kernel strings are NUL-padded and may end inside a multi-byte character
 * (undecodable bytes become U+FFFD); a task's comm is whatever bytes it set
 * (prctl PR_SET_NAME): made text as label values are, so one event stays one line.
 */
function kernelString(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  return sanitizeLabelValue(bytes.subarray(0, end < 0 ? bytes.length : end).toString('utf8'));
}

function decodeHeader(record: Buffer): EventHeader {
  return {
    monotonicNs: record.readBigUInt64LE(0),
    cgroupId: record.readBigUInt64LE(8),
    pid: record.readUInt32LE(16),
    tid: record.readUInt32LE(20),
    comm: kernelString(record.subarray(32, 48)),
  };
}

/** One record; undefined for a kind or size this agent does not know (a newer or older BPF object). */
export function decodeRecord(record: Buffer): EventRecord | undefined {
  if (record.length < headerSize) return undefined;
  const kind = record.readUInt32LE(24);
  if (kind === eventKinds.syscall && record.length >= syscallRecordSize) {
    return {
      kind: 'syscall',
      ...decodeHeader(record),
      nr: record.readUInt32LE(48),
      ret: record.readBigInt64LE(56),
      durationNs: record.readBigUInt64LE(64),
      args: Array.from({ length: 6 }, (_, i) => record.readBigUInt64LE(72 + i * 8)),
    };
  }
  if (kind === eventKinds.tcp && record.length >= tcpRecordSize) {
    const type = tcpEventTypes[record[48] as keyof typeof tcpEventTypes];
    const familyCode = record[49];
    if (!type || (familyCode !== afInet && familyCode !== afInet6)) return undefined;
    const family = familyCode === afInet ? 4 : 6;
    return {
      kind: 'tcp',
      ...decodeHeader(record),
      type,
      family,
      oldState: record[50]!,
      newState: record[51]!,
      sourcePort: record.readUInt16LE(52),
      destinationPort: record.readUInt16LE(54),
      source: formatIp(family, record.subarray(56, 72)),
      destination: formatIp(family, record.subarray(72, 88)),
    };
  }
  return undefined;
}

/** A batch from the addon's ring buffer reader: records, each behind its u32 length. */
export function* splitBatch(batch: Buffer): Generator<Buffer> {
  let offset = 0;
  while (offset + 4 <= batch.length) {
    const length = batch.readUInt32LE(offset);
    offset += 4;
    if (offset + length > batch.length) return;
    yield batch.subarray(offset, offset + length);
    offset += length;
  }
}

/** include/net/tcp_states.h. */
export const tcpStateNames: Readonly<Record<number, string>> = {
  1: 'ESTABLISHED',
  2: 'SYN_SENT',
  3: 'SYN_RECV',
  4: 'FIN_WAIT1',
  5: 'FIN_WAIT2',
  6: 'TIME_WAIT',
  7: 'CLOSE',
  8: 'CLOSE_WAIT',
  9: 'LAST_ACK',
  10: 'LISTEN',
  11: 'CLOSING',
  12: 'NEW_SYN_RECV',
};
