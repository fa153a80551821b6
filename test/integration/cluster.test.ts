// The CLI's cluster mode: two agents on loopback ports, each watching its own
// pod, listed by EndpointSlices of the agents' Service from the Kubernetes API
// fixture. status, flows and top (its snapshot and its TUI in tmux) merge
// both; with one agent stopped it is listed as unreachable (exit 1) and the
// other's data is still shown. With --prometheus status and flows answer from
// a real Prometheus scraping both.
import t from 'tap';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import { findSamples, parseExposition } from '../helpers/exposition.js';
import { startFakeKubeApi } from '../helpers/kube-api.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { waitFor } from '../helpers/wait.js';
import { execCommand } from '../helpers/proc.js';
import { startPrometheus } from '../helpers/prometheus.js';
import { Terminal } from '../helpers/terminal.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

function slice(node: string, agent: AgentProcess) {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `probepilot-${node}`, namespace: 'probepilot', labels: { 'kubernetes.io/service-name': 'probepilot' } },
    addressType: 'IPv4',
    endpoints: [{ addresses: ['127.0.0.1'], nodeName: node, conditions: { ready: true } }],
    ports: [{ name: 'metrics', port: agent.port, protocol: 'TCP' }],
  };
}

async function ping(from: Pod, to: string): Promise<void> {
  const res = await from.exec('ping', ['-c', '3', '-i', '0.2', '-W', '2', to]);
  if (res.code !== 0) throw new Error(`ping failed: ${res.stdout}${res.stderr}`);
}

