// Decoded syscall arguments, the way strace shows them: the kernel reads the
// user memory a syscall's decode class names (paths, a sockaddr, argv) at
// sys_enter, only for those syscalls (bpf/events.bpf.c, syscall_decode), and
// every argument is rendered here from that and the raw registers (fds,
// AT_FDCWD, open flags, modes).
import { formatIp } from '../ip.js';
import { sanitizeLabelValue } from '../metrics/model.js';
import { syscallNumbers, type SyscallArch } from '../collectors/syscall-table.js';

/** enum pp_decode_class in bpf/events.bpf.c. */
const decodeClasses = {
  path0: 1,
  path1: 2,
  path0and1: 3,
  path1and3: 4,
  sockaddr1: 5,
  execve: 6,
  execveat: 7,
} as const;
type DecodeClass = keyof typeof decodeClasses;

/** What each syscall with user memory to read reads; the kernel is told by number. */
const classOf: Readonly<Record<string, DecodeClass>> = {
  open: 'path0',
  creat: 'path0',
  unlink: 'path0',
  chmod: 'path0',
  openat: 'path1',
  openat2: 'path1',
  unlinkat: 'path1',
  fchmodat: 'path1',
  fchmodat2: 'path1',
  rename: 'path0and1',
  renameat: 'path1and3',
  renameat2: 'path1and3',
  connect: 'sockaddr1',
  bind: 'sockaddr1',
  execve: 'execve',
  execveat: 'execveat',
};

/** The (syscall number, class number) pairs for the kernel's syscall_decode map on arch. */
export function decodeClassEntries(arch: SyscallArch): Array<{ nr: number; decodeClass: number }> {
  const { numbers } = syscallNumbers(Object.keys(classOf), arch);
  return [...numbers].map(([name, nr]) => ({ nr, decodeClass: decodeClasses[classOf[name]!] }));
}

/** struct pp_syscall_decoded, as records.ts reads it off a syscall record's tail. */
export interface SyscallDecoded {
  decodeClass: number;
  /** The path, or the sockaddr's bytes for connect/bind. */
  first: Buffer;
  /** The second path, or argv NUL-separated. */
  second: Buffer;
  argc: number;
}

/** The layout's sizes (bpf/events.bpf.c). */
export const decodedHeaderSize = 24;
export const decodedStringMax = 256;
export const decodedSize = decodedHeaderSize + 3 * decodedStringMax;

export function readDecoded(tail: Buffer): SyscallDecoded | undefined {
  if (tail.length < decodedSize) return undefined;
  const firstLength = Math.min(tail.readUInt32LE(8), decodedStringMax);
  const secondLength = Math.min(tail.readUInt32LE(12), 2 * decodedStringMax);
  return {
    decodeClass: tail.readUInt32LE(0),
    first: tail.subarray(decodedHeaderSize, decodedHeaderSize + firstLength),
    second: tail.subarray(decodedHeaderSize + decodedStringMax, decodedHeaderSize + decodedStringMax + secondLength),
    argc: tail.readUInt32LE(16),
  };
}

/** A C string as strace quotes it: escapes for quotes, backslashes and bytes that are not printable. */
function quote(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  const text = sanitizeLabelValue(bytes.subarray(0, end < 0 ? bytes.length : end).toString('utf8'));
  return JSON.stringify(text);
}

function argv(bytes: Buffer, argc: number): string {
  const parts: string[] = [];
  let offset = 0;
  for (let i = 0; i < argc && offset < bytes.length; i++) {
    const end = bytes.indexOf(0, offset);
    parts.push(quote(bytes.subarray(offset, end < 0 ? bytes.length : end)));
    offset = end < 0 ? bytes.length : end + 1;
  }
  return `[${parts.join(', ')}${argc >= 8 ? ', ...' : ''}]`;
}

const afUnix = 1;
const afInet = 2;
const afInet6 = 10;

/** struct sockaddr_{un,in,in6} as strace abbreviates them. */
export function formatSockaddr(bytes: Buffer): string {
  if (bytes.length < 2) return '{}';
  const family = bytes.readUInt16LE(0);
  if (family === afInet && bytes.length >= 8) return `{AF_INET, ${formatIp(4, bytes.subarray(4, 8))}:${bytes.readUInt16BE(2)}}`;
  if (family === afInet6 && bytes.length >= 24) return `{AF_INET6, [${formatIp(6, bytes.subarray(8, 24))}]:${bytes.readUInt16BE(2)}}`;
  if (family === afUnix) {
    const path = bytes.subarray(2);
    // An abstract socket's name starts with a NUL and is not NUL-terminated.
    if (path[0] === 0 && path.length > 1) return `{AF_UNIX, @${quote(path.subarray(1)).slice(1, -1)}}`;
    return `{AF_UNIX, ${quote(path)}}`;
  }
  return `{family=${family}}`;
}

