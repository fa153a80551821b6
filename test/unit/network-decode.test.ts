import t from 'tap';
import type { MapDump } from '../../src/bpf/addon.js';
import { connDecoder, connFinished, connKeySize, connValueSize, decodeTraffic, encodeIfaceConfig, l3OffsetFor, tcpFlagDecoder, tcpFlagKeySize, tcpFlagNames, trafficKeySize } from '../../src/collectors/network-decode.js';
import { formatIp } from '../../src/ip.js';
import { selectKeys } from '../../src/bpf/maps.js';

function key(cgroupId: bigint, ifindex: number, direction: number, protocol: number, family: number): Buffer {
  const b = Buffer.alloc(trafficKeySize);
  b.writeBigUInt64LE(cgroupId, 0);
  b.writeUInt32LE(ifindex, 8);
  b[12] = direction;
  b[13] = protocol;
  b[14] = family;
  return b;
}

/** Per-CPU values: [bytes, packets] for each CPU, 16 bytes apart. */
function values(perCpu: [number, number][]): Buffer {
  const b = Buffer.alloc(16 * perCpu.length);
  perCpu.forEach(([bytes, packets], cpu) => {
    b.writeBigUInt64LE(BigInt(bytes), cpu * 16);
    b.writeBigUInt64LE(BigInt(packets), cpu * 16 + 8);
  });
  return b;
}

t.test('decodes keys and sums per-CPU values', async (t) => {
  const cpus = 3;
  const dump: MapDump = {
    count: 2,
    keySize: 16,
    valueSize: 16 * cpus,
    keys: Buffer.concat([key(0n, 7, 1, 1, 4), key(123456789012n, 0, 0, 3, 6)]),
    values: Buffer.concat([
      values([
        [100, 1],
        [200, 2],
        [300, 3],
      ]),
      values([
        [2 ** 40, 5],
        [0, 0],
        [1, 1],
      ]),
    ]),
  };
  const [a, b] = decodeTraffic(dump, cpus);
  t.same(a, { index: 0, cgroupId: 0n, ifindex: 7, direction: 'egress', protocol: 'tcp', family: 4, bytes: 600, packets: 6 });
  t.same(b, { index: 1, cgroupId: 123456789012n, ifindex: 0, direction: 'ingress', protocol: 'icmp', family: 6, bytes: 2 ** 40 + 1, packets: 6 });
  t.same(selectKeys(dump, [1]), key(123456789012n, 0, 0, 3, 6));
});

t.test('unknown enum values fall back instead of throwing', async (t) => {
  const dump: MapDump = { count: 1, keySize: 16, valueSize: 16, keys: key(0n, 1, 9, 9, 9), values: values([[1, 1]]) };
  const [entry] = decodeTraffic(dump, 1);
  t.equal(entry?.protocol, 'other');
  t.equal(entry?.family, 0);
});

t.test('a layout mismatch is an error, not garbage', async (t) => {
  const dump: MapDump = { count: 1, keySize: 12, valueSize: 16, keys: Buffer.alloc(12), values: Buffer.alloc(16) };
  t.throws(() => decodeTraffic(dump, 1), /key is 12 bytes, expected 16/);
});

t.test('interface config', async (t) => {
  t.same([...encodeIfaceConfig(0, 14)], [0, 14, 0, 0]);
  t.equal(l3OffsetFor(1), 14, 'Ethernet');
  t.equal(l3OffsetFor(772), 14, 'loopback');
  t.equal(l3OffsetFor(65534), 0, 'tun/wireguard');
});

t.test('decodes the 5-tuple flow table: ports in network order, both directions, flags, opener', async (t) => {
  const key = Buffer.alloc(connKeySize);
  key.writeBigUInt64LE(0n, 0);
  key.writeUInt32LE(7, 8);
  key[12] = 6;
  key[13] = 6; // TCP
  key.writeUInt16BE(40000, 14);
  key.writeUInt16BE(443, 16);
  key.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 20);
  key.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3], 36);
  const value = Buffer.alloc(connValueSize);
  value.writeBigUInt64LE(1_000n, 0);
  value.writeBigUInt64LE(5_000n, 8);
  value.writeBigUInt64LE(1500n, 16); // ingress bytes
  value.writeBigUInt64LE(300n, 24); // egress bytes
  value.writeBigUInt64LE(3n, 32);
  value.writeBigUInt64LE(4n, 40);
  value[48] = 0x12; // ingress: SYN+ACK
  value[49] = 0x11; // egress: FIN+ACK
  value[50] = 1; // opened by egress
  const entry = connDecoder({ count: 1, keySize: connKeySize, valueSize: connValueSize, keys: key, values: value })(0);
  t.same(
    { ...entry, localAddress: formatIp(6, entry.localAddress), remoteAddress: formatIp(6, entry.remoteAddress) },
    {
      index: 0,
      cgroupId: 0n,
      ifindex: 7,
      family: 6,
      ipProtocol: 6,
      localPort: 40000,
      remotePort: 443,
      localAddress: 'fd00::2',
      remoteAddress: 'fd00::3',
      firstSeenNs: 1_000n,
      lastSeenNs: 5_000n,
      bytes: { ingress: 1500, egress: 300 },
      packets: { ingress: 3, egress: 4 },
      tcpFlags: { ingress: 0x12, egress: 0x11 },
      openedBy: 'egress',
    },
  );
  t.same(tcpFlagNames(0x12), ['syn', 'ack']);
  t.equal(connFinished(entry), false, 'a FIN one way only: still open');
  t.equal(connFinished({ ipProtocol: 6, tcpFlags: { ingress: 0x11, egress: 0x11 } }), true, 'a FIN each way: finished');
  t.equal(connFinished({ ipProtocol: 6, tcpFlags: { ingress: 0x04, egress: 0 } }), true, 'a reset: finished');
  t.equal(connFinished({ ipProtocol: 17, tcpFlags: { ingress: 0xff, egress: 0xff } }), false, 'UDP ends only by idling');
  t.throws(() => connDecoder({ count: 0, keySize: connKeySize, valueSize: 64, keys: Buffer.alloc(0), values: Buffer.alloc(0) }), /net_conns entries are 56\+64 bytes/);
});

t.test('decodes SYN/FIN/RST counts summed over CPUs', async (t) => {
  const key = Buffer.alloc(tcpFlagKeySize);
  key.writeBigUInt64LE(42n, 0);
  key[12] = 1;
  key[13] = 2;
  const values = Buffer.alloc(16);
  values.writeBigUInt64LE(3n, 0);
  values.writeBigUInt64LE(4n, 8);
  const entry = tcpFlagDecoder({ count: 1, keySize: tcpFlagKeySize, valueSize: 16, keys: key, values }, 2)(0);
  t.same(entry, { index: 0, cgroupId: 42n, ifindex: 0, direction: 'egress', flag: 'rst', segments: 7 });
});
