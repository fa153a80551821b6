// GPU collector: NVIDIA GPUs through NVML (dlopen'ed by the native addon,
// sampled on a worker thread at each collection), the pod each GPU is
// allocated to (kubelet pod-resources API, Kubernetes mode) and each
// workload's share of a GPU from NVML's per-process memory and utilization
// (PID → cgroup → workload), which is what tells pods apart on a shared or
// time-sliced GPU.
import os from 'node:os';
import type { NvmlDevice, NvmlError, NvmlSession, NvmlSnapshot } from '../bpf/addon.js';
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

const families = {
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
] as const;
const dcgmLabels = ['gpu', 'UUID', 'device', 'modelName', 'Hostname', 'namespace', 'pod', 'container'] as const;

/** The GPU a pod-resources device id names: "GPU-…" or a time-sliced replica "GPU-…::N". */
export function gpuUuidOfDeviceId(deviceId: string): string {
  const replica = deviceId.indexOf('::');
  return replica >= 0 ? deviceId.slice(0, replica) : deviceId;
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
    families.up,
    families.info,
    ...Object.values(deviceFamilies).map(({ name, help, type, labelNames }) => ({ name, help, type, labelNames })),
    families.pcie,
    families.ecc,
    families.xid,
    families.allocation,
    processMemoryFamily(identityLabels),
    processUtilizationFamily(identityLabels),
    ...(dcgmExporterNames ? dcgmFamilies.map(({ name, help }): FamilyDescriptor => ({ name, help, type: 'gauge', labelNames: dcgmLabels })) : []),
  ];
}

function processMemoryFamily(identityLabels: readonly string[]): FamilyDescriptor {
  return {
    name: 'probepilot_gpu_process_memory_used_bytes',
    help: 'Device memory the processes of a workload use on a GPU (NVML running compute processes, attributed by process cgroup).',
    type: 'gauge',
    labelNames: [...deviceLabels, ...identityLabels],
  };
}

function processUtilizationFamily(identityLabels: readonly string[]): FamilyDescriptor {
  return {
    name: 'probepilot_gpu_process_utilization_ratio',
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
export function gpuFamilies(snapshot: NvmlSnapshot, allocations: readonly DeviceAllocation[], options: GpuFamilyOptions): MetricFamily[] {
  const out = new Map<string, ScalarSample[]>(gpuFamilyDescriptors(options.identity.labelNames('container'), options.dcgmExporterNames).map((d) => [d.name, []]));
  const push = (name: string, labels: Labels, value: number) => out.get(name)!.push({ labels, value });
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
    const identityLabels = options.identity.labelNames('container');
    for (const s of perWorkload(device, device.processes.map((p) => ({ pid: p.pid, value: p.memoryBytes })), options)) push(processMemoryFamily(identityLabels).name, s.labels, s.value);
    for (const s of perWorkload(device, device.processUtilization.map((p) => ({ pid: p.pid, value: p.smPercent / 100 })), options)) push(processUtilizationFamily(identityLabels).name, s.labels, s.value);
    if (options.dcgmExporterNames) {
      // dcgm-exporter names the pod only when one container holds the GPU.
      const holder = allocated.length === 1 ? allocated[0]! : undefined;
      const dcgm = {
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
        const v = value(family.key);
        if (v !== undefined) push(family.name, dcgm, v * family.scale);
      }
    }
  }
  return gpuFamilyDescriptors(options.identity.labelNames('container'), options.dcgmExporterNames).map((d) => ({ ...d, type: d.type as 'gauge' | 'counter', samples: out.get(d.name)! }));
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
    if (this.ctx.identity.mode === 'kubernetes') this.podResources = new PodResourcesClient(podResourcesSocket, this.ctx.log);
    const snapshot = await this.session.sample();
    this.ctx.log.info({ driverVersion: snapshot.driverVersion, gpus: snapshot.devices.map((d) => ({ index: d.index, uuid: d.uuid, model: d.name })) }, 'NVML loaded');
  }

  async collect(): Promise<MetricFamily[]> {
    if (!this.session) return [];
    const [snapshot, allocations] = await Promise.all([this.session.sample(), this.podResources?.list() ?? Promise.resolve([])]);
    return gpuFamilies(snapshot, allocations, {
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
    this.podResources?.close();
    this.podResources = undefined;
  }
}
