// GPU collector: NVIDIA GPUs through NVML (dlopen'ed by the native addon,
// sampled on a worker thread at each collection) and, where DCGM is
// installed, its profiling fields (SM activity, pipes, NVLink); the pod each GPU is
// allocated to (kubelet pod-resources API, Kubernetes mode) and each
// workload's share of a GPU from NVML's per-process memory and utilization
// (PID → cgroup → workload), which is what tells pods apart on a shared or
// time-sliced GPU.
import os from 'node:os';
import type { DcgmGpu, DcgmSession, NvmlDevice, NvmlError, NvmlSession, NvmlSnapshot } from '../bpf/addon.js';
import { describeError } from '../errors.js';
import { cgroupOfPid } from '../identity/cgroups.js';
import type { Identity } from '../identity/identity.js';
import { PodResourcesClient, type DeviceAllocation } from '../identity/pod-resources.js';
import { sanitizeLabelValue, type FamilyDescriptor, type Labels, type MetricFamily, type ScalarSample } from '../metrics/model.js';
import { CollectorUnavailableError, type Collector, type CollectorContext, type CollectorHealth } from './collector.js';

const deviceLabels = ['gpu', 'uuid', 'model'] as const;

function gauge(name: string, help: string, extra: readonly string[] = []): FamilyDescriptor {
  return { name, help, type: 'gauge', labelNames: [...deviceLabels, ...extra] };
}
function counter(name: string, help: string, extra: readonly string[] = []): FamilyDescriptor {
  return { name, help, type: 'counter', labelNames: [...deviceLabels, ...extra] };
}

/** Per-GPU families and how each reads an NVML value (in NVML's unit) into base units. */
const deviceFamilies = {
  utilization: { ...gauge('probepilot_gpu_utilization_ratio', 'Share of the last sample period in which a kernel ran on the GPU (NVML utilization.gpu / 100).'), key: 'utilization_gpu', scale: 0.01 },
  memoryUtilization: {
    ...gauge('probepilot_gpu_memory_utilization_ratio', 'Share of the last sample period in which device memory was read or written (NVML utilization.memory / 100).'),
    key: 'utilization_memory',
    scale: 0.01,
  },
  memoryUsed: { ...gauge('probepilot_gpu_memory_used_bytes', 'Device (framebuffer) memory in use.'), key: 'memory_used', scale: 1 },
  memoryFree: { ...gauge('probepilot_gpu_memory_free_bytes', 'Device (framebuffer) memory free.'), key: 'memory_free', scale: 1 },
  memoryTotal: { ...gauge('probepilot_gpu_memory_total_bytes', 'Device (framebuffer) memory installed.'), key: 'memory_total', scale: 1 },
  power: { ...gauge('probepilot_gpu_power_watts', 'Power draw of the GPU board.'), key: 'power_milliwatts', scale: 1e-3 },
  energy: { ...counter('probepilot_gpu_energy_joules_total', 'Energy the GPU consumed since the driver loaded (Volta and newer).'), key: 'energy_millijoules', scale: 1e-3 },
  temperature: { ...gauge('probepilot_gpu_temperature_celsius', 'GPU core temperature.'), key: 'temperature_celsius', scale: 1 },
  smClock: { ...gauge('probepilot_gpu_sm_clock_hertz', 'Current SM clock.'), key: 'sm_clock_mhz', scale: 1e6 },
  memoryClock: { ...gauge('probepilot_gpu_memory_clock_hertz', 'Current memory clock.'), key: 'memory_clock_mhz', scale: 1e6 },
} as const;