t.test('status and flows across the agents of the cluster', async (t) => {
  if (!requirePrivileges(t, 'two agents with real pods')) return;
  const { api, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod();
  const b = await net.addPod();
  const agentFor = (pod: Pod) => startAgent({ env: { ...onlyCollectors('network'), PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: pod.hostVeth } });
  const agentA = await agentFor(a);
  t.teardown(() => agentA.stop());
  const agentB = await agentFor(b);
  t.teardown(() => agentB.stop());
  api.putObject('/apis/discovery.k8s.io/v1/namespaces/probepilot/endpointslices', {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSliceList',
    metadata: { name: '' },
    items: [slice('node-a', agentA), slice('node-b', agentB)],
  });
  await ping(a, b.ipv4);
  for (const [agent, pod] of [[agentA, a], [agentB, b]] as const) {
    await waitFor(async () => findSamples(parseExposition(await agent.metrics()), 'probepilot_network_packets_total', { cgroup: pod.cgroupPath, protocol: 'icmp' }).length > 0, {
      timeoutMs: 10_000,
      what: `${pod.name}'s pings at its agent`,
    });
  }
  // Not spawnSync: the API fixture answering the CLI lives in this process.
  const run = async (args: string[]) => {
    const res = await execCommand(process.execPath, [cli, ...args, '--mode', 'cluster', '--kubeconfig', kubeconfig], { timeoutMs: 30_000 });
    return { status: res.code, stdout: res.stdout, stderr: res.stderr };
  };

  let res = await run(['status', '-o', 'json']);
  t.equal(res.status, 0, res.stderr);
  let status = JSON.parse(res.stdout) as { agents: Array<{ node: string; status: { collectors: Array<{ name: string; up: boolean }> } }>; unreachable: unknown[] };
  t.same(status.agents.map((x) => x.node), ['node-a', 'node-b'], 'both agents, from the EndpointSlices');
  t.ok(status.agents.every((x) => x.status.collectors.find((c) => c.name === 'network')?.up), 'each with its network collector up');
  t.same(status.unreachable, []);
  res = await run(['status']);
  t.match(res.stdout, /^NODE\s+AGENT\s+VERSION\s+MODE\s+COLLECTORS UP\s+DOWN$/m);
  t.match(res.stdout, /^node-a\s+http:\/\/127\.0\.0\.1:\d+\s+\S+\s+standalone\s+1\/1/m);

  res = await run(['flows', '--view', 'protocol', '--top', '100', '-o', 'json']);
  t.equal(res.status, 0, res.stderr);
  const flows = JSON.parse(res.stdout) as { flows: Array<{ node: string; workload: { cgroup: string }; protocol: string; packets: number }> };
  const icmp = flows.flows.filter((f) => f.protocol === 'icmp');
  t.ok(icmp.some((f) => f.node === 'node-a' && f.workload.cgroup === a.cgroupPath), 'node-a\'s flows: pod a');
  t.ok(icmp.some((f) => f.node === 'node-b' && f.workload.cgroup === b.cgroupPath), 'node-b\'s flows: pod b');
  t.notOk(flows.flows.some((f) => f.node === 'node-a' && f.workload.cgroup === b.cgroupPath), 'each agent reports only its own interfaces');
  res = await run(['flows', '--view', 'protocol']);
  t.match(res.stdout, /^NODE\s+WORKLOAD\s+DIRECTION\s+PROTOCOL/m, 'the table names each flow\'s node');

  res = await run(['top', '-o', 'json']);
  t.equal(res.status, 0, res.stderr);
  const top = JSON.parse(res.stdout) as { workloads: Array<{ node: string; workload: { cgroup: string }; rxPacketsPerSecond: number | null }>; collectorsOff: string[]; unreachable: unknown[] };
  for (const [node, pod] of [['node-a', a], ['node-b', b]] as const) {
    t.ok(top.workloads.some((w) => w.node === node && w.workload.cgroup === pod.cgroupPath && w.rxPacketsPerSecond !== null), `top: ${node}'s workload ${pod.name}, with rates`);
  }
  t.same([top.collectorsOff, top.unreachable], [['sched', 'syscalls', 'tcp', 'gpu'], []], 'top: the collectors these agents do not run; every agent answered');
  res = await run(['top']);
  t.match(res.stdout, /^NODE\s+WORKLOAD\s+RX\/S\s+TX\/S/m, 'top\'s table names each workload\'s node');
  const term = new Terminal('cluster');
  t.teardown(() => term.stop());
  await term.start(150, 20);
  await term.type(`${process.execPath} ${cli} top --mode cluster --kubeconfig ${kubeconfig} --interval 1 --sort name`);
  await term.key('Enter');
  await term.waitForScreen('both nodes\' workloads in the TUI', (lines) => lines.some((l) => /^NODE\s+WORKLOAD/.test(l)) && ['node-a', 'node-b'].every((node) => lines.some((l) => l.startsWith(`${node}  /`))));
  t.pass('the TUI in cluster mode: a NODE column, a row from each agent');

  // The same questions answered by Prometheus, which scrapes both agents.
  const prometheus = await startPrometheus({ targets: [agentA, agentB].map((x) => `127.0.0.1:${x.port}`), scrapeIntervalSeconds: 1 });
  t.teardown(() => prometheus.stop());
  await prometheus.waitFor(async () => (await prometheus.query('count(count_over_time(up[1m]) >= 3)'))[0]?.value === 2, 30_000, 'three scrapes of both agents');
  const fromPrometheus = async (args: string[]) => {
    const res = await execCommand(process.execPath, [cli, ...args, '--prometheus', prometheus.url, '-o', 'json'], { timeoutMs: 30_000 });
    t.equal(res.code, 0, `${args.join(' ')} --prometheus: ${res.stderr}`);
    return JSON.parse(res.stdout) as unknown;
  };
  const nodes = (await fromPrometheus(['status'])) as { nodes: Array<{ node: string; up: string[]; down: unknown[] }> };
  t.same(nodes.nodes.map((n) => [n.node, n.up, n.down]), [agentA, agentB].map((x) => [`127.0.0.1:${x.port}`, ['network'], []]).sort(), 'status from Prometheus: both agents, network up');
  const promFlows = (await fromPrometheus(['flows', '--view', 'protocol', '--top', '100'])) as { flows: Array<{ node: string; workload: { cgroup: string }; protocol: string; packets: number; bytesPerSecond: number | null }> };
  for (const [agent, pod] of [[agentA, a], [agentB, b]] as const) {
    const flow = promFlows.flows.find((f) => f.node === `127.0.0.1:${agent.port}` && f.workload.cgroup === pod.cgroupPath && f.protocol === 'icmp');
    const fromAgent = findSamples(parseExposition(await agent.metrics()), 'probepilot_network_packets_total', { cgroup: pod.cgroupPath, protocol: 'icmp', direction: flow?.workload ? (flow as unknown as { direction: string }).direction : '' });
    t.ok(flow && typeof flow.bytesPerSecond === 'number', `flows from Prometheus: ${pod.name}'s ICMP at its agent, with a rate`);
    t.equal(flow?.packets, fromAgent[0]?.value, `${pod.name}: the packet count Prometheus holds is the agent's`);
  }

  await agentB.stop();
  res = await run(['status', '-o', 'json']);
  t.equal(res.status, 1, 'an unreachable agent: exit 1');
  status = JSON.parse(res.stdout) as typeof status;
  t.same(status.agents.map((x) => x.node), ['node-a'], 'the other agent still answers');
  t.match(status.unreachable, [{ node: 'node-b', error: /cannot reach the agent/ }], 'node-b is listed as unreachable');
  res = await run(['flows', '--view', 'protocol']);
  t.equal(res.status, 1);
  t.match(res.stdout, /^node-a\s+/m, 'node-a\'s flows are still shown');
  t.match(res.stdout, /^unreachable: node-b \(http:\/\/127\.0\.0\.1:\d+\): cannot reach the agent/m);
  res = await run(['top']);
  t.equal(res.status, 1, 'top: an unreachable agent, exit 1');
  t.match(res.stdout, /^node-a\s+\S+/m, 'node-a\'s workloads are still shown');
  t.match(res.stdout, /^unreachable: node-b \(http:\/\/127\.0\.0\.1:\d+\): cannot reach the agent/m);
  const screen = await term.waitForScreen('node-b unreachable in the TUI', (lines) => lines.some((l) => /^unreachable: node-b \(http:\/\/127\.0\.0\.1:\d+\): cannot reach the agent/.test(l)));
  t.ok(screen.some((l) => /^node-a\s+/.test(l)), 'the TUI lists node-b as unreachable and keeps node-a\'s rows');
  await term.type('q');
});
