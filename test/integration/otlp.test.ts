// OTLP push against a real gRPC receiver: what the agent pushes equals what
// /metrics shows at a quiet instant (every counter, every histogram bucket);
// with the receiver down the agent retries with backoff and keeps serving;
// once it is back, the cumulative counts include everything sent meanwhile.
import t, { type Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { startAgent, type AgentProcess } from '../helpers/agent.js';
import { parseExposition, sumSamples, type MetricFamily } from '../helpers/exposition.js';
import { OtlpReceiver, type OtlpExport, type OtlpPoint } from '../helpers/otlp-receiver.js';
import { waitFor } from '../helpers/wait.js';

/** Families that only our test traffic moves: quiet once it stops. */
const compared = /^probepilot_(network|tcp)_/;

/** Our labels as the OTLP attributes the README promises (standalone mode). */
function expectedAttributes(labels: Record<string, string>): string {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(labels)) if (value !== '') out[name === 'cgroup' ? 'probepilot.cgroup' : name] = value;
  return JSON.stringify(Object.entries(out).sort());
}

function pointKey(metric: string, attributes: Record<string, string>): string {
  return `${metric} ${JSON.stringify(Object.entries(attributes).sort())}`;
}

/** Counters and histograms of the compared families, as OTLP would name them, from a scrape. */
function fromScrape(families: readonly MetricFamily[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const family of families) {
    if (!compared.test(family.name) || (family.type !== 'counter' && family.type !== 'histogram')) continue;
    const metric = family.name.replace(/_total$/, '').replaceAll('_', '.');
    if (family.type === 'counter') {
      for (const s of family.samples) out.set(`${metric} ${expectedAttributes(s.labels)}`, [s.value]);
      continue;
    }
    // Histograms: per-bucket counts from the cumulative buckets, then sum and count.
    const series = new Map<string, { buckets: number[]; sum: number; count: number }>();
    for (const s of family.samples) {
      const { le, ...labels } = s.labels;
      const key = `${metric} ${expectedAttributes(labels)}`;
      const entry = series.get(key) ?? { buckets: [], sum: 0, count: 0 };
      series.set(key, entry);
      if (s.name.endsWith('_bucket') && le !== undefined) entry.buckets.push(s.value);
      else if (s.name.endsWith('_sum')) entry.sum = s.value;
      else if (s.name.endsWith('_count')) entry.count = s.value;
    }
    for (const [key, { buckets, sum, count }] of series) out.set(key, [...buckets.map((c, i) => c - (buckets[i - 1] ?? 0)), sum, count]);
  }
  return out;
}

function fromExport(exported: OtlpExport): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const p of exported.points) {
    if (!compared.test(p.metric.replaceAll('.', '_')) || p.kind === 'gauge') continue;
    const key = pointKey(p.metric, p.attributes);
    out.set(key, p.histogram ? [...p.histogram.bucketCounts, p.histogram.sum, p.histogram.count] : [p.value ?? NaN]);
  }
  return out;
}

/**
 * Scrape, wait for an export, scrape again: when both scrapes agree, the
 * export between them saw the same counters. Returns both views.
 */
async function quietComparison(agent: AgentProcess, receiver: OtlpReceiver): Promise<{ scraped: Map<string, number[]>; exported: Map<string, number[]>; last: OtlpExport }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const before = fromScrape(parseExposition(await agent.metrics()));
    const since = Date.now();
    await waitFor(() => receiver.exportAfter(since) !== undefined, { timeoutMs: 10_000, what: 'an OTLP export' });
    const after = fromScrape(parseExposition(await agent.metrics()));
    if (JSON.stringify([...before]) === JSON.stringify([...after])) return { scraped: after, exported: fromExport(receiver.exportAfter(since)!), last: receiver.exportAfter(since)! };
    await sleep(500);
  }
  throw new Error('the compared families never went quiet');
}

async function tcpTraffic(client: Pod, server: Pod, connections: number): Promise<void> {
  const port = 7071;
  const serverScript = `require('node:net').createServer((s) => s.on('data', () => {}).on('end', () => s.end())).listen(${port}, '${server.ipv4}', () => console.log('up'));`;
  const listener = server.run(process.execPath, ['-e', serverScript], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => listener.stdout!.once('data', resolve));
  const clientScript = `
    const net = require('node:net');
    (async () => {
      for (let i = 0; i < ${connections}; i++) {
        await new Promise((ok, fail) => { const s = net.connect(${port}, '${server.ipv4}', () => s.end(Buffer.alloc(4096))); s.on('close', ok).on('error', fail); s.resume(); });
      }
    })().catch((e) => { console.error(e); process.exit(1); });`;
  const result = await client.exec(process.execPath, ['-e', clientScript]);
  listener.kill();
  if (result.code !== 0) throw new Error(`TCP client failed: ${result.stderr}`);
}

