import t from 'tap';
import type { BpfObject } from '../../src/bpf/addon.js';
import { PeerDirectory } from '../../src/collectors/network-peers.js';
import { PeerClass, encodePeerAddress, peerAddressId } from '../../src/collectors/network-decode.js';
import type { PeerPod, Peers } from '../../src/identity/identity.js';
import { parseIp } from '../../src/ip.js';

/** The two peer maps as the kernel would hold them, keyed by hex. */
class FakeMaps {
  readonly maps = new Map<string, Map<string, number>>([
    ['net_peer_addresses', new Map()],
    ['net_peer_cidrs', new Map()],
  ]);

  update(map: string, key: Buffer, value: Buffer): void {
    this.maps.get(map)!.set(key.toString('hex'), value.readUInt16LE());
  }

  deleteKeys(map: string, keys: Buffer): number {
    const entries = this.maps.get(map)!;
    const size = map === 'net_peer_addresses' ? 20 : 24;
    let deleted = 0;
    for (let i = 0; i < keys.length; i += size) deleted += entries.delete(keys.subarray(i, i + size).toString('hex')) ? 1 : 0;
    return deleted;
  }

  classOf(address: string): number | undefined {
    const ip = parseIp(address)!;
    return this.maps.get('net_peer_addresses')!.get(encodePeerAddress(ip.family, ip.bytes).toString('hex'));
  }
}

function idOf(address: string): string {
  const ip = parseIp(address)!;
  const bytes = new Uint8Array(16);
  bytes.set(ip.bytes);
  return peerAddressId(ip.family, bytes);
}

const pod = (namespace: string, name: string, workload: string): PeerPod => ({ namespace, pod: name, workload });
const peers = (pods: ReadonlyMap<string, PeerPod>, nodes: readonly string[] = []): Peers => ({ pods, nodes: new Set(nodes) });

t.test('configured CIDR names are numbered after the built-in classes; "node" is the built-in node class', async (t) => {
  const fake = new FakeMaps();
  const directory = new PeerDirectory([{ name: 'node', cidr: '192.0.2.7/24' }, { name: 'corp', cidr: 'fd00:1::/48' }], 'workload', 1024);
  directory.installCidrs(fake as unknown as BpfObject);
  const cidrs = [...fake.maps.get('net_peer_cidrs')!];
  // prefixlen (8 + bits, little endian), family, address with host bits cleared, padding.
  t.same(cidrs, [
    [`20000000` + `04` + `c0000200` + '0'.repeat(24) + '000000', PeerClass.node],
    [`38000000` + `06` + `fd000001000000000000000000000000` + '000000', PeerClass.firstNamed],
  ]);
  t.same(directory.labelsOf(PeerClass.firstNamed, ''), { labels: { peer_namespace: '', peer_workload: '', peer_class: 'corp' }, current: true });
  t.same(directory.labelsOf(PeerClass.node, '').labels.peer_class, 'node');
  t.same(directory.labelsOf(PeerClass.world, '').labels.peer_class, 'world');
  t.same(directory.labelsOf(99, '').labels.peer_class, 'world', 'a class the agent never configured reads as world');
});

