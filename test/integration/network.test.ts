// The network collector against the kernel's own accounting: pods (netns +
// veth on a bridge + cgroup) exchange known traffic, and each pod's exported
// bytes and packets per direction must match its veth's statistics.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { programLoaded, requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod, type VethStats } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { runIperf } from '../helpers/iperf.js';
import { checkExposition, findSamples, parseExposition, sampleValue, sumSamples, type MetricFamily } from '../helpers/exposition.js';
import { promtoolCheckMetrics, startPrometheus } from '../helpers/prometheus.js';
import { waitFor } from '../helpers/wait.js';

const tolerance = 0.01;

interface Reading {
  veth: VethStats;
  metrics: MetricFamily[];
}

function counted(families: MetricFamily[], metric: 'bytes' | 'packets', pod: Pod, direction: string, protocol?: string): number {
  return sumSamples(families, `probepilot_network_${metric}_total`, {
    cgroup: pod.cgroupPath,
    direction,
    ...(protocol ? { protocol } : {}),
  });
}

async function read(agent: AgentProcess, pods: readonly Pod[]): Promise<Map<Pod, Reading>> {
  const metrics = parseExposition(await agent.metrics());
  return new Map(pods.map((pod) => [pod, { veth: pod.vethStats(), metrics }]));
}

function within(t: Test, actual: number, expected: number, what: string): void {
  const error = expected === 0 ? actual : Math.abs(actual - expected) / expected;
  t.ok(error <= tolerance, `${what}: exported ${actual}, veth ${expected} (${(error * 100).toFixed(3)} % off, tolerance ${tolerance * 100} %)`);
}

/** The programs the agent says these collectors loaded (Debian's bpftool 7.1 cannot list TCX attachments). */
async function collectorPrograms(agent: AgentProcess, collectors: readonly string[]): Promise<Array<{ name: string; id: number }>> {
  const res = await fetch(`${agent.url}/api/v1/collectors`);
  if (!res.ok) throw new Error(`/api/v1/collectors answered ${res.status}`);
  const states = (await res.json()) as Array<{ name: string; programs: Array<{ name: string; id: number }> }>;
  return states.filter((s) => collectors.includes(s.name)).flatMap((s) => s.programs);
}

function attachedLog(agent: AgentProcess, pod: Pod) {
  return agent.waitForLog(
    // attached with its workload known, or resolved later (the pod's namespace had no process yet, or its veth peer moved in after)
    (l) => l.interface === pod.hostVeth && l.workload === pod.cgroupPath,
    `attach to ${pod.hostVeth} with workload ${pod.cgroupPath}`,
  );
}

