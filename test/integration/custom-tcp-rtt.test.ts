// The TCP RTT custom probe (examples/custom-probes/tcp-rtt), loaded from its
// YAML, against a known delay. This kernel has no sch_netem
// (CONFIG_NET_SCH_NETEM is not set, nor fq), so the delay is the server's:
// it echoes each ping `delayMs` late and, with TCP_QUICKACK off, its kernel
// holds the ACK for the echo to carry (the 40 ms delayed-ACK timer is
// longer than the delay). Every RTT sample the client's kernel takes is then
// the delay plus a local veth's microseconds. After a warm-up that brings
// the smoothed RTT (gain 1/8) within 2 % of the delay, every sample of the
// measured window lies in the log2 bucket [16.8, 33.6) ms around 20 ms.
// The client pings over IPv4 and IPv6: each peer address is its own series.
import t from 'tap';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { findSamples, parseExposition, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { projectRoot } from '../helpers/helm.js';
import { waitFor } from '../helpers/wait.js';
import { compileWorkload } from '../helpers/workload.js';

const delayMs = 20;
const port = 5002;
const warmup = 30;
const rounds = 40;
const family = 'probepilot_custom_tcp_rtt_seconds';

/** argv: port, delay in µs. Serves one connection at a time on [::] (IPv4 too): each read is echoed that much later. */
const echoServer = `
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int one = 1, zero = 0, listener = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 address = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[1])), .sin6_addr = IN6ADDR_ANY_INIT };
  long delay_us = atol(argv[2]);
  char buf[4096];
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(listener, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 16)) return 1;
  printf("ready\\n");
  fflush(stdout);
  for (;;) {
    int conn = accept(listener, NULL, NULL);
    ssize_t n;
    if (conn < 0) continue;
    for (;;) {
      /* Not sticky: the kernel may leave delayed-ACK (pingpong) mode, so it is asked again before every read. */
      setsockopt(conn, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
      if ((n = read(conn, buf, sizeof buf)) <= 0) break;
      usleep(delay_us);
      if (write(conn, buf, n) != n) break;
    }
    close(conn);
  }
}
`;

/** argv: host. Per stdin line "ping N": N round trips of 64 bytes, then the mean in ms; "close" ends. */
const pingScript = `
const s = require('node:net').connect({ host: process.argv[1], port: ${port}, noDelay: true });
const rl = require('node:readline').createInterface({ input: process.stdin });
let left = 0, started = 0, total = 0, rounds = 0;
const ping = () => { started = performance.now(); s.write(Buffer.alloc(64, 1)); };
s.on('connect', () => console.log('connected'));
s.on('data', () => {
  total += performance.now() - started;
  if (--left > 0) return ping();
  console.log('mean ' + (total / rounds).toFixed(3));
});
s.on('error', (err) => { console.log('error ' + err.code); process.exit(1); });
rl.on('line', (line) => {
  const [cmd, n] = line.split(' ');
  if (cmd === 'ping') { left = rounds = Number(n); total = 0; ping(); }
  else s.end(() => process.exit(0));
});
`;

interface Lines {
  next(match: (line: string) => boolean, what: string): Promise<string>;
  send(line: string): void;
  kill(): void;
}

function runLines(pod: Pod, cmd: string, args: string[]): Lines {
  const child = pod.run(cmd, args);
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return {
    next: async (match, what) => {
      const line = await waitFor(() => lines.find(match), { timeoutMs: 30_000, what: `${what} (so far: ${lines.join('|')} ${stderr})` });
      lines.splice(lines.indexOf(line), 1);
      return line;
    },
    send: (line) => child.stdin!.write(`${line}\n`),
    kill: () => child.kill('SIGKILL'),
  };
}

interface Histogram {
  count: number;
  sum: number;
  /** Cumulative counts by upper bound, ascending. */
  buckets: Array<{ le: number; count: number }>;
}

async function histogram(agent: AgentProcess, filter: LabelFilter): Promise<Histogram> {
  const families = parseExposition(await agent.metrics());
  const buckets = findSamples(families, `${family}_bucket`, filter)
    .map((s) => ({ le: Number(s.labels.le === '+Inf' ? Infinity : s.labels.le), count: s.value }))
    .sort((a, b) => a.le - b.le);
  return { count: sumSamples(families, `${family}_count`, filter), sum: sumSamples(families, `${family}_sum`, filter), buckets };
}

/** The bucket the q-quantile falls in: [lower, upper) in seconds. */
function quantileBucket(h: Histogram, q: number): { lower: number; upper: number } {
  const rank = q * h.count;
  const index = h.buckets.findIndex((b) => b.count >= rank);
  return { lower: index > 0 ? h.buckets[index - 1]!.le : 0, upper: h.buckets[index]!.le };
}

t.test(`TCP RTT per peer against a ${delayMs} ms delay`, async (t) => {
  if (!requirePrivileges(t, 'custom probe on the tcp_probe BTF tracepoint')) return;
  const server = await compileWorkload(t, 'delayed-echo', echoServer);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const clientPod = await net.addPod();
  const serverPod = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: { ...onlyCollectors(), PROBEPILOT_CUSTOM_PROBES_PATHS: path.join(projectRoot, 'build/custom-probes/tcp-rtt.yaml') },
  });
  t.teardown(() => agent.stop());
  t.match(await agent.metrics(), /probepilot_collector_up\{collector="custom_tcp_rtt",reason=""\} 1/, 'the probe loaded from its YAML and is up');

  const echo = runLines(serverPod, server, [String(port), String(delayMs * 1000)]);
  t.teardown(echo.kill);
  await echo.next((l) => l === 'ready', 'the echo server');
  const delay = delayMs / 1e3;

  for (const address of [serverPod.ipv4, serverPod.ipv6]) {
    await t.test(`peer ${address}`, async (t) => {
      const of = { cgroup: clientPod.cgroupPath, peer: address };
      const client = runLines(clientPod, process.execPath, ['-e', pingScript, address]);
      t.teardown(client.kill);
      await client.next((l) => l === 'connected', `a connection to ${address}`);
      client.send(`ping ${warmup}`);
      await client.next((l) => l.startsWith('mean '), 'the warm-up pings');
      // The echo's segment is sampled by tcp_probe before the kernel takes its ACK: wait for the last warm-up sample.
      const before = await waitFor(async () => { const h = await histogram(agent, of); return h.count >= warmup && h; }, { timeoutMs: 10_000, what: 'the warm-up samples' });
      client.send(`ping ${rounds}`);
      const appRttMs = Number((await client.next((l) => l.startsWith('mean '), `${rounds} pings`)).split(' ')[1]);
      const after = await waitFor(async () => { const h = await histogram(agent, of); return h.count - before.count >= rounds && h; }, { timeoutMs: 10_000, what: 'the RTT samples of the pings' });
      client.send('close');
      const h: Histogram = {
        count: after.count - before.count,
        sum: after.sum - before.sum,
        buckets: after.buckets.map((b, i) => ({ le: b.le, count: b.count - (before.buckets[i]?.count ?? 0) })),
      };
      t.ok(appRttMs >= delayMs, `the client's own round trip: ${appRttMs.toFixed(2)} ms`);
      // One sample per segment the client received: each echo, and a pure ACK now and then.
      t.ok(h.count >= rounds && h.count <= rounds * 1.5, `${h.count} RTT samples for ${rounds} echoes (at most 50 % more)`);
      for (const q of [0.05, 0.5, 0.95]) {
        const { lower, upper } = quantileBucket(h, q);
        t.ok(lower <= delay && delay < upper, `p${q * 100} bucket [${(lower * 1e3).toFixed(2)}, ${(upper * 1e3).toFixed(2)}) ms brackets the ${delayMs} ms delay`);
      }
      // Smoothed after the warm-up: at most 2 % below the delay; above it by no more than the client's own clock saw
      // (which adds its event loop's time on a loaded machine), with 10 % for the smoothing's memory of earlier rounds.
      const meanMs = (h.sum / h.count) * 1e3;
      t.ok(meanMs >= delayMs * 0.98, `mean srtt ${meanMs.toFixed(2)} ms ≥ 98 % of the ${delayMs} ms delay`);
      t.ok(meanMs <= appRttMs * 1.1, `mean srtt ${meanMs.toFixed(2)} ms ≤ 110 % of the client's own round trip, ${appRttMs.toFixed(2)} ms`);
    });
  }

  const families = parseExposition(await agent.metrics());
  const peers = new Set(findSamples(families, `${family}_count`, { cgroup: clientPod.cgroupPath }).map((s) => s.labels.peer));
  t.same([...peers].sort(), [serverPod.ipv4, serverPod.ipv6].sort(), 'the client pod has one series per peer address, IPv4 shown dotted (v4-mapped in the key)');
  const serverPeers = new Set(findSamples(families, `${family}_count`, { cgroup: serverPod.cgroupPath }).map((s) => s.labels.peer));
  t.same([...serverPeers].sort(), [clientPod.ipv4, clientPod.ipv6].sort(), 'the server pod sees the client\'s addresses as its peers');
});