/** DCGM profiling fields (DCGM_FI_PROF_*) as our families: field id → family and extra labels. */
const profilingFamilies = {
  graphicsActive: gauge('probepilot_gpu_graphics_engine_active_ratio', 'Share of time the graphics or compute engine was busy (DCGM profiling, DCGM_FI_PROF_GR_ENGINE_ACTIVE).'),
  smActive: gauge('probepilot_gpu_sm_active_ratio', 'Share of time at least one warp was resident on an SM, averaged over SMs (DCGM_FI_PROF_SM_ACTIVE): how much of the GPU a workload really uses.'),
  smOccupancy: gauge('probepilot_gpu_sm_occupancy_ratio', 'Resident warps over the maximum an SM holds, averaged over SMs (DCGM_FI_PROF_SM_OCCUPANCY).'),
  dramActive: gauge('probepilot_gpu_dram_active_ratio', 'Share of cycles device memory was sending or receiving data (DCGM_FI_PROF_DRAM_ACTIVE).'),
  pipeActive: gauge('probepilot_gpu_pipe_active_ratio', 'Share of cycles a pipe was active, by pipe: tensor, fp64, fp32, fp16 (DCGM_FI_PROF_PIPE_*_ACTIVE).', ['pipe']),
  nvlink: gauge('probepilot_gpu_nvlink_throughput_bytes_per_second', 'NVLink throughput by direction (tx, rx), DCGM_FI_PROF_NVLINK_*_BYTES.', ['direction']),
} as const;
const profilingFields: ReadonlyArray<{ field: number; family: FamilyDescriptor; labels?: Labels }> = [
  { field: 1001, family: profilingFamilies.graphicsActive },
  { field: 1002, family: profilingFamilies.smActive },
  { field: 1003, family: profilingFamilies.smOccupancy },
  { field: 1005, family: profilingFamilies.dramActive },
  { field: 1004, family: profilingFamilies.pipeActive, labels: { pipe: 'tensor' } },
  { field: 1006, family: profilingFamilies.pipeActive, labels: { pipe: 'fp64' } },
  { field: 1007, family: profilingFamilies.pipeActive, labels: { pipe: 'fp32' } },
  { field: 1008, family: profilingFamilies.pipeActive, labels: { pipe: 'fp16' } },
  { field: 1011, family: profilingFamilies.nvlink, labels: { direction: 'tx' } },
  { field: 1012, family: profilingFamilies.nvlink, labels: { direction: 'rx' } },
];

const families = {
  dcgmUp: {
    name: 'probepilot_gpu_dcgm_up',
    help: 'Whether DCGM\'s profiling fields are collected (1) or not (0, reason: DCGM not installed, or profiling unsupported on these GPUs).',
    type: 'gauge',
    labelNames: ['reason'],
  } as FamilyDescriptor,
  up: gauge('probepilot_gpu_up', 'Whether NVML answered for this GPU at the last collection (1) or not (0, reason = the NVML error).', ['reason']),
  info: { name: 'probepilot_gpu_info', help: 'One series per GPU with its driver version (value 1).', type: 'gauge', labelNames: [...deviceLabels, 'driver_version'] } as FamilyDescriptor,
  pcie: gauge('probepilot_gpu_pcie_throughput_bytes_per_second', 'PCIe throughput NVML measured over its last 20 ms window, by direction (tx: GPU to host, rx: host to GPU).', ['direction']),
  ecc: counter('probepilot_gpu_ecc_errors_total', 'ECC errors since the driver loaded (volatile counts), by type (corrected: single-bit, uncorrected: double-bit).', ['type']),
  xid: counter('probepilot_gpu_xid_errors_total', 'XID events (critical driver errors) seen since the agent started, by XID code.', ['xid']),
  allocation: {
    name: 'probepilot_gpu_allocation_info',
    help: 'Which container the kubelet allocated a GPU to (value 1), from the pod-resources API; a time-sliced GPU has one series per container.',
    type: 'gauge',
    labelNames: [...deviceLabels, 'namespace', 'pod', 'container', 'resource'],
  } as FamilyDescriptor,
} as const;