t.test('network collector matches veth statistics, in TCX and clsact modes', async (t) => {
  if (!requirePrivileges(t, 'network collector on real veths')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'systemd' });
  let b: Pod | undefined;

  for (const mode of ['tcx', 'clsact'] as const) {
    await t.test(`attach mode ${mode}`, async (t) => {
      const agent = await startAgent({
        env: {
          PROBEPILOT_COLLECTORS_NETWORK_ATTACH_MODE: mode,
          PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
          PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.2',
        },
      });
      t.teardown(() => agent.stop());
      // The second pod appears after the agent started: it must be picked up without a restart.
      b ??= await net.addPod({ layout: 'plain' });
      const pods = [a, b];
      for (const pod of pods) await attachedLog(agent, pod);

      const before = await read(agent, pods);
      const tcp = await runIperf({ server: b, client: a, protocol: 'tcp', bytes: 8 * 1024 * 1024 });
      const udp = await runIperf({ server: a, client: b, protocol: 'udp', bytes: 2 * 1024 * 1024, ipv6: true, bitrate: '50M', length: 1200 });
      await a.exec('ping', ['-c', '10', '-i', '0.02', '-q', b.ipv4]);
      await b.exec('ping', ['-6', '-c', '10', '-i', '0.02', '-q', a.ipv6]);
      await sleep(200);
      const after = await read(agent, pods);

      for (const pod of pods) {
        const x = before.get(pod)!;
        const y = after.get(pod)!;
        const delta = (metric: 'bytes' | 'packets', direction: string, protocol?: string): number =>
          counted(y.metrics, metric, pod, direction, protocol) - counted(x.metrics, metric, pod, direction, protocol);
        // The host end receives (rx) what the pod sends.
        within(t, delta('bytes', 'egress'), y.veth.rxBytes - x.veth.rxBytes, `${pod.name} egress bytes`);
        within(t, delta('bytes', 'ingress'), y.veth.txBytes - x.veth.txBytes, `${pod.name} ingress bytes`);
        within(t, delta('packets', 'egress'), y.veth.rxPackets - x.veth.rxPackets, `${pod.name} egress packets`);
        within(t, delta('packets', 'ingress'), y.veth.txPackets - x.veth.txPackets, `${pod.name} ingress packets`);
      }

      const delta = (pod: Pod, metric: 'bytes' | 'packets', direction: string, protocol: string): number =>
        counted(after.get(pod)!.metrics, metric, pod, direction, protocol) - counted(before.get(pod)!.metrics, metric, pod, direction, protocol);
      // Protocol split against iperf3's payload counts: what the server read must have crossed the
      // wire (headers make ours larger); what the client wrote bounds it from above (with -n the
      // server may stop reading before the socket buffers drain).
      const tcpSent = delta(a, 'bytes', 'egress', 'tcp');
      t.ok(
        tcpSent >= tcp.bytesReceived && tcpSent <= tcp.bytesSent * 1.1,
        `pod a sent ${tcpSent} TCP bytes; iperf3 read ${tcp.bytesReceived}, wrote ${tcp.bytesSent} payload bytes`,
      );
      const udpSent = delta(b, 'bytes', 'egress', 'udp');
      t.ok(
        udpSent >= udp.bytesReceived && udpSent <= udp.bytesSent * 1.1,
        `pod b sent ${udpSent} UDP bytes over IPv6; iperf3 read ${udp.bytesReceived}, wrote ${udp.bytesSent}`,
      );
      // Each side counts the same TCP segments on its own veth.
      within(t, delta(b, 'packets', 'ingress', 'tcp'), delta(a, 'packets', 'egress', 'tcp'), 'b received the TCP packets a sent');
      const icmpOut = delta(a, 'packets', 'egress', 'icmp');
      // 10 echo requests and 10 replies to b's IPv6 pings, plus neighbour discovery the kernel may add.
      t.ok(icmpOut >= 20 && icmpOut <= 30, `pod a sent ${icmpOut} ICMP packets (20 pings/replies + ND)`);

      t.equal(sampleValue(after.get(a)!.metrics, 'probepilot_network_interfaces_attached', { mode }), 2, `both veths attached in ${mode} mode`);
      t.equal(sampleValue(after.get(a)!.metrics, 'probepilot_collector_up', { collector: 'network', reason: '' }), 1, 'collector up');

      // Ours by id: other agents on the machine may run programs of the same names.
      const ours = await collectorPrograms(agent, ['network', 'dns']);
      t.ok(ours.some((p) => p.name === 'pp_net_ingress') && ours.some((p) => p.name === 'pp_net_egress'), `the network programs among ${ours.map((p) => p.name).join(', ')}`);
      t.equal(await agent.stop(), 0, 'agent exits 0 on SIGTERM');
      t.same(ours.filter((p) => programLoaded(p.id)), [], 'no program of ours left loaded (network and DNS)');
      for (const pod of pods) {
        t.equal(execFileSync('tc', ['filter', 'show', 'dev', pod.hostVeth, 'ingress'], { encoding: 'utf8' }).trim(), '', `no filter left on ${pod.hostVeth}`);
      }
      t.equal(agent.stderr(), '', 'nothing on stderr');
    });
  }
});

t.test('a removed pod keeps its final counts for the grace period, then its series disappear', async (t) => {
  if (!requirePrivileges(t, 'network collector on real veths')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'plain' });
  const b = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.2',
      PROBEPILOT_SERIES_GRACE_SECONDS: '3',
    },
  });
  t.teardown(() => agent.stop());
  for (const pod of [a, b]) await attachedLog(agent, pod);
  const base = counted(parseExposition(await agent.metrics()), 'packets', a, 'egress');
  const vethBase = a.vethStats().rxPackets;
  await a.exec('ping', ['-c', '5', '-i', '0.02', '-q', b.ipv4]);
  await sleep(100);
  const sent = counted(parseExposition(await agent.metrics()), 'packets', a, 'egress');
  within(t, sent - base, a.vethStats().rxPackets - vethBase, 'pod a egress packets before removal');

  await a.destroy();
  await agent.waitForLog((l) => l.msg === 'detached from interface' && l.interface === a.hostVeth, 'detach from the removed veth');
  const kept = counted(parseExposition(await agent.metrics()), 'packets', a, 'egress');
  t.ok(kept >= sent, `final count kept after removal (${kept} ≥ ${sent}): the counter does not reset`);
  await waitFor(async () => counted(parseExposition(await agent.metrics()), 'packets', a, 'egress') === 0, {
    timeoutMs: 10_000,
    what: 'pod a series to disappear after the grace period',
  });
  t.pass('series gone after the grace period');
});

