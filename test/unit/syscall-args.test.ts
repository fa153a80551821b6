// Decoded syscall arguments: the record's tail as the kernel writes it, and
// each argument as strace shows it.
import t from 'tap';
import { decodeRecord } from '../../src/events/records.js';
import { decodeClassEntries, decodedSize, formatOpenFlags, formatSockaddr, formatSyscallArgs, readDecoded, type SyscallDecoded } from '../../src/events/syscall-args.js';
import { syscallNumbers } from '../../src/collectors/syscall-table.js';
import { renderTraceEvent } from '../../src/client.js';
import type { SyscallTraceEvent } from '../../src/api/events.js';

/** struct pp_syscall_decoded with first[] and second[] as given. */
function tail(decodeClass: number, first: Buffer, second: Buffer = Buffer.alloc(0), argc = 0): Buffer {
  const buffer = Buffer.alloc(decodedSize);
  buffer.writeUInt32LE(decodeClass, 0);
  buffer.writeUInt32LE(257, 4);
  buffer.writeUInt32LE(first.length, 8);
  buffer.writeUInt32LE(second.length, 12);
  buffer.writeUInt32LE(argc, 16);
  first.copy(buffer, 24);
  second.copy(buffer, 24 + 256);
  return buffer;
}

const cString = (s: string): Buffer => Buffer.from(`${s}\0`);
const decoded = (first: Buffer, second: Buffer = Buffer.alloc(0), argc = 0): SyscallDecoded => readDecoded(tail(1, first, second, argc))!;

t.test('a syscall record with a decoded tail, and one without', async (t) => {
  const record = Buffer.alloc(120 + decodedSize);
  record.writeUInt32LE(1, 24);
  record.writeUInt32LE(257, 48);
  tail(2, cString('/etc/hosts')).copy(record, 120);
  const withTail = decodeRecord(record);
  t.equal(withTail?.kind, 'syscall');
  if (withTail?.kind !== 'syscall') return;
  t.equal(withTail.decoded?.decodeClass, 2);
  t.equal(withTail.decoded?.first.toString(), '/etc/hosts\0', 'first[] up to first_len (NUL included)');
  const plain = decodeRecord(record.subarray(0, 120));
  t.ok(plain?.kind === 'syscall' && plain.decoded === undefined, 'a record without the tail has no decoded arguments');
  t.equal(readDecoded(Buffer.alloc(decodedSize - 1)), undefined, 'a cut tail is not read');
  const huge = tail(6, Buffer.alloc(0));
  huge.writeUInt32LE(100_000, 8);
  huge.writeUInt32LE(100_000, 12);
  t.same([readDecoded(huge)!.first.length, readDecoded(huge)!.second.length], [256, 512], 'lengths are clamped to the arrays');
});

t.test('open flags, fds and modes', async (t) => {
  t.equal(formatOpenFlags(0n), 'O_RDONLY');
  t.equal(formatOpenFlags(0o1101n), 'O_WRONLY|O_CREAT|O_TRUNC');
  t.equal(formatOpenFlags(0o2000002n), 'O_RDWR|O_CLOEXEC');
  t.equal(formatOpenFlags(0o20000000n | 0o2000n), 'O_RDONLY|O_APPEND|020000000', 'unknown bits as octal');
  const atFdcwd = BigInt.asUintN(64, -100n);
  t.same(formatSyscallArgs('openat', [atFdcwd, 0x7ffen, 0o101n, 0o640n, 0n, 0n], decoded(cString('/tmp/x'))), ['AT_FDCWD', '"/tmp/x"', 'O_WRONLY|O_CREAT', '0640'], 'a mode only with O_CREAT');
  t.same(formatSyscallArgs('openat', [3n, 0x7ffen, 0n, 0o777n, 0n, 0n], decoded(cString('rel'))), ['3', '"rel"', 'O_RDONLY']);
  t.same(formatSyscallArgs('unlinkat', [atFdcwd, 1n, 0x200n, 0n, 0n, 0n], decoded(cString('/d'))), ['AT_FDCWD', '"/d"', 'AT_REMOVEDIR']);
  t.same(formatSyscallArgs('chmod', [1n, 0o4755n, 0n, 0n, 0n, 0n], decoded(cString('/bin/x'))), ['"/bin/x"', '04755']);
  t.same(formatSyscallArgs('close', [7n, 0n, 0n, 0n, 0n, 0n], undefined), ['7']);
  t.same(formatSyscallArgs('lseek', [3n, BigInt.asUintN(64, -5n), 2n, 0n, 0n, 0n], undefined), ['3', '-5', 'SEEK_END']);
  t.equal(formatSyscallArgs('getppid', [0n, 0n, 0n, 0n, 0n, 0n], undefined), undefined, 'no decoding: the raw registers stay what is shown');
  t.same(formatSyscallArgs('openat', [atFdcwd, 0x7ffen, 0n, 0n, 0n, 0n], undefined), ['AT_FDCWD', '0x7ffe', 'O_RDONLY'], 'a path the kernel could not read stays a pointer');
});

