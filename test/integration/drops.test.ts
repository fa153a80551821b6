// The drops collector against the kernel's own accounting: datagrams to a
// closed UDP port in a pod (the pod's UdpNoPorts in /proc/net/snmp) and
// packets an nftables rule drops in a pod's namespace (the rule's own
// counter) must be counted with the right reason, exactly, and attributed to
// the pod the packets were dropped in — or to the socket's owner when the
// dropped packet had a socket — and to no other pod.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { requirePrivileges } from '../helpers/env.js';
import { startAgent, type AgentProcess } from '../helpers/agent.js';
import { checkExposition, parseExposition, sampleValue, sumSamples } from '../helpers/exposition.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { collect, execChecked } from '../helpers/proc.js';
import { waitFor } from '../helpers/wait.js';

const drops = 'probepilot_packet_drops_total';
const datagrams = 300;
const closedPort = 9;
const inputDropPort = 7777;
const outputDropPort = 7778;

/** Sends `count` one-byte UDP datagrams, one after the other; prints how many sends succeeded and failed. */
const sender = `
const dgram = require('node:dgram');
const [host, port, count] = process.argv.slice(1);
const socket = dgram.createSocket('udp4');
let sent = 0, failed = 0;
(async () => {
  for (let i = 0; i < Number(count); i++) {
    await new Promise((resolve) => socket.send('x', Number(port), host, (err) => { if (err) failed++; else sent++; resolve(); }));
  }
  socket.close();
  console.log(JSON.stringify({ sent, failed }));
})();
`;

interface SendResult {
  sent: number;
  failed: number;
}

async function send(pod: Pod, host: string, port: number, count: number, cgroupDir = pod.cgroupDir): Promise<SendResult> {
  // Like Pod.run, but the process may join another cgroup than the pod's: a sidecar sharing the pod's namespace.
  const script = 'echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@"';
  const child = spawn('sh', ['-c', script, cgroupDir, pod.netns, process.execPath, '-e', sender, host, String(port), String(count)], { stdio: 'pipe' });
  const result = await collect(child, { timeoutMs: 30_000 });
  if (result.code !== 0) throw new Error(`sender in ${pod.name}: exit ${result.code ?? result.signal}: ${result.stderr}`);
  return JSON.parse(result.stdout) as SendResult;
}

/** The pod namespace's own count of datagrams that found no socket (/proc/net/snmp, Udp NoPorts). */
async function udpNoPorts(pod: Pod): Promise<number> {
  const snmp = await execChecked('ip', ['netns', 'exec', pod.netns, 'cat', '/proc/net/snmp']);
  const [header, values] = snmp.split('\n').filter((line) => line.startsWith('Udp:'));
  const column = header!.trim().split(/\s+/).indexOf('NoPorts');
  return Number(values!.trim().split(/\s+/)[column]);
}

/** Packets an nftables chain's counting drop rule has dropped, from the rule's own counter. */
async function nftDropped(pod: Pod, chain: 'input' | 'output'): Promise<number> {
  const listing = await execChecked('ip', ['netns', 'exec', pod.netns, 'nft', 'list', 'chain', 'inet', 'pp_drops', chain]);
  const packets = /counter packets (\d+) bytes \d+ drop/.exec(listing)?.[1];
  if (packets === undefined) throw new Error(`no counting drop rule in chain ${chain} of ${pod.netns}:\n${listing}`);
  return Number(packets);
}

const firewall = `
table inet pp_drops {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport ${inputDropPort} counter drop
  }
  chain output {
    type filter hook output priority 0; policy accept;
    udp dport ${outputDropPort} counter drop
  }
}
`;

async function counted(agent: AgentProcess, pod: Pod, reason: string): Promise<number> {
  return sumSamples(parseExposition(await agent.metrics()), drops, { cgroup: pod.cgroupPath, reason });
}

/** Waits (bounded) until the pod's count reaches `expected`, then returns what it is: kernel counts are immediate, the namespace → workload lookup may need a /proc scan. */
async function settled(agent: AgentProcess, pod: Pod, reason: string, expected: number): Promise<number> {
  try {
    await waitFor(async () => (await counted(agent, pod, reason)) >= expected, { timeoutMs: 6_000, intervalMs: 100, what: `${pod.name} ${reason} drops to reach ${expected}` });
  } catch {
    // the assertion that follows reports the figures
  }
  return counted(agent, pod, reason);
}

function exact(t: Test, actual: number, expected: number, what: string): void {
  t.equal(actual, expected, `${what}: exported ${actual}, kernel's own count ${expected} (tolerance 0)`);
}

