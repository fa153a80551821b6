// The GPU collector through the real dlopen path, against a fake NVML and a
// fake DCGM built here (test/fixtures/gpu/) whose answers the test writes: every
// value must reach /metrics exactly in base units; an NVML error on one GPU
// marks only that GPU; a missing library or a failing nvmlInit disables only
// the GPU collector. In Kubernetes mode a pod-resources fixture on a unix
// socket names the pods holding each GPU, also across a kubelet restart, and
// two pods sharing one GPU each get their processes' share.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import { checkExposition, findSamples, parseExposition, sampleValue, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { PodResourcesServer } from '../helpers/pod-resources-server.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { promtoolCheckMetrics } from '../helpers/prometheus.js';
import { waitFor } from '../helpers/wait.js';
import { fakeDcgm, fakeNvml } from '../helpers/fake-gpu.js';
import { cgroupOfPid } from '../../src/identity/cgroups.js';

const a100 = 'GPU-5f3c1a2e-8d4b-4c6a-9e1f-0a1b2c3d4e5f';
const t4 = 'GPU-0b9c8d7e-6f5a-4b3c-2d1e-f0e1d2c3b4a5';

const onlyGpu = onlyCollectors('gpu');

const a100Fields = {
  util: 37,
  memutil: 12,
  total: 42949672960,
  free: 40000000000,
  used: 2949672960,
  power: 70500,
  energy: 123456789,
  temp: 61,
  smclock: 1410,
  memclock: 1215,
  pcietx: 1000,
  pcierx: 2000,
  ecc_corrected: 3,
  ecc_uncorrected: 0,
};

async function scrape(agent: AgentProcess) {
  return parseExposition(await agent.metrics());
}

/** A process that lives in the pod until the test ends; its host pid. */
function sleeper(t: Test, pod: Pod): number {
  const child = pod.run('sleep', ['600'], { stdio: 'ignore' });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  return child.pid!;
}

