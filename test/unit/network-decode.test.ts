import t from 'tap';
import type { MapDump } from '../../src/bpf/addon.js';
import { decodeTraffic, encodeIfaceConfig, l3OffsetFor, trafficKeySize } from '../../src/collectors/network-decode.js';
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
