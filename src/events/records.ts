// The records bpf/events.bpf.c writes to its ring buffer, decoded into plain
// objects. Layouts mirror the C structs there (little-endian, as the kernel
// writes them on the architectures we build for).
import { formatIp } from '../ip.js';
import { sanitizeLabelValue } from '../metrics/model.js';
import { decodedSize, readDecoded, type SyscallDecoded } from './syscall-args.js';

/** enum pp_event_kind. */
export const eventKinds = { syscall: 1, tcp: 2, security: 3 } as const;

/** enum pp_security_op. */
export const securityOps = {
  1: 'exec',
  2: 'exit',
  3: 'open_write',
  4: 'open_read',
  5: 'unlink',
  6: 'rename',
  7: 'chmod',
  8: 'setuid',
  9: 'setgid',
  10: 'setuid_exec',
  11: 'ptrace',
  12: 'module_load',
  13: 'mount',
  14: 'bpf_prog_load',
  15: 'connect',
  16: 'listen',
} as const;
export type SecurityOp = (typeof securityOps)[keyof typeof securityOps];

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
  /** What sys_enter read from user memory, for syscalls with a decode class (src/events/syscall-args.ts). */
  decoded?: SyscallDecoded;
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

export interface SecurityRecord extends EventHeader {
  kind: 'security';
  op: SecurityOp;
  uid: number;
  euid: number;
  ppid: number;
  parentComm: string;
  /** Exit status (wait(2) form), open flags, chmod mode, ptrace target, mount flags; 0 when the op has none. */
  arg: bigint;
  /** connect: the peer; listen: the local address. */
  family?: 4 | 6;
  address?: string;
  port?: number;
  path: string;
  /** exec: argv; rename: the new name; mount: the source. */
  args: string[];
}

export type EventRecord = SyscallRecord | TcpRecord | SecurityRecord;

const headerSize = 48;
const syscallRecordSize = headerSize + 72;
const tcpRecordSize = headerSize + 40;
const securityPathMax = 256;
const securityRecordSize = headerSize + 64 + 2 * securityPathMax;
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
      ...(record.length >= syscallRecordSize + decodedSize ? { decoded: readDecoded(record.subarray(syscallRecordSize)) } : {}),
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
  if (kind === eventKinds.security && record.length >= securityRecordSize) return decodeSecurity(record);
  return undefined;
}

function decodeSecurity(record: Buffer): SecurityRecord | undefined {
  const op = securityOps[record.readUInt32LE(48) as keyof typeof securityOps];
  if (!op) return undefined;
  const familyCode = record[74];
  const family = familyCode === afInet ? 4 : familyCode === afInet6 ? 6 : undefined;
  const argsLength = Math.min(record.readUInt32LE(76), securityPathMax);
  const argsBytes = record.subarray(368, 368 + securityPathMax);
  // argv is NUL-separated and may be cut at the bound; other ops carry one string.
  const args =
    op === 'exec'
      ? argsBytes
          .subarray(0, argsLength)
          .toString('utf8')
          .split('\0')
          .filter((arg, i, all) => arg !== '' || i < all.length - 1)
          .map(sanitizeLabelValue)
      : [kernelString(argsBytes)].filter((arg) => arg !== '');
  return {
    kind: 'security',
    ...decodeHeader(record),
    op,
    uid: record.readUInt32LE(52),
    euid: record.readUInt32LE(56),
    ppid: record.readUInt32LE(60),
    arg: record.readBigInt64LE(64),
    ...(family ? { family, address: formatIp(family, record.subarray(80, 96)), port: record.readUInt16LE(72) } : {}),
    parentComm: kernelString(record.subarray(96, 112)),
    path: kernelString(record.subarray(112, 112 + securityPathMax)),
    args,
  };
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
