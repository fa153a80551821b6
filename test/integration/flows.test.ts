// The peer matrix against an exact oracle: a client pod sends a known number
// of UDP datagrams of a known size to each kind of peer — a pod of this node
// the API server names (over IPv4 and IPv6), a pod of another node (named
// through the cluster-wide pod watch), another node's address (a Node
// object), an address in a configured CIDR name, the node itself, and an
// address nobody names (world). Each datagram is
// 14 (Ethernet) + 20 or 40 (IP) + 8 (UDP) + payload bytes at TC, so every
// flow counter has one right value, seen from both ends.
import t from 'tap';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { startAgent, type AgentProcess } from '../helpers/agent.js';
import { checkExposition, parseExposition, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { nodeObject, podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { waitFor } from '../helpers/wait.js';

const payload = 200;
const port = 9999;
const frame = { 4: 14 + 20 + 8 + payload, 6: 14 + 40 + 8 + payload } as const;

/** A UDP sink in the pod (dual-stack), so datagrams cause no ICMP errors; resolves once it is bound. */
async function udpSink(pod: Pod): Promise<() => void> {
  const script = `const s = require('node:dgram').createSocket('udp6'); s.on('message', () => {}); s.bind(${port}, '::', () => console.log('bound'));`;
  const child = pod.run(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout!, 'data');
  return () => child.kill();
}

/** Sends `count` datagrams to each target from inside the pod, one after the other. */
async function sendFrom(pod: Pod, targets: ReadonlyArray<{ address: string; count: number }>): Promise<void> {
  const script = `
    const dgram = require('node:dgram');
    const targets = ${JSON.stringify(targets)};
    (async () => {
      for (const { address, count } of targets) {
        const s = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
        for (let i = 0; i < count; i++) await new Promise((ok, fail) => s.send(Buffer.alloc(${payload}), ${port}, address, (e) => (e ? fail(e) : ok())));
        s.close();
      }
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const result = await pod.exec(process.execPath, ['-e', script]);
  if (result.code !== 0) throw new Error(`sender failed: ${result.stderr}`);
}

async function flowValues(agent: AgentProcess, filter: LabelFilter): Promise<{ bytes: number; packets: number }> {
  const families = parseExposition(await agent.metrics());
  return { bytes: sumSamples(families, 'probepilot_network_flow_bytes_total', filter), packets: sumSamples(families, 'probepilot_network_flow_packets_total', filter) };
}

t.test('per-peer bytes and packets match what was sent to each kind of peer', async (t) => {
  if (!requirePrivileges(t, 'the flow matrix with real pods')) return;
  const { api, kubeconfig } = await startFakeKubeApi(t);

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const client = await net.addPod();
  const server = await net.addPod();
  const lab = await net.addPod();
  const outsider = await net.addPod();
  const remote = await net.addPod();
  const otherNode = await net.addPod();
  api.upsertPod(podObject(client, { namespace: 'shop', name: 'client-0', owner: { kind: 'StatefulSet', name: 'client' } }));
  api.upsertPod(podObject(server, { namespace: 'db', name: 'pg-0', owner: { kind: 'StatefulSet', name: 'pg' } }));
  // A Deployment's pod on node-b: its workload comes from the ReplicaSet name minus the pod-template-hash.
  const remoteObject = podObject(remote, { namespace: 'edge', name: 'cache-7d9f8-x2k4p', owner: { kind: 'ReplicaSet', name: 'cache-7d9f8' }, node: 'node-b' });
  api.upsertPod({ ...remoteObject, metadata: { ...remoteObject.metadata, labels: { 'pod-template-hash': '7d9f8' } } });
  api.upsertNode(nodeObject('test-node', net.gatewayIpv4));
  api.upsertNode(nodeObject('node-b', otherNode.ipv4));

  const agent = await startAgent({
    env: {
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: 'test-node',
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      // The lab pod's address has a name; the outsider's has none (world).
      PROBEPILOT_COLLECTORS_NETWORK_FLOWS_PEER_CIDRS: `lab=${lab.ipv4}/32`,
      PROBEPILOT_KUBERNETES_CLUSTER_POD_PEERS: 'true',
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_TCP_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_BLOCK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_PROCESS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());

  const stops = await Promise.all([server, lab, outsider, remote, otherNode].map(udpSink));
  t.teardown(() => stops.forEach((stop) => stop()));
  const hostSink = createSocket('udp4');
  hostSink.bind(port, net.gatewayIpv4);
  await once(hostSink, 'listening');
  t.teardown(() => hostSink.close());

  // Neighbours resolved first (ARP is not IP, but IPv6 neighbour discovery is): only the datagrams change the counters below.
  for (const address of [server.ipv4, server.ipv6, lab.ipv4, outsider.ipv6, net.gatewayIpv4, remote.ipv6, otherNode.ipv4]) await client.exec('ping', ['-c', '1', '-W', '2', address]);

  const clientLabels = { namespace: 'shop', pod: 'client-0', workload: 'client', workload_kind: 'StatefulSet' };
  const peers = {
    pg: { peer_namespace: 'db', peer_workload: 'pg', peer_class: 'pod' },
    cache: { peer_namespace: 'edge', peer_workload: 'cache', peer_class: 'pod' },
    node: { peer_namespace: '', peer_workload: '', peer_class: 'node' },
    lab: { peer_namespace: '', peer_workload: '', peer_class: 'lab' },
    host: { peer_namespace: '', peer_workload: '', peer_class: 'host' },
    world: { peer_namespace: '', peer_workload: '', peer_class: 'world' },
  };
  const sends = [
    { what: 'pod pg over IPv4', address: server.ipv4, count: 37, family: 4, peer: peers.pg },
    { what: 'pod pg over IPv6', address: server.ipv6, count: 23, family: 6, peer: peers.pg },
    { what: 'CIDR name lab', address: lab.ipv4, count: 19, family: 4, peer: peers.lab },
    { what: 'a pod of another node (IPv6)', address: remote.ipv6, count: 13, family: 6, peer: peers.cache },
    { what: 'another node', address: otherNode.ipv4, count: 17, family: 4, peer: peers.node },
    { what: 'the node (host)', address: net.gatewayIpv4, count: 11, family: 4, peer: peers.host },
    { what: 'an unnamed address (world)', address: outsider.ipv6, count: 7, family: 6, peer: peers.world },
  ] as const;
  const egress = (peer: LabelFilter) => flowValues(agent, { ...clientLabels, direction: 'egress', ...peer });
  const before = new Map(await Promise.all(Object.entries(peers).map(async ([name, peer]) => [name, await egress(peer)] as const)));
  const pgIngressBefore = await flowValues(agent, { namespace: 'db', pod: 'pg-0', direction: 'ingress', peer_namespace: 'shop', peer_workload: 'client', peer_class: 'pod' });

  await sendFrom(client, sends);

  for (const [name, peer] of Object.entries(peers)) {
    const expected = sends.filter((s) => s.peer === peer);
    const packets = expected.reduce((n, s) => n + s.count, 0);
    const bytes = expected.reduce((n, s) => n + s.count * frame[s.family], 0);
    const after = await egress(peer);
    const was = before.get(name)!;
    t.equal(after.packets - was.packets, packets, `client → ${name}: ${packets} packets (${expected.map((s) => s.what).join(', ')})`);
    t.equal(after.bytes - was.bytes, bytes, `client → ${name}: ${bytes} bytes`);
  }
  const pgIngress = await flowValues(agent, { namespace: 'db', pod: 'pg-0', direction: 'ingress', peer_namespace: 'shop', peer_workload: 'client', peer_class: 'pod' });
  t.equal(pgIngress.packets - pgIngressBefore.packets, 37 + 23, 'pg saw the client as its peer for every datagram, IPv4 and IPv6');
  t.equal(pgIngress.bytes - pgIngressBefore.bytes, 37 * frame[4] + 23 * frame[6], 'pg: the same bytes from its side');

  // pg goes away while its address still receives traffic: what it got stays with it, what follows is world.
  const pgBeforeDelete = await egress(peers.pg);
  const worldBeforeDelete = await egress(peers.world);
  api.deletePod('db', 'pg-0');
  await waitFor(
    async () => {
      await sendFrom(client, [{ address: server.ipv4, count: 1 }]);
      return (await egress(peers.world)).packets > worldBeforeDelete.packets;
    },
    { timeoutMs: 15_000, what: 'traffic to the deleted pod\'s address to count as world' },
  );
  const pgAfterDelete = await egress(peers.pg);
  const worldAfterDelete = await egress(peers.world);
  t.ok(pgAfterDelete.packets >= pgBeforeDelete.packets, `the deleted pod keeps its counts as a peer (${pgBeforeDelete.packets} before, ${pgAfterDelete.packets} once gone)`);
  await sendFrom(client, [{ address: server.ipv4, count: 5 }]);
  t.same(await egress(peers.pg), pgAfterDelete, 'then it stops growing');
  t.equal((await egress(peers.world)).packets - worldAfterDelete.packets, 5, 'and its address counts as world');

  const text = await agent.metrics();
  t.same(checkExposition(text), [], 'exposition is well formed');
  const flowFamily = parseExposition(text).find((f) => f.name === 'probepilot_network_flow_bytes_total');
  const peerAddresses = flowFamily?.samples.filter((s) => Object.values(s.labels).some((v) => v.includes(outsider.ipv6) || v.includes(lab.ipv4))) ?? [];
  t.same(peerAddresses, [], 'no address appears in a label: non-pod peers fold into their class');

  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
