import t from 'tap';
import { parseIp, parsePrefix } from '../../src/ip.js';

const hex = (bytes: Uint8Array | undefined) => (bytes ? Buffer.from(bytes).toString('hex') : undefined);

t.test('addresses become network-order bytes', async (t) => {
  t.equal(hex(parseIp('198.18.0.2')?.bytes), 'c6120002');
  t.equal(parseIp('198.18.0.2')?.family, 4);
  t.equal(hex(parseIp('fd00::2')?.bytes), 'fd000000000000000000000000000002');
  t.equal(hex(parseIp('::')?.bytes), '0'.repeat(32));
  t.equal(hex(parseIp('2001:db8:0:0:1:0:0:1')?.bytes), '20010db8000000000001000000000001');
  t.equal(hex(parseIp('1::')?.bytes), `0001${'0'.repeat(28)}`);
  t.equal(hex(parseIp('::ffff:192.0.2.1')?.bytes), '00000000000000000000ffffc0000201', 'embedded IPv4 tail');
  t.equal(hex(parseIp('fe80::1%eth0')?.bytes), 'fe800000000000000000000000000001', 'the zone is not part of the address');
  for (const bad of ['', 'eth0', '1.2.3', '256.1.1.1', '1:2:3', 'fd00::1::2']) t.equal(parseIp(bad), undefined, `rejects ${JSON.stringify(bad)}`);
});

t.test('prefixes clear their host bits', async (t) => {
  t.same(parsePrefix('10.1.2.3/8'), { family: 4, bytes: Uint8Array.from([10, 0, 0, 0]), length: 8 });
  t.equal(hex(parsePrefix('192.0.2.255/25')?.bytes), 'c0000280');
  t.equal(hex(parsePrefix('fd00:1:2:3::9/48')?.bytes), 'fd000001000200000000000000000000');
  t.equal(parsePrefix('192.0.2.1')?.length, 32, 'a bare address is a host prefix');
  t.equal(parsePrefix('::1')?.length, 128);
  for (const bad of ['10.0.0.0/33', 'fd00::/129', '10.0.0.0/', '10.0.0.0/x', '10.0.0.0/-1', 'x/8']) t.equal(parsePrefix(bad), undefined, `rejects ${bad}`);
});
