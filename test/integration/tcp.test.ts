// The TCP collector against the kernel's own accounting: two pods, a client
// and a server. Connections are counted on each side, connect latency once
// per connect, RTT against `ss -tin`, retransmits (induced by a random-drop
// rule in the receiver) against each pod's TcpRetransSegs, and the reset a
// refused connect receives; connection outcomes (refused, timed out, reset,
// established) against each connect's own result, and connection durations
// against the time the client held them open.
import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { execChecked } from '../helpers/proc.js';
import { waitFor } from '../helpers/wait.js';

const port = 5001;
const closedPort = 5999;
const connections = 20;
/** Accepts and resets at once (SO_LINGER 0): every connection to it ends by a reset. */
const resetPort = 5002;
/** SYNs to it are dropped in the server's namespace: connects to it time out. */
const droppedPort = 5003;

/** Accepts everything on [::]:port (IPv4 too), reads and discards. */
const serverScript = `
const net = require('node:net');
const server = net.createServer((s) => { s.on('data', () => {}); s.on('error', () => {}); });
server.listen(${port}, '::', () => {
  net.createServer((s) => s.resetAndDestroy()).listen(${resetPort}, '::', () => console.log('ready'));
});
`;

/**
 * argv: host port count holdMs. Connects count times at once, ends each
 * connection holdMs after it is established, and once every socket is
 * closed prints how they went: {"ok": n, "ECONNREFUSED": n, …}.
 */
const outcomeScript = `
const net = require('node:net');
const [host, port, count, holdMs] = process.argv.slice(1);
const outcomes = {};
let closed = 0;
for (let i = 0; i < Number(count); i++) {
  let error = 'ok';
  const s = net.connect({ host, port: Number(port) });
  s.on('connect', () => setTimeout(() => s.end(), Number(holdMs)));
  s.on('data', () => {});
  s.on('error', (err) => { error = err.code; });
  s.on('close', () => {
    outcomes[error] = (outcomes[error] ?? 0) + 1;
    if (++closed === Number(count)) { console.log(JSON.stringify(outcomes)); process.exit(0); }
  });
}
`;

/**
 * argv: host… Connects once to each host (in order), waits until all are
 * established, then per stdin line: "send N" writes N bytes of 1 KiB
 * messages 5 ms apart on every connection, "close" ends them and exits.
 */
const clientScript = `
const net = require('node:net');
const rl = require('node:readline').createInterface({ input: process.stdin });
const hosts = process.argv.slice(1);
const sockets = hosts.map((host) => net.connect({ host, port: ${port}, noDelay: true }));
let connected = 0;
for (const s of sockets) {
  s.on('error', (err) => { console.log('error ' + err.code); });
  s.on('connect', () => { if (++connected === sockets.length) console.log('connected'); });
}
rl.on('line', async (line) => {
  const [cmd, arg] = line.split(' ');
  if (cmd === 'send') {
    for (let sent = 0; sent < Number(arg); sent += 1024) {
      for (const s of sockets) s.write(Buffer.alloc(1024, 120));
      await new Promise((r) => setTimeout(r, 5));
    }
    // Polled: 'drain' only comes after a write() that returned false, not whenever a small backlog empties.
    await Promise.all(sockets.map((s) => new Promise((r) => { const check = () => (s.writableLength === 0 ? r() : setTimeout(check, 5)); check(); })));
    console.log('sent');
  } else if (cmd === 'close') {
    await Promise.all(sockets.map((s) => new Promise((r) => s.end(r))));
    console.log('closed');
    process.exit(0);
  }
});
`;

/** One connect to a closed port: the kernel answers the SYN with a reset. */
const refusedScript = `
require('node:net').connect({ host: process.argv[1], port: ${closedPort} }).on('error', (err) => { console.log(err.code); process.exit(0); });
`;

interface Script {
  child: ChildProcess;
  line(expected: string): Promise<void>;
  send(line: string): void;
}

function runScript(t: Test, pod: Pod, source: string, args: string[] = []): Script {
  const child = pod.run(process.execPath, ['-e', source, ...args]);
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return {
    child,
    line: (expected) =>
      waitFor(() => lines.includes(expected), { timeoutMs: 30_000, what: `"${expected}" from a script in ${pod.name} (so far: ${lines.join('|')} ${stderr})` }).then(() => {
        lines.splice(lines.indexOf(expected), 1);
      }),
    send: (line) => child.stdin!.write(`${line}\n`),
  };
}