function compare(t: Test, scraped: Map<string, number[]>, exported: Map<string, number[]>, what: string): void {
  t.ok(scraped.size >= 4, `${what}: ${scraped.size} counter and histogram series to compare`);
  const mismatches = [...scraped].filter(([key, values]) => JSON.stringify(exported.get(key)) !== JSON.stringify(values)).map(([key, values]) => `${key}: /metrics ${JSON.stringify(values)}, OTLP ${JSON.stringify(exported.get(key))}`);
  t.same(mismatches, [], `${what}: every series equal in OTLP and /metrics (histograms bucket by bucket)`);
}

t.test('OTLP push agrees with /metrics and survives a receiver outage', async (t) => {
  if (!requirePrivileges(t, 'OTLP push of real BPF counters')) return;
  const receiver = new OtlpReceiver();
  await receiver.start();
  t.teardown(() => receiver.stop());
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const client = await net.addPod();
  const server = await net.addPod();

  const agent = await startAgent({
    env: {
      PROBEPILOT_OTLP_ENDPOINT: receiver.endpoint,
      PROBEPILOT_OTLP_INTERVAL_SECONDS: '1',
      PROBEPILOT_OTLP_HEADERS: 'authorization=Bearer test-token',
      PROBEPILOT_OTLP_RETRY_INITIAL_BACKOFF_MS: '200',
      PROBEPILOT_OTLP_RETRY_MAX_BACKOFF_MS: '1000',
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_BLOCK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_PROCESS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());

  await tcpTraffic(client, server, 5);
  await client.exec('ping', ['-c', '3', '-i', '0.2', server.ipv4]);
  const first = await quietComparison(agent, receiver);
  compare(t, first.scraped, first.exported, 'after traffic');
  const histogram = first.last.points.find((p: OtlpPoint) => p.metric === 'probepilot.tcp.connect.latency.seconds' && p.attributes['probepilot.cgroup'] === client.cgroupPath);
  t.equal(histogram?.histogram?.count, 5, 'the client pod\'s connect latency histogram holds its 5 connects');
  t.equal(histogram?.unit, 's', 'in seconds');
  t.equal(histogram?.temporality, 'AGGREGATION_TEMPORALITY_CUMULATIVE', 'cumulative by default');
  t.equal(histogram?.histogram?.explicitBounds.length, 26, 'explicit bounds are the kernel slots: 2^10 … 2^35 ns');
  t.equal(first.last.resource['service.name'], 'probepilot', 'resource names the service');
  t.equal(receiver.lastMetadata.authorization, 'Bearer test-token', 'configured headers go with every export');

  const clientPackets = (families: MetricFamily[]) => sumSamples(families, 'probepilot_network_packets_total', { cgroup: client.cgroupPath, direction: 'egress' });
  const packetsBefore = clientPackets(parseExposition(await agent.metrics()));

  receiver.stop();
  await client.exec('ping', ['-c', '10', '-i', '0.2', server.ipv4]);
  await sleep(3000);
  const during = parseExposition(await agent.metrics());
  const retries = sumSamples(during, 'probepilot_otlp_exports_total', { result: 'retry' });
  t.ok(retries >= 1, `retryable failures are retried during the outage (${retries} retries)`);
  t.equal((await fetch(`${agent.url}/readyz`)).status, 200, 'the agent keeps serving while the receiver is down');

  await receiver.start();
  const second = await quietComparison(agent, receiver);
  compare(t, second.scraped, second.exported, 'after the outage');
  const exportedPackets = second.exported.get(`probepilot.network.packets ${expectedAttributes({ cgroup: client.cgroupPath, direction: 'egress', protocol: 'icmp' })}`)?.[0] ?? 0;
  t.ok(exportedPackets >= 10 + 3, `cumulative counts after recovery include the outage's pings (${exportedPackets} ICMP packets pushed)`);
  t.ok(clientPackets(parseExposition(await agent.metrics())) >= packetsBefore + 10, 'and /metrics agrees');
  const successes = sumSamples(parseExposition(await agent.metrics()), 'probepilot_otlp_exports_total', { result: 'success' });
  t.ok(successes >= 2, `exports succeed again (${successes} successes)`);

  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