t.test('NVML values reach /metrics exactly, per GPU, and an error marks only its GPU', async (t) => {
  if (!requirePrivileges(t, 'the agent with the GPU collector')) return;
  const fake = await fakeNvml(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const [trainer, server] = [await net.addPod({ layout: 'plain' }), await net.addPod({ layout: 'plain' })];
  const trainerPid = sleeper(t, trainer);
  const serverPid = sleeper(t, server);
  await waitFor(() => cgroupOfPid(trainerPid) === trainer.cgroupPath && cgroupOfPid(serverPid) === server.cgroupPath, { timeoutMs: 5000, what: 'the sleepers to be in their pods' });

  fake.write({
    gpus: [
      { uuid: a100, name: 'NVIDIA-A100-SXM4-40GB', fields: a100Fields },
      { uuid: t4, name: 'Tesla-T4', fields: { util: 5, fail: 15 } },
    ],
    // Two workloads share GPU 0; one of them has two processes there.
    processes: [
      { gpu: 0, pid: trainerPid, bytes: 1073741824, sm: 30, mem: 10 },
      { gpu: 0, pid: serverPid, bytes: 268435456, sm: 7, mem: 2 },
      { gpu: 0, pid: process.pid, bytes: 4096, sm: 1, mem: 0 },
    ],
    xids: [{ gpu: 0, xid: 79, total: 2 }],
  });
  // DCGM knows both GPUs under its own ids; its profiling values join NVML's GPUs by UUID.
  const dcgm = await fakeDcgm(t);
  dcgm.write({
    gpus: [
      { id: 7, uuid: a100, fields: { 1001: 0.9, 1002: 0.75, 1003: 0.5, 1004: 0.3, 1005: 0.4, 1006: 0, 1007: 0.6, 1008: 0.2, 1011: 5e9, 1012: 4e9 } },
      { id: 8, uuid: t4, fields: { 1002: 0.1 } },
    ],
  });
  const agent = await startAgent({
    env: { ...onlyGpu, PROBEPILOT_COLLECTORS_GPU_LIBRARY_PATH: fake.library, PROBEPILOT_COLLECTORS_GPU_DCGM_LIBRARY_PATH: dcgm.library, PROBEPILOT_COLLECTORS_GPU_DCGM_EXPORTER_NAMES: 'true' },
  });
  t.teardown(() => agent.stop());

  const text = await agent.metrics();
  const families = parseExposition(text);
  t.same(checkExposition(text), [], 'the exposition is clean for our checker');
  // dcgm-exporter's own label names (UUID, modelName, Hostname) are camelCase, which promtool's linter flags: lint ours.
  const lint = await promtoolCheckMetrics(text.split('\n').filter((l) => !/^(# (HELP|TYPE) )?DCGM_/.test(l)).join('\n'));
  t.ok(lint.ok, `promtool check metrics (without the DCGM names): ${lint.output}`);
  const gpu0 = { gpu: '0', uuid: a100, model: 'NVIDIA-A100-SXM4-40GB' };
  const gpu1 = { gpu: '1', uuid: t4, model: 'Tesla-T4' };
  const value = (name: string, labels: LabelFilter) => sampleValue(families, name, labels);
  t.equal(value('probepilot_collector_up', { collector: 'gpu' }), 1, 'the GPU collector is up');
  const expected: Array<[string, LabelFilter, number]> = [
    ['probepilot_gpu_up', { ...gpu0, reason: '' }, 1],
    ['probepilot_gpu_info', { ...gpu0, driver_version: '550.54.15' }, 1],
    ['probepilot_gpu_utilization_ratio', gpu0, 0.37],
    ['probepilot_gpu_memory_utilization_ratio', gpu0, 0.12],
    ['probepilot_gpu_memory_total_bytes', gpu0, 42949672960],
    ['probepilot_gpu_memory_free_bytes', gpu0, 40000000000],
    ['probepilot_gpu_memory_used_bytes', gpu0, 2949672960],
    ['probepilot_gpu_power_watts', gpu0, 70.5],
    ['probepilot_gpu_energy_joules_total', gpu0, 123456.789],
    ['probepilot_gpu_temperature_celsius', gpu0, 61],
    ['probepilot_gpu_sm_clock_hertz', gpu0, 1.41e9],
    ['probepilot_gpu_memory_clock_hertz', gpu0, 1.215e9],
    ['probepilot_gpu_pcie_throughput_bytes_per_second', { ...gpu0, direction: 'tx' }, 1000 * 1024],
    ['probepilot_gpu_pcie_throughput_bytes_per_second', { ...gpu0, direction: 'rx' }, 2000 * 1024],
    ['probepilot_gpu_ecc_errors_total', { ...gpu0, type: 'corrected' }, 3],
    ['probepilot_gpu_ecc_errors_total', { ...gpu0, type: 'uncorrected' }, 0],
    ['probepilot_gpu_xid_errors_total', { ...gpu0, xid: '79' }, 2],
    ['probepilot_gpu_process_memory_used_bytes', { ...gpu0, cgroup: trainer.cgroupPath }, 1073741824],
    ['probepilot_gpu_process_memory_used_bytes', { ...gpu0, cgroup: server.cgroupPath }, 268435456],
    ['probepilot_gpu_process_utilization_ratio', { ...gpu0, cgroup: trainer.cgroupPath }, 0.3],
    ['probepilot_gpu_process_utilization_ratio', { ...gpu0, cgroup: server.cgroupPath }, 0.07],
    ['probepilot_gpu_dcgm_up', { reason: '' }, 1],
    ['probepilot_gpu_graphics_engine_active_ratio', gpu0, 0.9],
    ['probepilot_gpu_sm_active_ratio', gpu0, 0.75],
    ['probepilot_gpu_sm_occupancy_ratio', gpu0, 0.5],
    ['probepilot_gpu_dram_active_ratio', gpu0, 0.4],
    ['probepilot_gpu_pipe_active_ratio', { ...gpu0, pipe: 'tensor' }, 0.3],
    ['probepilot_gpu_pipe_active_ratio', { ...gpu0, pipe: 'fp64' }, 0],
    ['probepilot_gpu_pipe_active_ratio', { ...gpu0, pipe: 'fp32' }, 0.6],
    ['probepilot_gpu_pipe_active_ratio', { ...gpu0, pipe: 'fp16' }, 0.2],
    ['probepilot_gpu_nvlink_throughput_bytes_per_second', { ...gpu0, direction: 'tx' }, 5e9],
    ['probepilot_gpu_nvlink_throughput_bytes_per_second', { ...gpu0, direction: 'rx' }, 4e9],
    ['DCGM_FI_PROF_SM_ACTIVE', { gpu: '0', UUID: a100 }, 0.75],
    ['DCGM_FI_PROF_PIPE_TENSOR_ACTIVE', { gpu: '0', UUID: a100 }, 0.3],
    ['DCGM_FI_DEV_GPU_UTIL', { gpu: '0', UUID: a100, device: 'nvidia0', modelName: 'NVIDIA-A100-SXM4-40GB' }, 37],
    ['DCGM_FI_DEV_FB_USED', { gpu: '0', UUID: a100 }, 2949672960 / 1048576],
    ['DCGM_FI_DEV_POWER_USAGE', { gpu: '0', UUID: a100 }, 70.5],
  ];
  for (const [name, labels, want] of expected) t.equal(value(name, labels), want, `${name}${JSON.stringify(labels)} = ${want}`);

  t.equal(value('probepilot_gpu_up', gpu1), 0, 'GPU 1 is down');
  t.match(findSamples(families, 'probepilot_gpu_up', gpu1)[0]?.labels.reason, /NVML_ERROR_GPU_IS_LOST/, 'with NVML\'s error as the reason');
  t.equal(findSamples(families, 'probepilot_gpu_utilization_ratio', gpu1).length, 0, 'and no values of its own');
  t.equal(findSamples(families, 'probepilot_gpu_sm_active_ratio', gpu1).length, 0, 'not even DCGM\'s');
  

  // The next collection reads NVML again: new values, XID events that came meanwhile.
  fake.write({ gpus: [{ uuid: a100, name: 'NVIDIA-A100-SXM4-40GB', fields: { ...a100Fields, util: 80, energy: 123556789 } }], xids: [{ gpu: 0, xid: 79, total: 5 }, { gpu: 0, xid: 48, total: 1 }] });
  const next = await scrape(agent);
  t.equal(sampleValue(next, 'probepilot_gpu_utilization_ratio', gpu0), 0.8, 'utilization follows NVML');
  t.equal(sampleValue(next, 'probepilot_gpu_energy_joules_total', gpu0), 123556.789, 'energy is a counter of NVML\'s total');
  t.equal(sampleValue(next, 'probepilot_gpu_xid_errors_total', { ...gpu0, xid: '79' }), 5, 'XID 79: every event, counted once');
  t.equal(sampleValue(next, 'probepilot_gpu_xid_errors_total', { ...gpu0, xid: '48' }), 1, 'XID 48 appears with its first event');
  t.equal(findSamples(next, 'probepilot_gpu_up').length, 1, 'a GPU that went away is no longer reported');
  t.equal(sumSamples(next, 'probepilot_gpu_process_memory_used_bytes', {}), 0, 'processes that left the GPU leave no series');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});

t.test('without DCGM, or without its profiling module, the NVML metrics stand alone and say why', async (t) => {
  if (!requirePrivileges(t, 'the agent with the GPU collector')) return;
  const fake = await fakeNvml(t);
  fake.write({ gpus: [{ uuid: a100, name: 'NVIDIA-A100-SXM4-40GB', fields: a100Fields }] });
  const dcgm = await fakeDcgm(t);
  dcgm.write({ profiling: -37, gpus: [{ id: 0, uuid: a100, fields: { 1002: 0.75 } }] });
  const cases = [
    { what: 'no DCGM', path: '/nonexistent/libdcgm.so.4', reason: /^DCGM unavailable: \/nonexistent\/libdcgm\.so\.4: cannot open shared object file/ },
    { what: 'DCGM without profiling', path: dcgm.library, reason: /^profiling unsupported: dcgmWatchFields: This request is serviced by a module of DCGM that is not currently loaded \(DCGM -37\)$/ },
    { what: 'DCGM disabled', path: '', reason: /^disabled in config/ },
  ];
  for (const { what, path: library, reason } of cases) {
    const agent = await startAgent({ env: { ...onlyGpu, PROBEPILOT_COLLECTORS_GPU_LIBRARY_PATH: fake.library, PROBEPILOT_COLLECTORS_GPU_DCGM_LIBRARY_PATH: library } });
    const families = await scrape(agent);
    const up = findSamples(families, 'probepilot_gpu_dcgm_up');
    t.equal(up.length, 1, `${what}: one probepilot_gpu_dcgm_up`);
    t.equal(up[0]?.value, 0, `${what}: DCGM fields are not collected`);
    t.match(up[0]?.labels.reason, reason, `${what}: the reason says why (${up[0]?.labels.reason})`);
    t.equal(findSamples(families, 'probepilot_gpu_sm_active_ratio').length, 0, `${what}: no profiling series`);
    t.equal(sampleValue(families, 'probepilot_gpu_utilization_ratio', { uuid: a100 }), 0.37, `${what}: NVML's values as always`);
    t.equal(sampleValue(families, 'probepilot_collector_up', { collector: 'gpu' }), 1, `${what}: the collector is up`);
    t.equal(await agent.stop(), 0, `${what}: agent exits cleanly`);
  }
});

t.test('no NVML, or NVML that cannot start, disables only the GPU collector', async (t) => {
  if (!requirePrivileges(t, 'the agent with the GPU collector')) return;
  const fake = await fakeNvml(t);
  fake.write({ init: 9, gpus: [] });
  const cases = [
    { what: 'a missing library', path: '/nonexistent/libnvidia-ml.so.1', reason: /^no NVIDIA driver: \/nonexistent\/libnvidia-ml\.so\.1 cannot be loaded/ },
    { what: 'nvmlInit_v2 failing', path: fake.library, reason: /^NVML: nvmlInit_v2: Driver Not Loaded \(NVML_ERROR_DRIVER_NOT_LOADED\)/ },
  ];
  for (const { what, path: library, reason } of cases) {
    const agent = await startAgent({ env: { ...onlyCollectors('gpu', 'process'), PROBEPILOT_COLLECTORS_GPU_LIBRARY_PATH: library } });
    const families = await scrape(agent);
    const gpu = findSamples(families, 'probepilot_collector_up', { collector: 'gpu' })[0];
    t.equal(gpu?.value, 0, `${what}: the GPU collector is down`);
    t.match(gpu?.labels.reason, reason, `${what}: the reason says why (${gpu?.labels.reason})`);
    t.equal(sampleValue(families, 'probepilot_collector_up', { collector: 'process' }), 1, `${what}: the other collectors run`);
    t.ok(agent.logs.some((l) => l.msg === 'collector unavailable; the others keep running' && l.collector === 'gpu'), `${what}: logged`);
    t.equal(await agent.stop(), 0, `${what}: agent exits cleanly`);
  }
});

t.test('Kubernetes mode: GPUs name the pods the kubelet gave them to, and shared GPUs split per pod', async (t) => {
  if (!requirePrivileges(t, 'the agent with the GPU collector in Kubernetes mode')) return;
  const fake = await fakeNvml(t);
  const { api, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const [trainer, inference] = [await net.addPod(), await net.addPod()];
  api.upsertPod(podObject(trainer, { namespace: 'ml', name: 'trainer-0', owner: { kind: 'StatefulSet', name: 'trainer' } }));
  api.upsertPod(podObject(inference, { namespace: 'serving', name: 'llm-0', owner: { kind: 'StatefulSet', name: 'llm' } }));
  const trainerPid = sleeper(t, trainer);
  const inferencePid = sleeper(t, inference);

  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-podres-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubelet = new PodResourcesServer(path.join(dir, 'kubelet.sock'));
  // GPU 0 time-sliced between both pods (replica ids UUID::N); GPU 1 whole to the trainer.
  kubelet.pods = [
    { namespace: 'ml', name: 'trainer-0', containers: [{ name: 'app', devices: [{ resourceName: 'nvidia.com/gpu', deviceIds: [`${a100}::0`, t4] }] }] },
    { namespace: 'serving', name: 'llm-0', containers: [{ name: 'app', devices: [{ resourceName: 'nvidia.com/gpu', deviceIds: [`${a100}::1`] }] }] },
  ];
  await kubelet.start();
  t.teardown(() => kubelet.stop());
  fake.write({
    gpus: [
      { uuid: a100, name: 'NVIDIA-A100-SXM4-40GB', fields: a100Fields },
      { uuid: t4, name: 'Tesla-T4', fields: { util: 90 } },
    ],
    processes: [
      { gpu: 0, pid: trainerPid, bytes: 3 * 2 ** 30, sm: 45, mem: 20 },
      { gpu: 0, pid: inferencePid, bytes: 5 * 2 ** 30, sm: 25, mem: 30 },
    ],
  });

  const agent = await startAgent({
    env: {
      ...onlyGpu,
      PROBEPILOT_COLLECTORS_GPU_LIBRARY_PATH: fake.library,
      PROBEPILOT_COLLECTORS_GPU_POD_RESOURCES_SOCKET: kubelet.socketPath,
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: 'test-node',
    },
  });
  t.teardown(() => agent.stop());
  const gpu0 = { gpu: '0', uuid: a100 };
  const trainerLabels = { namespace: 'ml', pod: 'trainer-0', container: 'app', workload: 'trainer', workload_kind: 'StatefulSet' };
  const llmLabels = { namespace: 'serving', pod: 'llm-0', container: 'app', workload: 'llm', workload_kind: 'StatefulSet' };
  const families = await waitFor(async () => {
    const f = await scrape(agent);
    return sumSamples(f, 'probepilot_gpu_process_memory_used_bytes', { ...gpu0, pod: 'llm-0' }) > 0 ? f : undefined;
  }, { timeoutMs: 15_000, what: 'the pods\' identities on their GPU processes' });

  const allocations = findSamples(families, 'probepilot_gpu_allocation_info').map((s) => `${s.labels.gpu} ${s.labels.namespace}/${s.labels.pod}/${s.labels.container} ${s.labels.resource}`).sort();
  t.same(allocations, ['0 ml/trainer-0/app nvidia.com/gpu', '0 serving/llm-0/app nvidia.com/gpu', '1 ml/trainer-0/app nvidia.com/gpu'], 'each GPU names the containers holding it (both replicas of the time-sliced one)');
  t.equal(sampleValue(families, 'probepilot_gpu_process_memory_used_bytes', { ...gpu0, ...trainerLabels }), 3 * 2 ** 30, 'the trainer\'s share of GPU 0 memory');
  t.equal(sampleValue(families, 'probepilot_gpu_process_memory_used_bytes', { ...gpu0, ...llmLabels }), 5 * 2 ** 30, 'the LLM server\'s share of GPU 0 memory');
  t.equal(sampleValue(families, 'probepilot_gpu_process_utilization_ratio', { ...gpu0, ...trainerLabels }), 0.45, 'the trainer\'s share of GPU 0 time');
  t.equal(sampleValue(families, 'probepilot_gpu_process_utilization_ratio', { ...gpu0, ...llmLabels }), 0.25, 'the LLM server\'s share of GPU 0 time');

  // The kubelet restarts: its socket goes away, the last allocations stay; it comes back with GPU 1 given to the LLM server.
  kubelet.stop();
  const during = await scrape(agent);
  t.equal(findSamples(during, 'probepilot_gpu_allocation_info').length, 3, 'while the kubelet is away the last known allocations stay');
  t.equal(sampleValue(during, 'probepilot_collector_up', { collector: 'gpu' }), 1, 'and the collector stays up');
  kubelet.pods = [
    { namespace: 'ml', name: 'trainer-0', containers: [{ name: 'app', devices: [{ resourceName: 'nvidia.com/gpu', deviceIds: [`${a100}::0`] }] }] },
    { namespace: 'serving', name: 'llm-0', containers: [{ name: 'app', devices: [{ resourceName: 'nvidia.com/gpu', deviceIds: [`${a100}::1`, t4] }] }] },
  ];
  await kubelet.start();
  const after = await waitFor(async () => {
    const f = await scrape(agent);
    return sampleValue(f, 'probepilot_gpu_allocation_info', { gpu: '1', pod: 'llm-0' }) === 1 ? f : undefined;
  }, { timeoutMs: 20_000, what: 'the agent to reconnect to the restarted kubelet' });
  t.equal(sumSamples(after, 'probepilot_gpu_allocation_info', { gpu: '1', pod: 'trainer-0' }), 0, 'after the restart GPU 1 belongs to the LLM server only');
  t.ok(agent.logs.some((l) => l.msg.startsWith('kubelet pod-resources API unreachable')), 'the outage was logged');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
});
