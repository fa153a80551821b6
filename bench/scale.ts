// --scale: the agent on a node of N pods (default 1,000), in Kubernetes mode
// against the API server fixture. Every pod is a kubelet-shaped cgroup
// (systemd driver, QoS classes in turn) with a live process; a share of them
// (default 10 %) also has a netns and a veth on a bridge, and its process is
// a ping of the gateway every second (traffic for the network collector).
// The others run a perl loop waking once a second (select: a syscall and a
// run-queue wait each time), so every pod makes series in the syscalls and
// sched collectors, and the networked ones in network too. Block I/O is left
// out: a thousand writers would measure the disk, not the agent.
//
// Measured like the scrape section (one table): /metrics p50/p99, the
// longest event-loop stall while scraping, CPU per scrape and per idle
// second, RSS; plus the series count and how many pods each collector shows.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent, onlyCollectors, type AgentProcess } from '../test/helpers/agent.js';
import { FakeKubeApi, podObject } from '../test/helpers/kube-api.js';
import { createTestNetwork, type QosClass, type TestNetwork } from '../test/helpers/pods.js';
import { waitFor } from '../test/helpers/wait.js';
import type { BenchOptions, BenchRow, BenchSection } from './common.js';
import { measureScrapes, scrapeRows, scrapeSamples } from './scrape.js';

export interface ScaleOptions {
  pods: number;
  /** Share of the pods with a netns, a veth and traffic, 0..1. */
  networkShare: number;
}

/** pods.ts gives a test network 250 addresses: a new network (bridge and /24) every 250 networked pods. */
const podsPerNetwork = 250;
const qosClasses: readonly QosClass[] = ['burstable', 'besteffort', 'guaranteed'];
/** Cgroup pods are started this many at a time: one by one, 1,000 spawns and cgroup checks took most of a minute. */
const startBatch = 25;

/** The benchmark's pods (app-N; the node's other cgroups are not counted) with at least one sample of `family` in an exposition. */
function podsWith(exposition: string, family: string): number {
  const pods = new Set<string>();
  const line = new RegExp(`^${family}(?:_bucket|_count|_sum)?\\{([^\\n]*)\\}`, 'gm');
  for (const [, labels] of exposition.matchAll(line)) {
    const namespace = /(?:^|,)namespace="([^"]*)"/.exec(labels!)?.[1];
    const pod = /(?:^|,)pod="(app-\d+)"/.exec(labels!)?.[1];
    if (namespace !== undefined && pod !== undefined) pods.add(`${namespace}/${pod}`);
  }
  return pods.size;
}

export async function benchScale(opts: BenchOptions, scale: ScaleOptions): Promise<BenchSection> {
  const networked = Math.round(scale.pods * scale.networkShare);
  const api = new FakeKubeApi();
  await api.start();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-bench-scale-'));
  const networks: TestNetwork[] = [];
  let agent: AgentProcess | undefined;
  try {
    const kubeconfig = path.join(dir, 'kubeconfig');
    api.writeKubeconfig(kubeconfig);
    for (let i = 0; i < Math.max(1, Math.ceil(networked / podsPerNetwork)); i++) networks.push(await createTestNetwork());
    const owner = (i: number) => ({ namespace: `team-${i % 20}`, name: `app-${i}`, owner: { kind: 'StatefulSet', name: `app-${i % 50}` } });
    const pinging: Array<() => void> = [];
    for (let i = 0; i < networked; i++) {
      const net = networks[Math.floor(i / podsPerNetwork)]!;
      const pod = await net.addPod({ qos: qosClasses[i % qosClasses.length] });
      // Started once all are built: adding a pod waits for the whole network to go quiet.
      pinging.push(() => pod.run('ping', ['-q', '-i', '1', net.gatewayIpv4], { stdio: 'ignore' }).unref());
      api.upsertPod(podObject(pod, owner(i)));
    }
    for (const start of pinging) start();
    for (let i = networked; i < scale.pods; i += startBatch) {
      const batch = Array.from({ length: Math.min(startBatch, scale.pods - i) }, (_, k) => i + k);
      await Promise.all(
        batch.map(async (n) => {
          const pod = await networks[0]!.addCgroupPod(['perl', '-e', 'select(undef, undef, undef, 1) while 1'], { qos: qosClasses[n % qosClasses.length] });
          api.upsertPod(podObject(pod, owner(n)));
        }),
      );
    }
    agent = await startAgent({
      env: {
        ...onlyCollectors('syscalls', 'sched', 'network'),
        PROBEPILOT_LOG_LEVEL: 'info',
        PROBEPILOT_KUBERNETES_ENABLED: 'true',
        PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
        NODE_NAME: 'test-node',
        PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: networks.map((n) => `pp${n.runId}h*`).join(','),
      },
    });
    const running = agent;
    // Every pod shows up in the sched histogram within a few collections once the informer has them all.
    let exposition = '';
    await waitFor(
      async () => {
        exposition = await running.metrics();
        return podsWith(exposition, 'probepilot_runqueue_latency_seconds') >= scale.pods && podsWith(exposition, 'probepilot_network_bytes_total') >= networked;
      },
      { timeoutMs: 60_000, intervalMs: 2000, what: `series of all ${scale.pods} pods` },
    ).catch(() => undefined); // measured as they are: the rows below say how many pods each collector shows
    const label = `${scale.pods.toLocaleString('en-US')} pods`;
    const shown = (family: string, of: number, text: string): BenchRow => {
      const value = podsWith(exposition, family);
      return { measure: `pods with ${text} series, ${label}`, baseline: 'pods', base: of, value, ratio: value / of };
    };
    const coverage = [
      shown('probepilot_syscalls_total', scale.pods, 'syscalls'),
      shown('probepilot_runqueue_latency_seconds', scale.pods, 'sched'),
      shown('probepilot_network_bytes_total', networked, 'network'),
    ];
    const run = await measureScrapes(running, opts.quick ? 3 : 50, opts.quick ? 20 : 200, opts.quick ? 1 : 5);
    const seriesRow: BenchRow = { measure: `series, ${label}`, baseline: 'pods', base: scale.pods, value: run.series, ratio: run.series / scale.pods };
    // The scrape targets: p99 ≤ 50 ms at ~20k series, ≤ 250 ms at ~100k; in between, the nearer one.
    const p99Target = run.series <= 50_000 ? 50 : 250;
    return { rows: [seriesRow, ...coverage, ...scrapeRows(label, run, p99Target)], samples: { scale: { ...scrapeSamples(run), pods: [scale.pods], networkedPods: [networked] } } };
  } finally {
    await agent?.stop();
    for (const net of networks) await net.destroy();
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