t.test('pods and the node\'s own addresses go into the kernel by exact address', async (t) => {
  const fake = new FakeMaps();
  const maps = fake as unknown as BpfObject;
  const directory = new PeerDirectory([], 'workload', 1024);
  const pods = new Map([
    ['10.1.0.5', pod('shop', 'web-1', 'web')],
    ['fd00:10::5', pod('shop', 'web-1', 'web')],
    ['127.0.0.1', pod('kube-system', 'host-net', 'proxy')],
  ]);
  directory.sync(maps, peers(pods));
  t.equal(fake.classOf('10.1.0.5'), PeerClass.pod);
  t.equal(fake.classOf('fd00:10::5'), PeerClass.pod);
  t.equal(fake.classOf('127.0.0.1'), PeerClass.host, 'the node\'s address stays the host even when a pod claims it');
  t.same(directory.labelsOf(PeerClass.pod, idOf('fd00:10::5')), { labels: { peer_namespace: 'shop', peer_workload: 'web', peer_class: 'pod' }, current: true });

  t.equal(directory.sync(maps, peers(pods)), false, 'nothing to do when nothing changed');

  // web-1 goes away and its IPv4 address is reused by another pod.
  directory.sync(maps, peers(new Map([['10.1.0.5', pod('batch', 'job-x', 'report')]])));
  t.equal(fake.classOf('fd00:10::5'), undefined, 'a departed pod\'s address leaves the kernel map');
  t.same(directory.labelsOf(PeerClass.pod, idOf('fd00:10::5')), { labels: { peer_namespace: 'shop', peer_workload: 'web', peer_class: 'pod' }, current: false }, 'entries of a departed address are retired under their old labels');
  t.same(directory.labelsOf(PeerClass.pod, idOf('10.1.0.5')).current, false, 'a reused address: old entries retire first');
  directory.forgetDeparted();
  t.same(directory.labelsOf(PeerClass.pod, idOf('10.1.0.5')), { labels: { peer_namespace: 'batch', peer_workload: 'report', peer_class: 'pod' }, current: true }, 'then it names its new pod');
  t.same(directory.labelsOf(PeerClass.pod, idOf('fd00:10::5')), { labels: { peer_namespace: 'unknown', peer_workload: 'unknown', peer_class: 'pod' }, current: false });
});

t.test('peer_pod instead of peer_workload, and a bounded address map', async (t) => {
  const fake = new FakeMaps();
  const hostAddresses = fake.maps.get('net_peer_addresses')!;
  const byPod = new PeerDirectory([], 'pod', 1024);
  byPod.sync(fake as unknown as BpfObject, peers(new Map([['10.1.0.5', pod('shop', 'web-1', 'web')]])));
  t.same(byPod.labelsOf(PeerClass.pod, idOf('10.1.0.5')).labels, { peer_namespace: 'shop', peer_pod: 'web-1', peer_class: 'pod' });

  const room = hostAddresses.size; // the node's addresses plus web-1
  const small = new FakeMaps();
  const bounded = new PeerDirectory([], 'workload', room);
  const many = new Map(Array.from({ length: 5 }, (_, i) => [`10.2.0.${i + 1}`, pod('ns', `p${i}`, 'w')] as const));
  t.equal(bounded.sync(small as unknown as BpfObject, peers(many)), true, 'reports addresses left out');
  t.equal(small.maps.get('net_peer_addresses')!.size, room, 'never more entries than maxPeers');
  t.equal(bounded.overflow, 4, 'the node\'s addresses and one pod fit, four pods did not');
});

t.test('the cluster\'s other nodes are the node class; pods and this node come first', async (t) => {
  const fake = new FakeMaps();
  const maps = fake as unknown as BpfObject;
  const directory = new PeerDirectory([], 'workload', 1024);
  directory.sync(maps, peers(new Map([['10.1.0.5', pod('shop', 'web-1', 'web')]]), ['192.0.2.10', 'fd00:2::10', '10.1.0.5', '127.0.0.1']));
  t.equal(fake.classOf('192.0.2.10'), PeerClass.node, 'another node\'s address');
  t.equal(fake.classOf('fd00:2::10'), PeerClass.node, 'IPv6 too');
  t.equal(fake.classOf('10.1.0.5'), PeerClass.pod, 'a pod address stays the pod');
  t.equal(fake.classOf('127.0.0.1'), PeerClass.host, 'this node\'s own address stays the host');
  t.same(directory.labelsOf(PeerClass.node, '').labels, { peer_namespace: '', peer_workload: '', peer_class: 'node' });
  directory.sync(maps, peers(new Map(), []));
  t.equal(fake.classOf('192.0.2.10'), undefined, 'a node that left the cluster leaves the map');
});