t.test('paths are quoted as C strings; renames carry both', async (t) => {
  t.same(formatSyscallArgs('rename', [1n, 2n, 0n, 0n, 0n, 0n], decoded(cString('a "b"'), cString('c\\d'))), ['"a \\"b\\""', '"c\\\\d"']);
  const atFdcwd = BigInt.asUintN(64, -100n);
  t.same(formatSyscallArgs('renameat2', [atFdcwd, 1n, 5n, 2n, 1n, 0n], decoded(cString('/x'), cString('/y'))), ['AT_FDCWD', '"/x"', '5', '"/y"', '0x1']);
  t.same(formatSyscallArgs('unlink', [1n, 0n, 0n, 0n, 0n, 0n], decoded(Buffer.from('/cut-without-nul'))), ['"/cut-without-nul"'], 'a path cut at the bound');
  t.same(formatSyscallArgs('unlink', [1n, 0n, 0n, 0n, 0n, 0n], decoded(Buffer.from([0x2f, 0xc3, 0x00]))), ['"/\uFFFD"'], 'a multi-byte character cut in half is replaced');
});

t.test('socket addresses: IPv4, IPv6, AF_UNIX paths and abstract names', async (t) => {
  const v4 = Buffer.alloc(16);
  v4.writeUInt16LE(2, 0);
  v4.writeUInt16BE(443, 2);
  v4.set([198, 18, 0, 7], 4);
  t.equal(formatSockaddr(v4), '{AF_INET, 198.18.0.7:443}');
  const v6 = Buffer.alloc(28);
  v6.writeUInt16LE(10, 0);
  v6.writeUInt16BE(22, 2);
  v6.set([0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3], 8);
  t.equal(formatSockaddr(v6), '{AF_INET6, [2001:2:0:1::3]:22}');
  const unix = Buffer.alloc(110);
  unix.writeUInt16LE(1, 0);
  unix.write('/run/app.sock', 2);
  t.equal(formatSockaddr(unix), '{AF_UNIX, "/run/app.sock"}');
  const abstract = Buffer.concat([Buffer.from([1, 0, 0]), Buffer.from('pp-abstract')]);
  t.equal(formatSockaddr(abstract), '{AF_UNIX, @pp-abstract}');
  t.equal(formatSockaddr(Buffer.from([16, 0, 0, 0])), '{family=16}', 'another family by number');
  t.equal(formatSockaddr(Buffer.alloc(1)), '{}', 'too short to hold a family');
  t.same(formatSyscallArgs('connect', [3n, 1n, 16n, 0n, 0n, 0n], decoded(v4)), ['3', '{AF_INET, 198.18.0.7:443}', '16']);
});

t.test('execve: the path and argv, cut at 8 entries', async (t) => {
  const argv = (args: string[]): Buffer => Buffer.from(args.map((a) => `${a}\0`).join(''));
  t.same(formatSyscallArgs('execve', [1n, 2n, 0x10n, 0n, 0n, 0n], decoded(cString('/bin/sh'), argv(['sh', '-c', 'echo hi']), 3)), ['"/bin/sh"', '["sh", "-c", "echo hi"]', '0x10']);
  const eight = Array.from({ length: 8 }, (_, i) => `a${i}`);
  t.same(formatSyscallArgs('execve', [1n, 2n, 3n, 0n, 0n, 0n], decoded(cString('/x'), argv(eight), 8))?.[1], `[${eight.map((a) => `"${a}"`).join(', ')}, ...]`, 'the bound is shown');
  t.same(formatSyscallArgs('execve', [1n, 2n, 3n, 0n, 0n, 0n], decoded(cString('/x'), Buffer.from('cut-at-the-byte-bound'), 1))?.[1], '["cut-at-the-byte-bound"]', 'an entry cut at the byte bound');
});

t.test('every syscall with a decode class is known to the table on x86-64, and the kernel gets their numbers', async (t) => {
  const entries = decodeClassEntries('x64');
  const names = ['open', 'creat', 'unlink', 'chmod', 'openat', 'openat2', 'unlinkat', 'fchmodat', 'fchmodat2', 'rename', 'renameat', 'renameat2', 'connect', 'bind', 'execve', 'execveat'];
  const { numbers, missing } = syscallNumbers(names, 'x64');
  t.same(missing, []);
  t.same(new Map(entries.map((e) => [e.nr, e.decodeClass])).get(numbers.get('execve')!), 6, 'execve reads its path and argv');
  t.equal(entries.length, names.length);
  t.ok(decodeClassEntries('arm64').every((e) => e.nr !== numbers.get('open')), 'arm64 has no open(2): only the calls it has');
});

t.test('the CLI prints decoded calls as strace does, raw registers otherwise', async (t) => {
  const base: SyscallTraceEvent = { type: 'syscall', time: '2026-12-02T03:00:00.123Z', workload: { cgroup: '/pod' }, pid: 5, tid: 5, comm: 'cat', syscall: 'openat', nr: 257, ret: 3, durationSeconds: 0.000002, args: ['0xffffffffffffff9c', '0x7ffe', '0x0', '0x0', '0x0', '0x0'] };
  t.equal(renderTraceEvent({ ...base, syscall: 'openat', decodedArgs: ['AT_FDCWD', '"/etc/hosts"', 'O_RDONLY'] }), '03:00:00.123  /pod  cat[5/5]  openat(AT_FDCWD, "/etc/hosts", O_RDONLY) = 3  2.0µs\n');
  t.equal(renderTraceEvent({ ...base, syscall: 'getppid', ret: 1 }), '03:00:00.123  /pod  cat[5/5]  getppid(0xffffffffffffff9c, 0x7ffe, 0x0, …) = 1  2.0µs\n');
});