/** dcgm-exporter's names for the same values, for dashboards built on them (units as DCGM reports them). */
const dcgmFamilies = [
  { name: 'DCGM_FI_DEV_GPU_UTIL', help: 'GPU utilization (in %), as dcgm-exporter names it.', key: 'utilization_gpu', scale: 1 },
  { name: 'DCGM_FI_DEV_MEM_COPY_UTIL', help: 'Memory utilization (in %), as dcgm-exporter names it.', key: 'utilization_memory', scale: 1 },
  { name: 'DCGM_FI_DEV_FB_USED', help: 'Framebuffer memory used (in MiB), as dcgm-exporter names it.', key: 'memory_used', scale: 1 / 1048576 },
  { name: 'DCGM_FI_DEV_FB_FREE', help: 'Framebuffer memory free (in MiB), as dcgm-exporter names it.', key: 'memory_free', scale: 1 / 1048576 },
  { name: 'DCGM_FI_DEV_POWER_USAGE', help: 'Power draw (in W), as dcgm-exporter names it.', key: 'power_milliwatts', scale: 1e-3 },
  { name: 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION', help: 'Total energy consumption since boot (in mJ), as dcgm-exporter names it.', key: 'energy_millijoules', scale: 1 },
  { name: 'DCGM_FI_DEV_GPU_TEMP', help: 'GPU temperature (in C), as dcgm-exporter names it.', key: 'temperature_celsius', scale: 1 },
  { name: 'DCGM_FI_DEV_SM_CLOCK', help: 'SM clock frequency (in MHz), as dcgm-exporter names it.', key: 'sm_clock_mhz', scale: 1 },
  { name: 'DCGM_FI_DEV_MEM_CLOCK', help: 'Memory clock frequency (in MHz), as dcgm-exporter names it.', key: 'memory_clock_mhz', scale: 1 },
  { name: 'DCGM_FI_DEV_ECC_SBE_VOL_TOTAL', help: 'Single-bit volatile ECC errors, as dcgm-exporter names it.', key: 'ecc_corrected', scale: 1 },
  { name: 'DCGM_FI_DEV_ECC_DBE_VOL_TOTAL', help: 'Double-bit volatile ECC errors, as dcgm-exporter names it.', key: 'ecc_uncorrected', scale: 1 },
  { name: 'DCGM_FI_PROF_GR_ENGINE_ACTIVE', help: 'Ratio of time the graphics engine is active, as dcgm-exporter names it.', field: 1001 },
  { name: 'DCGM_FI_PROF_SM_ACTIVE', help: 'The ratio of cycles an SM has at least 1 warp assigned, as dcgm-exporter names it.', field: 1002 },
  { name: 'DCGM_FI_PROF_SM_OCCUPANCY', help: 'The ratio of number of warps resident on an SM, as dcgm-exporter names it.', field: 1003 },
  { name: 'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE', help: 'Ratio of cycles the tensor (HMMA) pipe is active, as dcgm-exporter names it.', field: 1004 },
  { name: 'DCGM_FI_PROF_DRAM_ACTIVE', help: 'Ratio of cycles the device memory interface is active, as dcgm-exporter names it.', field: 1005 },
] as const;
const dcgmLabels = ['gpu', 'UUID', 'device', 'modelName', 'Hostname', 'namespace', 'pod', 'container'] as const;

/** The GPU a pod-resources device id names: "GPU-…" or a time-sliced replica "GPU-…::N". */
export function gpuUuidOfDeviceId(deviceId: string): string {
  const replica = deviceId.indexOf('::');
  return replica >= 0 ? deviceId.slice(0, replica) : deviceId;
}

/** What DCGM added at this collection: its GPUs' profiling values, or why there are none. */
export interface DcgmSample {
  gpus: readonly DcgmGpu[];
  /** "" when profiling fields are collected. */
  unavailable: string;
}

export interface GpuFamilyOptions {
  identity: Pick<Identity, 'labelNames' | 'labelsFor'>;
  /** The cgroup v2 path of a process, undefined when it is gone. */
  cgroupOfPid: (pid: number) => string | undefined;
  dcgmExporterNames: boolean;
  hostname: string;
}

export function gpuFamilyDescriptors(identityLabels: readonly string[], dcgmExporterNames: boolean): FamilyDescriptor[] {
  return [
    families.dcgmUp,
    families.up,
    families.info,
    ...Object.values(deviceFamilies).map(({ name, help, type, labelNames }) => ({ name, help, type, labelNames })),
    families.pcie,
    families.ecc,
    families.xid,
    families.allocation,
    ...Object.values(profilingFamilies),
    processMemoryFamily(identityLabels),
    processUtilizationFamily(identityLabels),
    ...(dcgmExporterNames ? dcgmFamilies.map(({ name, help }): FamilyDescriptor => ({ name, help, type: 'gauge', labelNames: dcgmLabels })) : []),
  ];
}

const processMemoryName = 'probepilot_gpu_process_memory_used_bytes';
const processUtilizationName = 'probepilot_gpu_process_utilization_ratio';

function processMemoryFamily(identityLabels: readonly string[]): FamilyDescriptor {
  return {
    name: processMemoryName,
    help: 'Device memory the processes of a workload use on a GPU (NVML running compute processes, attributed by process cgroup).',
    type: 'gauge',
    labelNames: [...deviceLabels, ...identityLabels],
  };
}

function processUtilizationFamily(identityLabels: readonly string[]): FamilyDescriptor {
  return {
    name: processUtilizationName,
    help: 'Share of a GPU\'s time the processes of a workload kept its SMs busy since the previous collection (NVML process utilization, summed per workload).',
    type: 'gauge',
    labelNames: [...deviceLabels, ...identityLabels],
  };
}

function deviceLabelsOf(device: NvmlDevice): Labels {
  return { gpu: String(device.index), uuid: sanitizeLabelValue(device.uuid), model: sanitizeLabelValue(device.name) };
}

/** Sums per (GPU, workload): pids are not labels (unbounded); their workload is. */
function perWorkload(
  device: NvmlDevice,
  entries: ReadonlyArray<{ pid: number; value: number }>,
  options: GpuFamilyOptions,
): ScalarSample[] {
  const sums = new Map<string, ScalarSample>();
  for (const { pid, value } of entries) {
    const cgroup = options.cgroupOfPid(pid);
    if (cgroup === undefined) continue;
    const labels = { ...deviceLabelsOf(device), ...options.identity.labelsFor(cgroup, 'container') };
    const key = JSON.stringify(labels);
    const sample = sums.get(key);
    if (sample) sample.value += value;
    else sums.set(key, { labels, value });
  }
  return [...sums.values()];
}

/** One collection's families from an NVML snapshot and the kubelet's allocations. */
export function gpuFamilies(snapshot: NvmlSnapshot, dcgm: DcgmSample, allocations: readonly DeviceAllocation[], options: GpuFamilyOptions): MetricFamily[] {
  const descriptors = gpuFamilyDescriptors(options.identity.labelNames('container'), options.dcgmExporterNames);
  const out = new Map<string, ScalarSample[]>(descriptors.map((d) => [d.name, []]));
  const push = (name: string, labels: Labels, value: number) => out.get(name)!.push({ labels, value });
  push(families.dcgmUp.name, { reason: sanitizeLabelValue(dcgm.unavailable) }, dcgm.unavailable ? 0 : 1);
  const profiling = new Map(dcgm.gpus.map((g) => [g.uuid, g.values]));
  for (const device of snapshot.devices) {
    const labels = deviceLabelsOf(device);
    push(families.up.name, { ...labels, reason: device.error ? sanitizeLabelValue(device.error.message) : '' }, device.error ? 0 : 1);
    push(families.info.name, { ...labels, driver_version: sanitizeLabelValue(snapshot.driverVersion) }, 1);
    const allocated = allocations.filter((a) => gpuUuidOfDeviceId(a.deviceId) === device.uuid);
    for (const a of allocated) push(families.allocation.name, { ...labels, namespace: a.namespace, pod: a.pod, container: a.container, resource: a.resourceName }, 1);
    // A GPU whose NVML calls fail exports only up 0 and its identity: partial values would look current.
    if (device.error) continue;
    const value = (key: string): number | undefined => device.values[key];
    for (const family of Object.values(deviceFamilies)) {
      const v = value(family.key);
      if (v !== undefined) push(family.name, labels, v * family.scale);
    }
    for (const [direction, key] of [['tx', 'pcie_tx_kilobytes_per_second'], ['rx', 'pcie_rx_kilobytes_per_second']] as const) {
      const v = value(key);
      if (v !== undefined) push(families.pcie.name, { ...labels, direction }, v * 1024);
    }
    for (const [type, key] of [['corrected', 'ecc_corrected'], ['uncorrected', 'ecc_uncorrected']] as const) {
      const v = value(key);
      if (v !== undefined) push(families.ecc.name, { ...labels, type }, v);
    }
    for (const [xid, count] of Object.entries(device.xids)) push(families.xid.name, { ...labels, xid }, count);
    const profiled = profiling.get(device.uuid) ?? {};
    for (const { field, family, labels: extra } of profilingFields) {
      const v = profiled[field];
      if (v !== undefined) push(family.name, { ...labels, ...extra }, v);
    }
    for (const s of perWorkload(device, device.processes.map((p) => ({ pid: p.pid, value: p.memoryBytes })), options)) push(processMemoryName, s.labels, s.value);
    for (const s of perWorkload(device, device.processUtilization.map((p) => ({ pid: p.pid, value: p.smPercent / 100 })), options)) push(processUtilizationName, s.labels, s.value);
    if (options.dcgmExporterNames) {
      // dcgm-exporter names the pod only when one container holds the GPU.
      const holder = allocated.length === 1 ? allocated[0]! : undefined;
      const dcgmLabelValues = {
        gpu: labels.gpu!,
        UUID: labels.uuid!,
        device: `nvidia${device.index}`,
        modelName: labels.model!,
        Hostname: options.hostname,
        namespace: holder?.namespace ?? '',
        pod: holder?.pod ?? '',
        container: holder?.container ?? '',
      };
      for (const family of dcgmFamilies) {
        const v = 'field' in family ? profiled[family.field] : scaled(value(family.key), family.scale);
        if (v !== undefined) push(family.name, dcgmLabelValues, v);
      }
    }
  }
  return descriptors.map((d) => ({ ...d, type: d.type as 'gauge' | 'counter', samples: out.get(d.name)! }));
}

function scaled(value: number | undefined, scale: number): number | undefined {
  return value === undefined ? undefined : value * scale;
}

function unavailableReason(err: unknown, libraryPath: string): string {
  const nvml = err as Partial<NvmlError>;
  if (nvml.code === 'NVML_ERROR_LIBRARY_NOT_FOUND') return `no NVIDIA driver: ${libraryPath} cannot be loaded (${describeError(err)})`;
  return `NVML: ${describeError(err)}`;
}

export class GpuCollector implements Collector {
  readonly name = 'gpu';
  readonly families: readonly FamilyDescriptor[];
  private session: NvmlSession | undefined;
  private dcgm: DcgmSession | undefined;
  /** Why DCGM's fields are not collected; "" when they are. */
  private dcgmUnavailable = '';
  private podResources: PodResourcesClient | undefined;

  constructor(private readonly ctx: CollectorContext) {
    this.families = gpuFamilyDescriptors(ctx.identity.labelNames('container'), ctx.config.collectors.gpu.dcgmExporterNames);
  }

  async start(): Promise<void> {
    const { libraryPath, podResourcesSocket } = this.ctx.config.collectors.gpu;
    try {
      this.session = await this.ctx.addon.openNvml(libraryPath);
    } catch (err) {
      throw new CollectorUnavailableError(unavailableReason(err, libraryPath));
    }
    await this.openDcgm();
    if (this.ctx.identity.mode === 'kubernetes') this.podResources = new PodResourcesClient(podResourcesSocket, this.ctx.log);
    const snapshot = await this.session.sample();
    this.ctx.log.info({ driverVersion: snapshot.driverVersion, gpus: snapshot.devices.map((d) => ({ index: d.index, uuid: d.uuid, model: d.name })) }, 'NVML loaded');
  }

  /** DCGM is optional: without it (or without profiling support) the NVML metrics stand alone. */
  private async openDcgm(): Promise<void> {
    const path = this.ctx.config.collectors.gpu.dcgmLibraryPath;
    if (path === '') {
      this.dcgmUnavailable = 'disabled in config (collectors.gpu.dcgmLibraryPath is empty)';
      return;
    }
    try {
      this.dcgm = await this.ctx.addon.openDcgm(path);
      this.dcgmUnavailable = this.dcgm.profilingError && `profiling unsupported: ${this.dcgm.profilingError}`;
    } catch (err) {
      this.dcgmUnavailable = `DCGM unavailable: ${describeError(err)}`;
    }
    if (this.dcgmUnavailable) this.ctx.log.info({ reason: this.dcgmUnavailable }, 'DCGM profiling fields not collected; NVML metrics only');
    else this.ctx.log.info({ library: path }, 'DCGM profiling fields collected');
  }

  private async sampleDcgm(): Promise<DcgmSample> {
    if (!this.dcgm || this.dcgmUnavailable) return { gpus: [], unavailable: this.dcgmUnavailable };
    try {
      return { gpus: await this.dcgm.sample(), unavailable: '' };
    } catch (err) {
      return { gpus: [], unavailable: `DCGM sample failed: ${describeError(err)}` };
    }
  }

  async collect(): Promise<MetricFamily[]> {
    if (!this.session) return [];
    const [snapshot, dcgm, allocations] = await Promise.all([this.session.sample(), this.sampleDcgm(), this.podResources?.list() ?? Promise.resolve([])]);
    return gpuFamilies(snapshot, dcgm, allocations, {
      identity: this.ctx.identity,
      cgroupOfPid: (pid) => cgroupOfPid(pid),
      dcgmExporterNames: this.ctx.config.collectors.gpu.dcgmExporterNames,
      hostname: os.hostname(),
    });
  }

  health(): CollectorHealth {
    return { eventsDropped: {} };
  }

  programs(): [] {
    return [];
  }

  async stop(): Promise<void> {
    this.session?.close();
    this.session = undefined;
    this.dcgm?.close();
    this.dcgm = undefined;
    this.podResources?.close();
    this.podResources = undefined;
  }
}
