// Decoding of the ring buffer's records and the checks every transport
// applies to an event stream request.
import t from 'tap';
import { decodeRecord, splitBatch } from '../../src/events/records.js';
import { ringBufferSize } from '../../src/events/pipeline.js';
import { formatIp } from '../../src/ip.js';
import { eventStreamRequest } from '../../src/api/service.js';

function header(kind: number, size: number): Buffer {
  const record = Buffer.alloc(size);
  record.writeBigUInt64LE(123_456_789n, 0);
  record.writeBigUInt64LE(4242n, 8);
  record.writeUInt32LE(77, 16);
  record.writeUInt32LE(78, 20);
  record.writeUInt32LE(kind, 24);
  record.write('worker\0garbage', 32, 'latin1');
  return record;
}

t.test('a syscall record', async (t) => {
  const record = header(1, 120);
  record.writeUInt32LE(257, 48);
  record.writeBigInt64LE(-2n, 56);
  record.writeBigUInt64LE(1500n, 64);
  for (let i = 0; i < 6; i++) record.writeBigUInt64LE(BigInt(i * 16), 72 + i * 8);
  t.same(decodeRecord(record), {
    kind: 'syscall',
    monotonicNs: 123_456_789n,
    cgroupId: 4242n,
    pid: 77,
    tid: 78,
    comm: 'worker',
    nr: 257,
    ret: -2n,
    durationNs: 1500n,
    args: [0n, 16n, 32n, 48n, 64n, 80n],
  });
});

t.test('a TCP record, IPv4 and IPv6', async (t) => {
  const v4 = header(2, 88);
  v4[48] = 1;
  v4[49] = 2;
  v4[50] = 2;
  v4[51] = 1;
  v4.writeUInt16LE(40000, 52);
  v4.writeUInt16LE(443, 54);
  v4.set([198, 18, 0, 2], 56);
  v4.set([198, 18, 0, 3], 72);
  t.match(decodeRecord(v4), { kind: 'tcp', type: 'state', family: 4, oldState: 2, newState: 1, source: '198.18.0.2', sourcePort: 40000, destination: '198.18.0.3', destinationPort: 443 });
  const v6 = header(2, 88);
  v6[48] = 2;
  v6[49] = 10;
  v6.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 56);
  v6.set([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 72);
  t.match(decodeRecord(v6), { type: 'retransmit', family: 6, source: 'fd00::1', destination: '2001:db8:1::2' });
});

t.test('records of an unknown kind, size or family are not decoded', async (t) => {
  t.equal(decodeRecord(Buffer.alloc(20)), undefined, 'shorter than a header');
  t.equal(decodeRecord(header(9, 120)), undefined, 'unknown kind');
  t.equal(decodeRecord(header(1, 100)), undefined, 'a syscall record cut short');
  const badFamily = header(2, 88);
  badFamily[48] = 1;
  badFamily[49] = 1;
  t.equal(decodeRecord(badFamily), undefined, 'AF_UNIX is no TCP family');
});

t.test('a kernel comm cut inside a UTF-8 character decodes to valid text', async (t) => {
  const record = header(1, 120);
  record.fill(0, 32, 48);
  Buffer.from('wörker-ñame-éé', 'utf8').copy(record, 32, 0, 16); // 16 bytes end in half of "é"
  const decoded = decodeRecord(record);
  t.ok(decoded && decoded.comm.isWellFormed() && decoded.comm.startsWith('wörker-ñame-'), JSON.stringify(decoded?.comm));
});

t.test('a comm with control characters, quotes and bytes that are no UTF-8 is one line of valid text', async (t) => {
  const record = header(1, 120);
  record.fill(0, 32, 48);
  Buffer.concat([Buffer.from('ev"l\\\n\x1b'), Buffer.from([0xff, 0xe2, 0x82]), Buffer.from('x')]).copy(record, 32);
  t.equal(decodeRecord(record)?.comm, 'ev"l\\\ufffd\ufffd\ufffd\ufffdx', 'quotes and backslashes kept (JSON escapes them), newline, escape and each bad sequence U+FFFD');
});

