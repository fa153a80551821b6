// Decoders of bpf/dns.bpf.c's maps and the DNS code names, without a kernel;
// and the tests' own DNS codec against hand-built wire bytes.
import t from 'tap';
import { decodeCode, encodePorts, expiredQueries, keyIfindex, pendingValueSize, qtypeLabel, qtypeLabels, rcodeLabel, rcodeLabels } from '../../src/collectors/dns-decode.js';
import { encodeQuery, encodeResponse, parseQuery } from '../helpers/dns.js';
import type { MapDump } from '../../src/bpf/addon.js';

t.test('query types and response codes have bounded names', async (t) => {
  t.same(
    [1, 2, 5, 6, 12, 15, 16, 28, 33, 255].map(qtypeLabel),
    ['A', 'NS', 'CNAME', 'SOA', 'PTR', 'MX', 'TXT', 'AAAA', 'SRV', 'ANY'],
  );
  // 0 is what the kernel folds unnamed types into; 257 (CAA) and 65535 are not named
  for (const qtype of [0, 3, 257, 65535]) t.equal(qtypeLabel(qtype), 'other', `qtype ${qtype}`);
  t.same([0, 1, 2, 3, 4, 5].map(rcodeLabel), ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED']);
  for (let rcode = 6; rcode < 16; rcode++) t.equal(rcodeLabel(rcode), 'other', `rcode ${rcode}`);
  t.equal(new Set(qtypeLabels).size, 11, '10 named query types and other');
  t.equal(new Set(rcodeLabels).size, 7, '6 named response codes and other');
});

t.test('code keys: cgroup id, ifindex, code', async (t) => {
  const key = Buffer.alloc(16);
  key.writeBigUInt64LE(0x1234n, 0);
  key.writeUInt32LE(7, 8);
  key.writeUInt16LE(28, 12);
  t.equal(decodeCode(key), 28);
  t.equal(keyIfindex(key), 7);
  t.throws(() => decodeCode(Buffer.alloc(12)), /12 bytes, expected 16/);
});

t.test('ports fill the object\'s array, at most 8', async (t) => {
  const out = encodePorts([53, 5353]);
  t.equal(out.length, 16);
  t.same([out.readUInt16LE(0), out.readUInt16LE(2), out.readUInt16LE(4)], [53, 5353, 0]);
  t.throws(() => encodePorts([]), /expected 1 to 8/);
  t.throws(() => encodePorts([1, 2, 3, 4, 5, 6, 7, 8, 9]), /got 9/);
});

t.test('expired queries are the ones sent before the cutoff, grouped by workload', async (t) => {
  const sent = [100n, 250n, 90n, 400n];
  const workloads = [1, 2, 1, 1];
  const values = Buffer.alloc(sent.length * pendingValueSize);
  sent.forEach((ns, i) => {
    values.writeBigUInt64LE(ns, i * pendingValueSize);
    values.writeUInt32LE(workloads[i]!, i * pendingValueSize + 16); // ifindex of the asking pod's veth
  });
  const dump: MapDump = { count: sent.length, keySize: 40, valueSize: pendingValueSize, keys: Buffer.alloc(sent.length * 40), values };
  const { indexes, byWorkload } = expiredQueries(dump, 300n);
  t.same(indexes, [0, 1, 2]);
  t.same([...byWorkload.values()].sort(), [1, 2], 'two of workload 1, one of workload 2');
  t.throws(() => expiredQueries({ ...dump, valueSize: 16 }, 0n), /expected 24/);
});

t.test('the test codec: a query for example.com AAAA is the RFC 1035 wire form, the answer echoes it', async (t) => {
  const query = encodeQuery(0xbeef, 'example.com', 28);
  t.equal(query.toString('hex'), 'beef01000001000000000000' + '076578616d706c6503636f6d00' + '001c0001');
  t.same(parseQuery(query), { id: 0xbeef, name: 'example.com', qtype: 28, end: query.length });
  const answer = encodeResponse(query, 3);
  t.equal(answer.readUInt16BE(2), 0x8183, 'QR, RD, RA and NXDOMAIN');
  t.same(answer.subarray(4), query.subarray(4), 'the question is echoed');
});