t.test('more pods than the series limit: sum over pods plus __overflow__ equals the veths\' totals', async (t) => {
  if (!requirePrivileges(t, 'network collector on real veths')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const pods: Pod[] = [];
  for (let i = 0; i < 8; i++) pods.push(await net.addPod({ layout: 'plain' }));
  // A pod that pings is at least two label sets (egress and ingress icmp): 8 pods cannot fit in 6.
  const limit = 6;
  const agent = await startAgent({
    env: {
      ...onlyCollectors('network'),
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`,
      PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.2',
      PROBEPILOT_SERIES_LIMIT: String(limit),
    },
  });
  t.teardown(() => agent.stop());
  for (const pod of pods) await attachedLog(agent, pod);

  const vethTotals = () => pods.map((p) => p.vethStats()).reduce((a, b) => ({ rxBytes: a.rxBytes + b.rxBytes, txBytes: a.txBytes + b.txBytes, rxPackets: a.rxPackets + b.rxPackets, txPackets: a.txPackets + b.txPackets }));
  // Only these veths are attached: every series, the overflow included, is theirs.
  const exported = (families: MetricFamily[], family: string, direction: string) => sumSamples(families, family, { direction });
  const beforeVeth = vethTotals();
  const beforeEach = new Map(pods.map((p) => [p, p.vethStats()]));
  const before = parseExposition(await agent.metrics());
  const overflowSeen: number[] = [];
  for (const [i, pod] of pods.entries()) {
    await pod.exec('ping', ['-c', '20', '-i', '0.01', '-s', String(200 + 100 * i), '-q', pods[(i + 1) % pods.length]!.ipv4]);
    // A scrape between pods: each arrives when the room is in a known state.
    overflowSeen.push(sumSamples(parseExposition(await agent.metrics()), 'probepilot_network_bytes_total', { cgroup: '__overflow__' }));
  }
  await sleep(200);
  const after = parseExposition(await agent.metrics());
  const afterVeth = vethTotals();

  for (const [metric, vethOut, vethIn] of [
    ['bytes', afterVeth.rxBytes - beforeVeth.rxBytes, afterVeth.txBytes - beforeVeth.txBytes],
    ['packets', afterVeth.rxPackets - beforeVeth.rxPackets, afterVeth.txPackets - beforeVeth.txPackets],
  ] as const) {
    const family = `probepilot_network_${metric}_total`;
    within(t, exported(after, family, 'egress') - exported(before, family, 'egress'), vethOut, `${family} egress, pods + overflow`);
    within(t, exported(after, family, 'ingress') - exported(before, family, 'ingress'), vethIn, `${family} ingress, pods + overflow`);
    // The peer matrix counts IP packets only (ARP is protocol "other" in the totals and has no peer).
    const ip = (families: MetricFamily[], direction: string) => sumSamples(families, family, { direction, protocol: /^(tcp|udp|icmp)$/ });
    const flowFamily = `probepilot_network_flow_${metric}_total`;
    for (const direction of ['egress', 'ingress']) {
      within(t, exported(after, flowFamily, direction) - exported(before, flowFamily, direction), ip(after, direction) - ip(before, direction), `${flowFamily} ${direction}, pods + overflow, against the IP traffic`);
    }
  }
  const overflow = sumSamples(after, 'probepilot_network_bytes_total', { cgroup: '__overflow__' });
  t.ok(overflow > 0, `the overflow holds ${overflow} bytes`);
  t.same(overflowSeen, [...overflowSeen].sort((x, y) => x - y), 'the overflow never went backwards between scrapes');
  const own = findSamples(after, 'probepilot_network_bytes_total', { cgroup: /^(?!__overflow__$)/ });
  t.equal(own.length, limit, `the room is full: ${limit} series of their own, the rest folded`);
  for (const pod of pods) {
    // What a pod's own series holds is its traffic or a part of it (its other label sets may have folded).
    const ownBytes = counted(after, 'bytes', pod, 'egress') - counted(before, 'bytes', pod, 'egress');
    const vethBytes = pod.vethStats().rxBytes - beforeEach.get(pod)!.rxBytes;
    t.ok(ownBytes <= vethBytes * (1 + tolerance), `${pod.name}: ${ownBytes} egress bytes in its own series, of ${vethBytes} on its veth`);
  }
  t.same(
    findSamples(after, 'probepilot_network_flow_bytes_total', { cgroup: '__overflow__' }).map((s) => [s.labels.peer_namespace, s.labels.peer_workload]),
    findSamples(after, 'probepilot_network_flow_bytes_total', { cgroup: '__overflow__' }).map(() => ['__overflow__', '__overflow__']),
    'the peer matrix folds the peer\'s name too',
  );
  t.ok(sumSamples(after, 'probepilot_series_overflow_total', { collector: 'network', family: 'probepilot_network_bytes_total' }) > 0, 'probepilot_series_overflow_total counts the folded label sets');
  t.same(checkExposition(await agent.metrics()), [], 'exposition is well formed');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});

t.test('a real Prometheus scrapes the agent without errors and the exposition is clean', async (t) => {
  if (!requirePrivileges(t, 'agent scraped by Prometheus')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod({ layout: 'cgroupfs' });
  const b = await net.addPod({ layout: 'systemd' });
  const agent = await startAgent({
    env: { PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${net.runId}h*`, PROBEPILOT_BPF_STATS: 'true' },
  });
  t.teardown(() => agent.stop());
  for (const pod of [a, b]) await attachedLog(agent, pod);
  await a.exec('ping', ['-c', '20', '-i', '0.02', '-q', b.ipv4]);

  const prometheus = await startPrometheus({ targets: [`127.0.0.1:${agent.port}`], scrapeIntervalSeconds: 1 });
  t.teardown(() => prometheus.stop());
  await waitFor(async () => (await prometheus.query('up'))[0]?.value === 1, { timeoutMs: 30_000, what: 'up == 1' });
  const expected = counted(parseExposition(await agent.metrics()), 'packets', a, 'egress', 'icmp');
  const series = await waitFor(
    async () => {
      const result = await prometheus.query(`probepilot_network_packets_total{cgroup="${a.cgroupPath}",direction="egress",protocol="icmp"}`);
      return result.length === 1 && result[0]!.value >= expected ? result : undefined;
    },
    { timeoutMs: 15_000, what: "pod a's ICMP packets in Prometheus" },
  );
  t.ok(series[0]!.value >= 20, `Prometheus has pod a's ${series[0]!.value} ICMP packets`);
  const targets = await prometheus.targets();
  t.equal(targets.length, 1);
  t.equal(targets[0]?.health, 'up');
  t.equal(targets[0]?.lastError, '', 'no scrape error');
  const runs = await prometheus.query('sum(probepilot_bpf_program_runs_total{collector="network"})');
  t.ok((runs[0]?.value ?? 0) > 0, 'program run counts exported with bpfStats on');

  const text = await agent.metrics();
  t.same(checkExposition(Buffer.from(text)), [], 'our exposition checker finds nothing');
  const promtool = await promtoolCheckMetrics(text);
  t.ok(promtool.ok, `promtool check metrics is clean: ${promtool.output}`);
});

t.test('a disabled collector reports up 0 with its reason, the agent keeps serving', async (t) => {
  if (!requirePrivileges(t, 'agent start')) return;
  const agent = await startAgent({ env: { PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false' } });
  t.teardown(() => agent.stop());
  const families = parseExposition(await agent.metrics());
  t.equal(sampleValue(families, 'probepilot_collector_up', { collector: 'network', reason: 'disabled in config' }), 0);
  t.equal(families.find((f) => f.name === 'probepilot_network_bytes_total')?.samples.length, 0, 'no network series');
  const ready = await fetch(`${agent.url}/readyz`);
  t.equal(ready.status, 200, 'ready: a disabled collector does not hold readiness');
});
