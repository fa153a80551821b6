// Typed face of the native addon (native/). The addon is generic: it knows
// BPF objects, programs, maps, links, netlink and NVML, never a collector.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export type TcDirection = 'ingress' | 'egress';
export type TcAttachMode = 'tcx' | 'clsact';

export interface MapInfo {
  name: string;
  /** BPF_MAP_TYPE_* number. */
  type: number;
  keySize: number;
  /** Value size as declared; per-CPU maps hold `valueStride * possibleCpus` bytes per key. */
  valueSize: number;
  maxEntries: number;
  perCpu: boolean;
  /** Bytes between consecutive CPUs' values in a per-CPU dump (valueSize rounded up to 8). */
  valueStride: number;
  /** BPF_F_* map flags. */
  flags: number;
  /** A map libbpf makes for the object's globals (.rodata, .bss, …), never pinned. */
  internal: boolean;
  /** Kernel map id (0 before load). */
  id: number;
}

/** A map pinned in bpffs, as the kernel describes it. */
export interface PinnedMapInfo {
  id: number;
  name: string;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/** A program loaded in the kernel, by id. */
export interface KernelProgram {
  id: number;
  name: string;
  /** Hash of its instructions (map references left out), hex. */
  tag: string;
  mapIds: number[];
}

/** A BPF classifier on a clsact hook. */
export interface TcFilter {
  handle: number;
  priority: number;
  programId: number;
  programName: string;
}

/**
 * What adopting a pinned link or a clsact filter left by an earlier run did:
 * kept it (it runs a program identical to ours), updated it in place to our
 * program (atomic), or — stale — removed it (the caller attaches afresh).
 */
export type Adoption =
  | { outcome: 'absent' }
  | { outcome: 'kept'; id: number }
  | { outcome: 'updated'; id: number; reason: string }
  | { outcome: 'stale'; reason: string };

export interface ProgramInfo {
  name: string;
  section: string;
  /** Kernel program id (0 before load). */
  id: number;
  /** Counted only while BPF run-time statistics are enabled. */
  runCount: number;
  runTimeNs: number;
}

export interface MapDump {
  count: number;
  keySize: number;
  /** Bytes per entry in `values`: valueSize, or valueStride * possibleCpus for per-CPU maps. */
  valueSize: number;
  keys: Buffer;
  values: Buffer;
}

export interface TcAttachment {
  /** Handle for detach()/pinAttachment(). */
  id: number;
  mode: TcAttachMode;
  /** clsact: this attach created the interface's clsact qdisc. */
  createdQdisc: boolean;
}

export interface LinkInfo {
  ifindex: number;
  name: string;
  /** IFLA_LINK: the peer's ifindex (in the peer's namespace) for veth, else the same as ifindex or 0. */
  iflink: number;
  /** IFLA_LINK_NETNSID: namespace id of the peer, -1 when the peer is in our own namespace or none. */
  linkNetnsId: number;
  /** IFLA_INFO_KIND ("veth", "bridge", "vxlan", …), "" when none. */
  kind: string;
  /** ARPHRD_* hardware type (1 = Ethernet, 772 = loopback, 65534 = none). */
  hwType: number;
  /** IFF_* flags. */
  flags: number;
  /** ifindex of the master device (bridge) or 0. */
  master: number;
}

export interface BpfObject {
  /** Sets a `const volatile` global in .rodata by name; before load(). The buffer must match the variable's size. */
  setConst(name: string, value: Buffer): void;
  /** Before load(). */
  setMapMaxEntries(map: string, maxEntries: number): void;
  /** Before load(): reuse the map pinned at path when compatible, pin it there otherwise (libbpf pin_path). */
  setMapPinPath(map: string, pinPath: string): void;
  load(): void;
  maps(): MapInfo[];
  programs(): ProgramInfo[];
  /** Never replaces another program: clsact uses a fresh handle/priority, TCX appends. */
  attachTc(program: string, ifindex: number, direction: TcDirection, mode: TcAttachMode): TcAttachment;
  attachTracepoint(program: string, category: string, name: string): number;
  attachRawTracepoint(program: string, name: string): number;
  /** Attach by the program's section name (fentry/, kprobe/, tp/, …). */
  attachAuto(program: string): number;
  /** Idempotent; an interface that is already gone is not an error. */
  detach(attachmentId: number): void;
  /** Pins a link-based attachment (TCX, tracepoint, …) in bpffs so it outlives the process. */
  pinAttachment(attachmentId: number, pinPath: string): void;
  /** Takes over the link pinned at pinPath for program (see Adoption); a kept or updated link stays pinned. */
  adoptLink(program: string, pinPath: string): Adoption;
  /** Takes over a clsact filter of an earlier run for program: kept when identical, else its program replaced in place. */
  adoptTcFilter(program: string, ifindex: number, direction: TcDirection, handle: number, priority: number): Exclude<Adoption, { outcome: 'absent' | 'stale' }>;
  /** Forgets an attachment but leaves it running when a pin (links) or the qdisc (clsact filters) holds it. */
  release(attachmentId: number): void;
  /** Whole map in batches, off the event loop. */
  readMap(map: string, batchSize?: number): Promise<MapDump>;
  lookup(map: string, key: Buffer): Buffer | null;
  update(map: string, key: Buffer, value: Buffer): void;
  /** Deletes the given keys (concatenated); returns how many existed. */
  deleteKeys(map: string, keys: Buffer): number;
  /**
   * Drains a BPF_MAP_TYPE_RINGBUF map on a thread of the addon. Records reach
   * onRecords on the event loop in batches (each record behind its u32 length);
   * an error ends the reader. While onRecords is behind, the ring fills and
   * the BPF side sees it full.
   */
  openRingBuffer(map: string, onRecords: (err: NativeError | null, records: Buffer | null) => void): RingBufferReader;
  close(): void;
}

export interface RingBufferReader {
  /** Stops the reader thread; records not yet delivered are dropped. Idempotent. */
  close(): void;
}

/** An NVML failure: NVML's return code by name (NVML_ERROR_GPU_IS_LOST, …) and the call that returned it. */
export interface NvmlError extends Error {
  code: string;
  nvmlReturn: number;
  call: string;
}

export interface NvmlDevice {
  index: number;
  uuid: string;
  /** Product name (nvmlDeviceGetName). */
  name: string;
  /** The first NVML call of this device that failed (other than "not supported"); values read before it are kept. */
  error?: NvmlError;
  /**
   * What the device supports, in NVML's units: utilization_gpu, utilization_memory (%), memory_total,
   * memory_free, memory_used (bytes), power_milliwatts, energy_millijoules, temperature_celsius,
   * sm_clock_mhz, memory_clock_mhz, pcie_tx_kilobytes_per_second, pcie_rx_kilobytes_per_second,
   * ecc_corrected, ecc_uncorrected (volatile counts).
   */
  values: Readonly<Record<string, number>>;
  /** Compute processes and the device memory each uses. */
  processes: ReadonlyArray<{ pid: number; memoryBytes: number }>;
  /** Mean SM and memory utilization (%) per process over the samples since the previous sample(). */
  processUtilization: ReadonlyArray<{ pid: number; smPercent: number; memoryPercent: number }>;
  xidEventsSupported: boolean;
  /** XID events since the session opened, by XID. */
  xids: Readonly<Record<string, number>>;
}

export interface NvmlSnapshot {
  driverVersion: string;
  devices: NvmlDevice[];
}

export interface NvmlSession {
  /** Every device, read on a worker thread; rejects with an NvmlError when NVML itself fails. */
  sample(): Promise<NvmlSnapshot>;
  /** NVML is shut down and unloaded once no sample runs. */
  close(): void;
}

export interface DcgmGpu {
  /** DCGM's GPU id (not necessarily NVML's index: match on uuid). */
  gpuId: number;
  uuid: string;
  /** Latest value per DCGM field id (DCGM_FI_PROF_*: ratios 0–1, NVLink bytes per second); absent when DCGM has none. */
  values: Readonly<Record<string, number>>;
}

export interface DcgmSession {
  /** Why the profiling fields are not watched; "" when they are. */
  readonly profilingError: string;
  /** Latest values of every supported GPU, read on a worker thread. */
  sample(): Promise<DcgmGpu[]>;
  /** Stops the embedded host engine once no sample runs. */
  close(): void;
}

export interface NativeAddon {
  BpfObject: new (objectPath: string) => BpfObject;
  possibleCpus(): number;
  /** Turns on kernel BPF run-time stats (BPF_ENABLE_STATS); returns a handle kept open while on. */
  enableStats(): number;
  disableStats(handle: number): void;
  /** Interfaces of the agent's network namespace (RTM_GETLINK dump). */
  listLinks(): LinkInfo[];
  /** The BPF classifiers on an interface's clsact hook; [] when it has no clsact qdisc. */
  listTcFilters(ifindex: number, direction: TcDirection): TcFilter[];
  /** Removes one clsact filter (gone already is fine). */
  detachTcFilter(ifindex: number, direction: TcDirection, handle: number, priority: number): void;
  /** Deletes an interface's clsact qdisc. */
  removeClsact(ifindex: number): void;
  /** The map pinned at pinPath; null when nothing is pinned there. */
  pinnedMapInfo(pinPath: string): PinnedMapInfo | null;
  /** null when no program has that id. */
  programById(id: number): KernelProgram | null;
  /** Namespace id that our namespace assigned to the netns at nsPath (e.g. /proc/PID/ns/net); -1 when none. */
  netnsId(nsPath: string): number;
  /**
   * The enumerators of the running kernel's enum `typeName`, from its BTF (/sys/kernel/btf/vmlinux):
   * numbers, or bigints for values beyond 2^53. null when the kernel has no such enum; throws when it has no BTF.
   */
  btfEnum(typeName: string): Record<string, number | bigint> | null;
  /** dlopens NVML (a file name or path) and initializes it on a worker thread; rejects with an NvmlError. */
  openNvml(libraryPath: string): Promise<NvmlSession>;
  /** dlopens DCGM, starts an embedded host engine and watches the profiling fields, on a worker thread. */
  openDcgm(libraryPath: string): Promise<DcgmSession>;
}

/** Errors thrown by the addon carry the kernel errno and libbpf's last message. */
export interface NativeError extends Error {
  errno: number;
  code: string;
  libbpfMessage?: string;
}

export function isNativeError(err: unknown): err is NativeError {
  return err instanceof Error && typeof (err as Partial<NativeError>).errno === 'number';
}

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export const nativeAddonPath = path.join(projectRoot, 'native/build/Release/probepilot.node');
export const bpfObjectDir = path.join(projectRoot, 'build/bpf');

let cached: NativeAddon | undefined;

export function loadAddon(): NativeAddon {
  cached ??= createRequire(import.meta.url)(nativeAddonPath) as NativeAddon;
  return cached;
}