t.test('a batch splits into its records; a truncated tail is left out', async (t) => {
  const a = Buffer.from('first');
  const b = Buffer.from('second!');
  const batch = Buffer.concat([Buffer.from([5, 0, 0, 0]), a, Buffer.from([7, 0, 0, 0]), b, Buffer.from([9, 0, 0, 0, 1])]);
  t.same([...splitBatch(batch)].map((r) => r.toString()), ['first', 'second!']);
});

t.test('IPv6 text follows RFC 5952', async (t) => {
  const bytes = (groups: number[]) => Uint8Array.from(groups.flatMap((g) => [g >> 8, g & 0xff]));
  t.equal(formatIp(6, bytes([0, 0, 0, 0, 0, 0, 0, 1])), '::1');
  t.equal(formatIp(6, bytes([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1])), '2001:db8::1:0:0:1', 'the first of two equal runs');
  t.equal(formatIp(6, bytes([0x2001, 0xdb8, 0, 1, 1, 1, 1, 1])), '2001:db8:0:1:1:1:1:1', 'one zero group stays');
  t.equal(formatIp(6, bytes([0, 0, 0, 0, 0, 0, 0, 0])), '::');
  t.equal(formatIp(4, Uint8Array.from([10, 0, 0, 1])), '10.0.0.1');
});

t.test('the ring buffer size is a power of two of at least a page', async (t) => {
  t.equal(ringBufferSize(65536), 65536);
  t.equal(ringBufferSize(100_000), 131072);
  t.equal(ringBufferSize(1), 4096);
});

t.test('event stream requests: what each field allows', async (t) => {
  t.same(eventStreamRequest({ types: [], syscalls: [] }), { types: [] }, 'the agent\'s own events');
  t.same(eventStreamRequest({ types: ['syscall', 'syscall'], pod: 'web-0', syscalls: ['openat', 'openat'] }), { types: ['syscall'], pod: 'web-0', syscalls: ['openat'] }, 'duplicates fold');
  t.throws(() => eventStreamRequest({ types: ['files'], syscalls: [] }), /^types: unknown files; the types are collector, interface, pod, syscall, network, security$/);
  t.throws(() => eventStreamRequest({ types: ['pod'], namespace: 'shop', syscalls: [] }), /^namespace filters traces/);
  t.throws(() => eventStreamRequest({ types: ['network'], syscalls: ['openat'] }), /^syscalls filters the syscall trace/);
  t.throws(() => eventStreamRequest({ types: ['syscall'], syscalls: ['openat', 'nosuch'] }), /^syscalls: unknown nosuch; the syscalls are .*openat/);
  t.throws(() => eventStreamRequest({ types: ['syscall'], pod: 'a\nb', syscalls: [] }), /^pod must be printable text/);
  t.throws(() => eventStreamRequest({ types: ['syscall'], pod: 'x'.repeat(4097), syscalls: [] }), /^pod must be printable text of 1 to 4096/);
});

t.test('printable text: one rule for REST, gRPC and event streams', async (t) => {
  const { isPrintable, printablePattern } = await import('../../src/api/service.js');
  const { workloadQueryOf } = await import('../../src/api/grpc.js');
  const schema = new RegExp(printablePattern);
  for (const [value, ok] of [
    ['web-7f9c', true],
    ['kubepods.slice/a b/"quoted"\\', true],
    ['é中', true],
    ['', false],
    ['line\nbreak', false],
    ['tab\t', false],
    ['del\u007f', false],
    ['x'.repeat(4096), true],
    ['x'.repeat(4097), false],
  ] as const) {
    t.equal(isPrintable(value), ok, JSON.stringify(value.slice(0, 20)));
    // The REST schema pattern agrees (its length limits are the schema's maxLength).
    if (value.length <= 4096) t.equal(schema.test(value), ok, `pattern ${JSON.stringify(value.slice(0, 20))}`);
  }
  // gRPC: empty is "not set"; a control character is refused naming the field.
  t.same(workloadQueryOf({ namespace: '', pod: '', sort: '', limit: 0 }).sort, 'rx');
  t.throws(() => workloadQueryOf({ namespace: 'a\nb', pod: '', sort: '', limit: 0 }), /namespace must be printable/);
  t.throws(() => eventStreamRequest({ types: ['syscall'], pod: 'a\u0001', syscalls: [] }), /pod must be printable/);
});