t.test('drops are counted with the kernel reason, exactly, and attributed to the pod they happened in', async (t) => {
  if (!requirePrivileges(t, 'drops collector on real pods')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'systemd' });
  const b = await net.addPod({ layout: 'plain' });
  // d's namespace is shared by a process of c's cgroup: a sidecar whose socket is c's.
  const c = await net.addPod({ layout: 'plain' });
  const d = await net.addPod({ layout: 'plain' });
  for (const pod of [a, d]) await execChecked('ip', ['netns', 'exec', pod.netns, 'nft', '-f', '-'], { input: firewall });

  const agent = await startAgent({ env: { PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false' } });
  t.teardown(() => agent.stop());
  const first = parseExposition(await agent.metrics());
  t.equal(sampleValue(first, 'probepilot_collector_up', { collector: 'drops', reason: '' }), 1, 'drops collector up');

  await t.test('UDP to a closed port: NO_SOCKET in the receiving pod, by its namespace', async (t) => {
    const before = { a: await counted(agent, a, 'NO_SOCKET'), b: await counted(agent, b, 'NO_SOCKET'), noPorts: await udpNoPorts(a) };
    const result = await send(b, a.ipv4, closedPort, datagrams);
    t.same(result, { sent: datagrams, failed: 0 }, `b sent ${datagrams} datagrams`);
    const noPorts = (await udpNoPorts(a)) - before.noPorts;
    t.equal(noPorts, datagrams, `a's UdpNoPorts rose by the ${datagrams} datagrams sent`);
    exact(t, (await settled(agent, a, 'NO_SOCKET', before.a + noPorts)) - before.a, noPorts, 'a NO_SOCKET drops vs its UdpNoPorts');
    t.equal((await counted(agent, b, 'NO_SOCKET')) - before.b, 0, 'the sending pod b gets none of them');
  });

  await t.test('an nftables input rule: NETFILTER_DROP in the pod whose rule dropped them', async (t) => {
    const before = {
      a: await counted(agent, a, 'NETFILTER_DROP'),
      aNoSocket: await counted(agent, a, 'NO_SOCKET'),
      b: await counted(agent, b, 'NETFILTER_DROP'),
      rule: await nftDropped(a, 'input'),
    };
    const result = await send(b, a.ipv4, inputDropPort, datagrams);
    t.same(result, { sent: datagrams, failed: 0 }, `b sent ${datagrams} datagrams`);
    const rule = (await nftDropped(a, 'input')) - before.rule;
    t.equal(rule, datagrams, `a's input rule dropped the ${datagrams} datagrams sent`);
    exact(t, (await settled(agent, a, 'NETFILTER_DROP', before.a + rule)) - before.a, rule, 'a NETFILTER_DROP drops vs its rule counter');
    t.equal((await counted(agent, b, 'NETFILTER_DROP')) - before.b, 0, 'the sending pod b gets none of them');
    t.equal((await counted(agent, a, 'NO_SOCKET')) - before.aNoSocket, 0, 'the packets the firewall took are not counted again as NO_SOCKET');
  });

  await t.test('an nftables output rule: a dropped packet with a socket goes to the socket’s cgroup, not the namespace’s pod', async (t) => {
    const before = { c: await counted(agent, c, 'NETFILTER_DROP'), d: await counted(agent, d, 'NETFILTER_DROP'), rule: await nftDropped(d, 'output') };
    const result = await send(d, b.ipv4, outputDropPort, datagrams, c.cgroupDir);
    // The kernel refuses each send the output hook dropped (EPERM).
    t.same(result, { sent: 0, failed: datagrams }, `every one of ${datagrams} sends was refused`);
    const rule = (await nftDropped(d, 'output')) - before.rule;
    t.equal(rule, datagrams, `d's output rule dropped the ${datagrams} datagrams`);
    exact(t, (await settled(agent, c, 'NETFILTER_DROP', before.c + rule)) - before.c, rule, 'c (the socket owner) NETFILTER_DROP drops vs the rule counter');
    t.equal((await counted(agent, d, 'NETFILTER_DROP')) - before.d, 0, 'd, whose namespace it was, gets none of them');
  });

  const text = await agent.metrics();
  t.same(checkExposition(text), [], 'exposition is well-formed');
  const reasons = new Set(parseExposition(text).find((f) => f.name === drops)?.samples.map((s) => s.labels.reason));
  t.ok([...reasons].every((r) => r !== undefined && /^[A-Z0-9_]+$|^unknown$/.test(r)), `reason labels are kernel names or unknown: ${[...reasons].join(', ')}`);
  t.equal(await agent.stop(), 0, 'agent exits 0 on SIGTERM');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});