async function metric(agent: AgentProcess, name: string, filter: LabelFilter): Promise<number> {
  return sumSamples(parseExposition(await agent.metrics()), name, filter);
}

/** RetransSegs of the Tcp: line in /proc/net/snmp of a pod's namespace. */
async function retransSegs(pod: Pod): Promise<number> {
  const snmp = await execChecked('ip', ['netns', 'exec', pod.netns, 'cat', '/proc/net/snmp']);
  const [header, values] = snmp.split('\n').filter((l) => l.startsWith('Tcp:'));
  const column = header!.split(/\s+/).indexOf('RetransSegs');
  return Number(values!.split(/\s+/)[column]);
}

t.test('TCP connections, latency, RTT, retransmits and resets against the kernel', async (t) => {
  if (!requirePrivileges(t, 'tcp collector on tracepoints')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const client = await net.addPod({ layout: 'systemd' });
  const server = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_PROCESS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());
  const of = (pod: Pod, labels: LabelFilter = {}) => ({ cgroup: pod.cgroupPath, ...labels });

  const listener = runScript(t, server, serverScript);
  await listener.line('ready');

  await t.test(`${connections} connections, IPv4 and IPv6: counted per side, active while open`, async (t) => {
    const hosts = Array.from({ length: connections }, (_, i) => (i % 2 ? server.ipv6 : server.ipv4));
    const conns = runScript(t, client, clientScript, hosts);
    await conns.line('connected');
    // The server side completes its handshake when the last ACK arrives: wait for the kernel to get there.
    await waitFor(async () => (await metric(agent, 'probepilot_tcp_connections_active', of(server))) === connections, {
      timeoutMs: 10_000,
      what: 'server-side connections to be established',
    });
    t.equal(await metric(agent, 'probepilot_tcp_connections_opened_total', of(client, { side: 'client' })), connections, `client pod opened ${connections} as client`);
    t.equal(await metric(agent, 'probepilot_tcp_connections_opened_total', of(client, { side: 'server' })), 0, 'and none as server');
    t.equal(await metric(agent, 'probepilot_tcp_connections_opened_total', of(server, { side: 'server' })), connections, `server pod accepted ${connections}`);
    t.equal(await metric(agent, 'probepilot_tcp_connections_active', of(client)), connections, 'client pod: all active');
    t.equal(await metric(agent, 'probepilot_tcp_connect_latency_seconds_count', of(client)), connections, 'one connect latency per connect');
    const latency = await metric(agent, 'probepilot_tcp_connect_latency_seconds_sum', of(client));
    t.ok(latency > 0 && latency / connections < 0.1, `mean connect latency ${((latency / connections) * 1e6).toFixed(1)} µs over a local veth`);

    conns.send('close');
    await conns.line('closed');
    for (const pod of [client, server]) {
      await waitFor(async () => (await metric(agent, 'probepilot_tcp_connections_active', of(pod))) === 0, {
        timeoutMs: 10_000,
        what: `${pod.name}'s connections to close`,
      });
    }
    t.pass('active connections went back to 0 on both sides after close');
    t.equal(await metric(agent, 'probepilot_tcp_rtt_seconds_count', of(client)), connections, 'one RTT observation per closed connection');
  });

  await t.test('smoothed RTT matches ss -tin', async (t) => {
    const conn = runScript(t, client, clientScript, [server.ipv4]);
    await conn.line('connected');
    conn.send('send 65536');
    await conn.line('sent');
    const ss = await execChecked('ip', ['netns', 'exec', client.netns, 'ss', '-tinH', 'dst', server.ipv4, 'dport', `= :${port}`]);
    const match = /\brtt:([\d.]+)\//.exec(ss);
    t.ok(match, `ss shows the connection's rtt (${ss.trim().replace(/\s+/g, ' ')})`);
    const ssRttSeconds = Number(match?.[1]) / 1e3;
    const before = {
      count: await metric(agent, 'probepilot_tcp_rtt_seconds_count', of(client)),
      sum: await metric(agent, 'probepilot_tcp_rtt_seconds_sum', of(client)),
    };
    conn.send('close');
    await conn.line('closed');
    await waitFor(async () => (await metric(agent, 'probepilot_tcp_rtt_seconds_count', of(client))) === before.count + 1, {
      timeoutMs: 10_000,
      what: 'the RTT observation of the closed connection',
    });
    const rtt = (await metric(agent, 'probepilot_tcp_rtt_seconds_sum', of(client))) - before.sum;
    // ss prints µs resolution; srtt moves a little between ss and close (the FIN's ACK): 50 % or 20 µs.
    const slack = Math.max(ssRttSeconds * 0.5, 20e-6);
    t.ok(Math.abs(rtt - ssRttSeconds) <= slack, `exported RTT ${(rtt * 1e6).toFixed(1)} µs vs ss ${(ssRttSeconds * 1e6).toFixed(1)} µs (tolerance ±${(slack * 1e6).toFixed(0)} µs)`);
  });

  await t.test('retransmits match each pod\'s TcpRetransSegs', async (t) => {
    // Every 8th segment arriving at the server is dropped: the client retransmits its data, and the server
    // whatever of its own the dropped ACKs leave unacknowledged (a SYN-ACK, a FIN).
    const rules = `table inet pp_tcp {\n chain input {\n type filter hook input priority 0; policy accept;\n tcp dport ${port} numgen random mod 8 == 0 drop\n }\n}\n`;
    await execChecked('ip', ['netns', 'exec', server.netns, 'nft', '-f', '-'], { input: rules });
    const pods = [client, server];
    const before = await Promise.all(pods.map(async (pod) => ({ kernel: await retransSegs(pod), exported: await metric(agent, 'probepilot_tcp_retransmits_total', of(pod)) })));
    const conn = runScript(t, client, clientScript, [server.ipv4, server.ipv6]);
    await conn.line('connected');
    conn.send('send 262144');
    await conn.line('sent');
    conn.send('close');
    await conn.line('closed');
    await execChecked('ip', ['netns', 'exec', server.netns, 'nft', 'delete', 'table', 'inet', 'pp_tcp']);
    // "closed" means the kernel took the data, not that the peer acknowledged it: retransmits go on until every
    // connection is past its FIN exchange. Compare once only TIME-WAIT is left (it sends nothing).
    await waitFor(
      async () => (await Promise.all(pods.map((pod) => execChecked('ip', ['netns', 'exec', pod.netns, 'ss', '-tanH', 'exclude', 'time-wait', 'exclude', 'listening'])))).every((out) => out.trim() === ''),
      { timeoutMs: 30_000, what: 'the connections to finish their retransmits' },
    );
    for (const [i, pod] of pods.entries()) {
      const kernel = (await retransSegs(pod)) - before[i]!.kernel;
      const exported = (await metric(agent, 'probepilot_tcp_retransmits_total', of(pod))) - before[i]!.exported;
      if (pod === client) t.ok(kernel > 10, `the drop rule caused the client to retransmit (${kernel} segments)`);
      const error = kernel === 0 ? exported : Math.abs(exported - kernel) / kernel;
      t.ok(error <= 0.02, `${pod.name}: exported ${exported} retransmitted segments vs its TcpRetransSegs ${kernel} (tolerance 2 %)`);
    }
  });

  await t.test('connection outcomes and durations: each counted exactly', async (t) => {
    const k = 7;
    const holdMs = 300;
    // One SYN retry: a dropped connect gives up after ~3 s (1 s, then 2 s) instead of two minutes.
    await execChecked('ip', ['netns', 'exec', client.netns, 'sysctl', '-qw', 'net.ipv4.tcp_syn_retries=1']);
    const rules = `table inet pp_tcp_drop {\n chain input {\n type filter hook input priority 0; policy accept;\n tcp dport ${droppedPort} drop\n }\n}\n`;
    await execChecked('ip', ['netns', 'exec', server.netns, 'nft', '-f', '-'], { input: rules });
    t.teardown(() => execChecked('ip', ['netns', 'exec', server.netns, 'nft', 'delete', 'table', 'inet', 'pp_tcp_drop']).then(() => undefined));
    const outcomes = ['established', 'refused', 'timeout', 'reset'] as const;
    const counts = async (pod: Pod) => Object.fromEntries(await Promise.all(outcomes.map(async (o) => [o, await metric(agent, 'probepilot_tcp_connections_total', of(pod, { outcome: o }))] as const)));
    const duration = async () => ({
      count: await metric(agent, 'probepilot_tcp_connection_duration_seconds_count', of(client)),
      sum: await metric(agent, 'probepilot_tcp_connection_duration_seconds_sum', of(client)),
    });
    type Counted = Partial<Record<(typeof outcomes)[number], number>>;
    const phases: ReadonlyArray<{ what: string; host: string; port: number; expect: Record<string, number>; client: Counted; server: Counted }> = [
      { what: 'established, held open', host: server.ipv4, port, expect: { ok: k }, client: { established: k }, server: { established: k } },
      { what: 'refused (closed port, IPv6)', host: server.ipv6, port: closedPort, expect: { ECONNREFUSED: k }, client: { refused: k }, server: {} },
      { what: 'timed out (SYNs dropped)', host: server.ipv4, port: droppedPort, expect: { ETIMEDOUT: k }, client: { timeout: k }, server: {} },
      { what: 'reset once established (IPv6)', host: server.ipv6, port: resetPort, expect: { ECONNRESET: k }, client: { established: k, reset: k }, server: { established: k, reset: k } },
    ];
    for (const phase of phases) {
      const before = { client: await counts(client), server: await counts(server), duration: await duration() };
      const run = runScript(t, client, outcomeScript, [phase.host, String(phase.port), String(k), String(holdMs)]);
      await run.line(JSON.stringify(phase.expect));
      for (const [pod, expected] of [[client, phase.client], [server, phase.server]] as const) {
        const want = Object.fromEntries(outcomes.map((o) => [o, expected[o] ?? 0]));
        // The server side ends its half a moment after the client sees it.
        await waitFor(async () => {
          const now = await counts(pod);
          const was = pod === client ? before.client : before.server;
          return outcomes.every((o) => now[o]! - was[o]! === want[o]);
        }, { timeoutMs: 10_000, what: `${phase.what}: ${pod.name} to count ${JSON.stringify(want)}` }).catch(() => undefined);
        const now = await counts(pod);
        const was = pod === client ? before.client : before.server;
        t.same(Object.fromEntries(outcomes.map((o) => [o, now[o]! - was[o]!])), want, `${phase.what}: ${pod.name} counted ${JSON.stringify(want)}`);
      }
      const after = await duration();
      if (phase.port === port) {
        const mean = (after.sum - before.duration.sum) / k;
        t.equal(after.count - before.duration.count, k, `${phase.what}: one duration per connection`);
        // Held ${holdMs} ms after connect, then the FIN exchange: never less, and on a local veth at most 200 ms more on a loaded machine.
        t.ok(mean >= holdMs / 1000 && mean <= holdMs / 1000 + 0.2, `${phase.what}: mean duration ${(mean * 1000).toFixed(1)} ms, held ${holdMs} ms (tolerance +200 ms)`);
      } else {
        t.equal(after.count - before.duration.count, phase.client.established ?? 0, `${phase.what}: a duration only for connections that were established`);
      }
    }
  });

  await t.test('a refused connect receives a reset', async (t) => {
    const received = await metric(agent, 'probepilot_tcp_resets_total', of(client, { direction: 'received' }));
    const serverSent = await metric(agent, 'probepilot_tcp_resets_total', of(server, { direction: 'sent' }));
    const refused = runScript(t, client, refusedScript, [server.ipv4]);
    await refused.line('ECONNREFUSED');
    t.equal(await metric(agent, 'probepilot_tcp_resets_total', of(client, { direction: 'received' })) - received, 1, 'the client pod received one reset');
    t.equal(await metric(agent, 'probepilot_tcp_resets_total', of(server, { direction: 'sent' })) - serverSent, 0, 'a reset from a closed port is no workload\'s: not the server pod\'s');
    t.ok((await metric(agent, 'probepilot_tcp_resets_total', { cgroup: '/', direction: 'sent' })) >= 1, 'it is the node\'s');
  });

  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
