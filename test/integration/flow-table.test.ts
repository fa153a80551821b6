// The 5-tuple flow table against the kernel's own view: a client pod holds
// TCP connections (IPv4 and IPv6) to a server pod; each pod's
// probepilot_network_active_flows must equal the established connections
// `ss` shows in its namespace, and /api/v1/flows?view=5tuple must list the
// very same 5-tuples. Closed connections stop being active at once (FIN each
// way) and leave the table after idling; SYN and FIN segments are counted
// exactly per direction. Then IPv6 iperf3 traffic: bytes per pod and per
// flow within 1 % of the veth statistics. gRPC QueryFlows serves the same table.
import t from 'tap';
import { createInterface } from 'node:readline';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { checkExposition, parseExposition, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { runIperf } from '../helpers/iperf.js';
import { waitFor } from '../helpers/wait.js';
import type { FlowsResult } from '../../src/api/service.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';
import { credentials, type Client, type ServiceError } from '@grpc/grpc-js';

const port = 5301;
const connections = 10;
const idleSeconds = 3;

/** Accepts on [::]:port (IPv4 too) and discards what it reads. */
const serverScript = `
require('node:net').createServer((s) => { s.on('data', () => {}); s.on('error', () => {}); }).listen(${port}, '::', () => console.log('ready'));
`;

/**
 * argv: host… One connection to each host; every connection writes 64 bytes
 * every 250 ms (never idle). "close" on stdin ends them all.
 */
const clientScript = `
const net = require('node:net');
const hosts = process.argv.slice(1);
let connected = 0;
const sockets = hosts.map((host) => net.connect({ host, port: ${port} }, () => { if (++connected === hosts.length) console.log('connected'); }));
const timer = setInterval(() => sockets.forEach((s) => s.write(Buffer.alloc(64))), 250);
require('node:readline').createInterface({ input: process.stdin }).on('line', async () => {
  clearInterval(timer);
  await Promise.all(sockets.map((s) => new Promise((r) => { s.on('close', r); s.end(); })));
  console.log('closed');
});
`;

interface Tuple {
  local: string;
  remote: string;
}

/** Established TCP connections in a pod's namespace, as ss prints them (an IPv4-mapped address as plain IPv4). */
async function established(pod: Pod): Promise<Tuple[]> {
  const { stdout } = await pod.exec('ss', ['-tnH', 'state', 'established']);
  const plain = (endpoint: string) => endpoint.replace(/^\[::ffff:([\d.]+)\]/, '$1').replace(/^\[(.*)\]/, '$1');
  return stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((line) => {
      const [, , local, remote] = line.trim().split(/\s+/);
      return { local: plain(local!), remote: plain(remote!) };
    });
}

async function flows(agent: AgentProcess, pod: Pod, query = ''): Promise<FlowsResult> {
  const response = await fetch(`${agent.url}/api/v1/flows?view=5tuple&limit=10000&pod=${encodeURIComponent(pod.cgroupPath)}${query}`);
  if (response.status !== 200) throw new Error(`flows: ${response.status} ${await response.text()}`);
  return (await response.json()) as FlowsResult;
}

const endpoint = (address: string, p: number) => `${address}:${p}`;

t.test('active flows equal the connections ss shows, expire after idling; IPv6 bytes match the veth', async (t) => {
  if (!requirePrivileges(t, 'the flow table on real veths')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const client = await net.addPod({ layout: 'systemd' });
  const server = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      ...onlyCollectors('network'),
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.2',
      PROBEPILOT_COLLECTORS_NETWORK_FLOW_TABLE_IDLE_SECONDS: String(idleSeconds),
      PROBEPILOT_GRPC_LISTEN: '127.0.0.1:0',
    },
  });
  t.teardown(() => agent.stop());
  const grpcAddress = String((await agent.waitForLog((l) => l.msg === 'gRPC API listening', 'the gRPC API')).address);
  const Agent = agentServiceDefinition();
  const grpc = new Agent(grpcAddress, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => unknown>;
  t.teardown(() => grpc.close());
  type GrpcFlows = { total: number; flows: Array<{ direction: string; tuple?: { local_address: string; local_port: number; remote_address: string; remote_port: number; active: boolean } }> };
  const queryFlows = (request: object) => new Promise<GrpcFlows>((resolve, reject) => grpc.QueryFlows!(request, (err: ServiceError | null, response: GrpcFlows) => (err ? reject(err) : resolve(response))));
  for (const pod of [client, server]) {
    await agent.waitForLog((l) => l.interface === pod.hostVeth && l.workload === pod.cgroupPath, `attach to ${pod.hostVeth} with workload ${pod.cgroupPath}`);
  }
  const metric = async (name: string, filter: LabelFilter) => sumSamples(parseExposition(await agent.metrics()), name, filter);
  const of = (pod: Pod, labels: LabelFilter = {}) => ({ cgroup: pod.cgroupPath, ...labels });
  t.equal(await metric('probepilot_pods_tracked', {}), 2, 'two pods tracked: the workloads behind the two veths');

  const listener = server.run(process.execPath, ['-e', serverScript]);
  t.teardown(() => listener.kill('SIGKILL'));
  const lines: string[] = [];
  createInterface({ input: listener.stdout! }).on('line', (l) => lines.push(l));
  await waitFor(() => lines.includes('ready'), { timeoutMs: 10_000, what: 'the server to listen' });
  // Neighbours first (IPv6 neighbour discovery is ICMPv6): only the connections change the counts below.
  await client.exec('ping', ['-c', '1', '-W', '2', server.ipv4]);
  await client.exec('ping', ['-6', '-c', '1', '-W', '2', server.ipv6]);

  const segments = async () => {
    const families = parseExposition(await agent.metrics());
    const read = (pod: Pod, flag: string) => sumSamples(families, 'probepilot_network_tcp_segments_total', of(pod, { direction: 'egress', flag }));
    return { clientSyn: read(client, 'syn'), serverSyn: read(server, 'syn'), clientFin: read(client, 'fin'), serverFin: read(server, 'fin') };
  };
  const segmentsBefore = await segments();

  const hosts = Array.from({ length: connections }, (_, i) => (i % 2 ? server.ipv6 : server.ipv4));
  const conns = client.run(process.execPath, ['-e', clientScript, ...hosts]);
  t.teardown(() => conns.kill('SIGKILL'));
  const output: string[] = [];
  createInterface({ input: conns.stdout! }).on('line', (l) => output.push(l));
  await waitFor(() => output.includes('connected'), { timeoutMs: 10_000, what: 'the client to connect' });

  for (const pod of [client, server]) {
    // The server side is established a moment after the client's: compare once both settled.
    await waitFor(async () => (await metric('probepilot_network_active_flows', of(pod))) === (await established(pod)).length, { timeoutMs: 10_000, what: `${pod.name}: active flows to match ss` }).catch(() => undefined);
    const ss = await established(pod);
    t.equal(ss.length, connections, `${pod.name}: ss shows ${connections} established connections`);
    // Tolerance 0: the connections send every 250 ms, well within the idle time, and nothing else is open.
    t.equal(await metric('probepilot_network_active_flows', of(pod)), ss.length, `${pod.name}: active flows equal ss's established connections (${ss.length})`);
    const table = await flows(agent, pod, '&protocol=tcp');
    const listed = table.flows.filter((f) => f.tuple?.active).map((f) => ({ local: endpoint(f.tuple!.localAddress, f.tuple!.localPort), remote: endpoint(f.tuple!.remoteAddress, f.tuple!.remotePort) }));
    const sortKey = (x: Tuple) => `${x.local} ${x.remote}`;
    t.same(listed.map(sortKey).sort(), ss.map(sortKey).sort(), `${pod.name}: view=5tuple lists the same 5-tuples as ss`);
    const opener = pod === client ? 'egress' : 'ingress';
    t.ok(table.flows.every((f) => f.direction === opener), `${pod.name}: every flow opened by ${pod === client ? 'the pod (egress)' : 'its peer (ingress)'}`);
    const synSide = pod === client ? 'tcpFlagsSent' : 'tcpFlagsReceived';
    t.ok(table.flows.every((f) => f.tuple![synSide].includes('syn') && f.tuple!.packetsSent > 0 && f.tuple!.packetsReceived > 0), `${pod.name}: each flow saw its SYN (${synSide}) and packets both ways`);
    t.equal(table.flows.filter((f) => f.tuple!.family === 'ipv6').length, connections / 2, `${pod.name}: half of them IPv6`);
    const viaGrpc = await queryFlows({ view: '5tuple', pod: pod.cgroupPath, protocol: 'tcp', limit: 10000 });
    const grpcListed = viaGrpc.flows.filter((f) => f.tuple?.active).map((f) => ({ local: endpoint(f.tuple!.local_address, f.tuple!.local_port), remote: endpoint(f.tuple!.remote_address, f.tuple!.remote_port) }));
    t.same(grpcListed.map(sortKey).sort(), ss.map(sortKey).sort(), `${pod.name}: gRPC QueryFlows view=5tuple lists the same 5-tuples`);
  }

  conns.stdin!.write('close\n');
  await waitFor(() => output.includes('closed'), { timeoutMs: 10_000, what: 'the client to close its connections' });
  for (const pod of [client, server]) {
    await waitFor(async () => (await metric('probepilot_network_active_flows', of(pod))) === 0, { timeoutMs: 10_000, what: `${pod.name}: active flows to drop to 0 once closed` });
    const table = await flows(agent, pod, '&protocol=tcp');
    t.equal(table.total, connections, `${pod.name}: the closed flows stay in the table until they idle out`);
    t.ok(table.flows.every((f) => !f.tuple!.active && f.tuple!.tcpFlagsSent.includes('fin') && f.tuple!.tcpFlagsReceived.includes('fin')), `${pod.name}: all inactive, a FIN seen each way`);
  }
  const segmentsAfter = await segments();
  // Tolerance 0: a local veth drops nothing, so no SYN or FIN is sent twice.
  t.same(
    Object.fromEntries(Object.entries(segmentsAfter).map(([k, v]) => [k, v - segmentsBefore[k as keyof typeof segmentsBefore]])),
    { clientSyn: connections, serverSyn: connections, clientFin: connections, serverFin: connections },
    `SYN/FIN per direction: each side sent ${connections} SYNs (the server's are SYN-ACKs) and ${connections} FINs`,
  );

  const closedAt = Date.now();
  await waitFor(async () => (await flows(agent, client, '&protocol=tcp')).total === 0, { timeoutMs: (idleSeconds + 10) * 1000, what: 'closed flows to idle out' });
  const waited = (Date.now() - closedAt) / 1000;
  t.ok(waited >= idleSeconds - 1, `the closed flows left the table after idling (${waited.toFixed(1)} s, idle time ${idleSeconds} s)`);

  // IPv6 parity: a TCP transfer over IPv6 only; the client's egress against its veth (which also carries ND).
  const vethBefore = client.vethStats();
  const bytesBefore = await metric('probepilot_network_bytes_total', of(client, { direction: 'egress' }));
  await runIperf({ server, client, protocol: 'tcp', bytes: 8 * 1024 * 1024, ipv6: true });
  const vethBytes = client.vethStats().rxBytes - vethBefore.rxBytes;
  const exported = (await metric('probepilot_network_bytes_total', of(client, { direction: 'egress' }))) - bytesBefore;
  const error = Math.abs(exported - vethBytes) / vethBytes;
  t.ok(error <= 0.01, `IPv6: pod egress ${exported} bytes vs veth ${vethBytes} (${(error * 100).toFixed(3)} % off, tolerance 1 %)`);
  const iperfFlows = (await flows(agent, client, '&protocol=tcp')).flows.filter((f) => f.tuple!.family === 'ipv6' && f.tuple!.remotePort === 5201);
  const flowBytes = iperfFlows.reduce((n, f) => n + f.tuple!.bytesSent, 0);
  const flowError = Math.abs(flowBytes - vethBytes) / vethBytes;
  t.ok(iperfFlows.length >= 2 && flowError <= 0.01, `IPv6: iperf3's ${iperfFlows.length} flows (control and data) sent ${flowBytes} bytes vs veth ${vethBytes} (${(flowError * 100).toFixed(3)} % off, tolerance 1 %)`);

  t.same(checkExposition(await agent.metrics()), [], 'exposition is well formed');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