const atFdcwd = -100;

function fd(raw: bigint): string {
  const value = Number(BigInt.asIntN(32, raw));
  return value === atFdcwd ? 'AT_FDCWD' : String(value);
}

/** open(2) flags (x86-64 and arm64 values of the common ones; the rest as octal). */
const openFlags: ReadonlyArray<[number, string]> = [
  [0o100, 'O_CREAT'],
  [0o200, 'O_EXCL'],
  [0o400, 'O_NOCTTY'],
  [0o1000, 'O_TRUNC'],
  [0o2000, 'O_APPEND'],
  [0o4000, 'O_NONBLOCK'],
  [0o10000, 'O_DSYNC'],
  [0o200000, 'O_DIRECTORY'],
  [0o400000, 'O_NOFOLLOW'],
  [0o2000000, 'O_CLOEXEC'],
];

export function formatOpenFlags(raw: bigint): string {
  let flags = Number(raw & 0xffffffffn);
  const names = [['O_RDONLY', 'O_WRONLY', 'O_RDWR', 'O_ACCMODE'][flags & 3]!];
  flags &= ~3;
  for (const [bit, name] of openFlags) {
    if (flags & bit) {
      names.push(name);
      flags &= ~bit;
    }
  }
  if (flags) names.push(`0${flags.toString(8)}`);
  return names.join('|');
}

function mode(raw: bigint): string {
  return `0${Number(raw & 0o7777n).toString(8).padStart(3, '0')}`;
}

function hex(raw: bigint): string {
  return `0x${raw.toString(16)}`;
}

/**
 * The arguments of syscall `name` as strace shows them, or undefined when the
 * agent has no decoding for it (the raw registers stay what a client shows).
 */
export function formatSyscallArgs(name: string, args: readonly bigint[], decoded: SyscallDecoded | undefined): string[] | undefined {
  const a = (i: number): bigint => args[i] ?? 0n;
  // Without what the kernel read (a fault, an older object), the path stays the pointer it was.
  const first = (register: number): string => (decoded ? quote(decoded.first) : hex(a(register)));
  const second = (register: number): string => (decoded ? quote(decoded.second) : hex(a(register)));
  switch (name) {
    case 'open':
      return [first(0), formatOpenFlags(a(1)), ...(a(1) & 0o100n ? [mode(a(2))] : [])];
    case 'creat':
      return [first(0), mode(a(1))];
    case 'openat':
      return [fd(a(0)), first(1), formatOpenFlags(a(2)), ...(a(2) & 0o100n ? [mode(a(3))] : [])];
    case 'openat2':
      return [fd(a(0)), first(1), hex(a(2)), String(a(3))];
    case 'unlink':
      return [first(0)];
    case 'unlinkat':
      return [fd(a(0)), first(1), a(2) & 0x200n ? 'AT_REMOVEDIR' : String(a(2))];
    case 'chmod':
      return [first(0), mode(a(1))];
    case 'fchmodat':
      return [fd(a(0)), first(1), mode(a(2))];
    case 'fchmodat2':
      return [fd(a(0)), first(1), mode(a(2)), hex(a(3))];
    case 'rename':
      return [first(0), second(1)];
    case 'renameat':
      return [fd(a(0)), first(1), fd(a(2)), second(3)];
    case 'renameat2':
      return [fd(a(0)), first(1), fd(a(2)), second(3), hex(a(4))];
    case 'connect':
    case 'bind':
      return [fd(a(0)), decoded ? formatSockaddr(decoded.first) : hex(a(1)), String(a(2))];
    case 'execve':
      return [first(0), decoded ? argv(decoded.second, decoded.argc) : hex(a(1)), hex(a(2))];
    case 'execveat':
      return [fd(a(0)), first(1), decoded ? argv(decoded.second, decoded.argc) : hex(a(2)), hex(a(3)), hex(a(4))];
    case 'close':
    case 'fsync':
    case 'fdatasync':
      return [fd(a(0))];
    case 'read':
    case 'write':
      return [fd(a(0)), hex(a(1)), String(a(2))];
    case 'lseek':
      return [fd(a(0)), String(BigInt.asIntN(64, a(1))), ['SEEK_SET', 'SEEK_CUR', 'SEEK_END'][Number(a(2))] ?? String(a(2))];
    default:
      return undefined;
  }
}
