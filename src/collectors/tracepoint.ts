// A collector made of tracepoint programs that aggregate into BPF maps keyed
// by workload (a u64 cgroup id at the start of the key). Each collector is a
// spec — its object, what to attach, how its maps read as metric families —
// and this module does the rest: load, attach, per-CPU sums, identity,
// monotonic series across cgroups that go away, self-health, detach.
import path from 'node:path';
import { bpfObjectDir, type BpfObject, type MapDump, type MapInfo, type ProgramInfo } from '../bpf/addon.js';
import { ppStatSlots, readPpStat, selectKeys } from '../bpf/maps.js';
import { describeError } from '../errors.js';
import { rootCgroup } from '../identity/cgroups.js';
import type { IdentityScope } from '../identity/identity.js';
import { histogramSample, histogramSlots } from '../metrics/histogram.js';
import type { FamilyDescriptor, HistogramSample, Labels, MetricFamily, ScalarSample } from '../metrics/model.js';
import { CounterSeries, type RetiredTotals, type SavedFold } from '../metrics/series.js';
import { TimeSlicer } from '../metrics/slice.js';
import { ObjectPins, type MapPinOutcome, type PinnedMaps } from '../bpf/pins.js';
import { CollectorUnavailableError, type Collector, type CollectorContext, type CollectorHealth, type StopOptions } from './collector.js';
import { SerialQueue } from './serial.js';
import { withCapabilityHint, type Capability } from '../system/capabilities.js';
import { tracefsMounted } from '../system/mounts.js';

/** Loading BPF and attaching tracing programs. */
const tracingCapabilities: readonly Capability[] = ['CAP_BPF', 'CAP_PERFMON'];

export type AttachPoint =
  | { program: string; tracepoint: `${string}:${string}`; optional?: boolean }
  | { program: string; rawTracepoint: string; optional?: boolean }
  /** Attached as its SEC() name says (fentry/, kprobe/, tp_btf/, …): for objects the agent does not write (custom probes). */
  | { program: string; auto: true; optional?: boolean };

type ScalarDescriptor = FamilyDescriptor & { type: 'counter' | 'gauge' };
type HistogramDescriptor = FamilyDescriptor & { type: 'histogram' };

/**
 * A family read from a map view. Descriptors carry only the labels the view
 * adds; identity labels are prepended. Counters and gauges are computed from
 * the entry's u64 fields (summed over CPUs, monotonic across retired
 * entries); histograms come from a struct pp_hist in the value.
 */
export type ViewFamily =
  | { descriptor: Omit<ScalarDescriptor, 'labelNames'> & { labelNames?: readonly string[] }; value: FieldValue }
  /** Several samples per entry, told apart by extra labels (e.g. side="client" and side="server" from two fields). */
  | { descriptor: Omit<ScalarDescriptor, 'labelNames'> & { labelNames?: readonly string[] }; split: ReadonlyArray<{ labels: Labels; value: FieldValue }> }
  | { descriptor: Omit<HistogramDescriptor, 'labelNames'> & { labelNames?: readonly string[] }; histogram: number };

type FieldValue = (fields: readonly number[]) => number;

/** The workload a key names other than by cgroup id. */
export interface KeyWorkload {
  /** cgroup path of the workload. */
  path: string;
  /** What the key names no longer exists: the entry's final counts are kept and its kernel entry is deleted. */
  gone: boolean;
}

/**
 * For events the kernel could attribute to no task or socket (cgroup id 0)
 * but to something else in the key, e.g. a network namespace.
 */
export interface KeyWorkloadResolver {
  /** undefined: the node. */
  resolve(key: Buffer): KeyWorkload | undefined;
  /** The kernel entry of a key resolved as gone was deleted. */
  forget(key: Buffer): void;
}

export interface MapView {
  map: string;
  /** Byte offset of the u64 cgroup id in the key (default 0); null: keys name no workload, every entry is the node's. */
  cgroupOffset?: number | null;
  /** Key bytes after the u64 cgroup id, as labels (e.g. the syscall name); undefined skips the entry. */
  keyLabels?: (key: Buffer) => Labels | undefined;
  /** Resolves keys whose cgroup id is 0; without it they belong to the node. */
  keyWorkload?: KeyWorkloadResolver;
  /** Byte offsets of the u64 fields in one CPU's value. */
  fields?: readonly number[];
  /** Byte offsets of struct pp_hist values in one CPU's value. */
  histograms?: readonly number[];
  families: readonly ViewFamily[];
}

export interface TracepointCollectorSpec {
  name: string;
  /** File name under build/bpf/, or an absolute path. */
  object: string;
  scope: IdentityScope;
  attach: readonly AttachPoint[];
  views: readonly MapView[];
  /** Map sizes, .rodata settings: before load. */
  beforeLoad?: (object: BpfObject) => void;
  /** Checks of the loaded object (e.g. a custom probe's map layouts against its spec); a throw makes the collector unavailable. */
  afterLoad?: (object: BpfObject) => void;
  /** Names its pin directory and state file (default: the object's file name, which must then be under build/bpf/). */
  pinName?: string;
  /** Configuration that gives the map keys their meaning (e.g. the syscall of each slot): maps pinned under another are re-created. */
  pinLayout?: string;
  /** What the collector's events are, read from its series as of the last collection. */
  eventsProcessed?: (families: readonly MetricFamily[]) => number;
  /** Hooks other than tracepoints (TC on the node's interfaces), owned by the spec. */
  hooks?: SpecHooks;
}

export interface SpecHooks {
  /** After load and the tracepoints; a throw makes the collector unavailable with its message. */
  attach(object: BpfObject): Promise<void>;
  /** Before close; detaches whatever attach() attached. */
  detach(object: BpfObject): void;
  /** Inside the collection, before the maps are read (e.g. to move expired entries into a counted map). */
  beforeCollect?(object: BpfObject): Promise<void>;
}

interface ViewState {
  view: MapView;
  families: Array<{ spec: ViewFamily; descriptor: FamilyDescriptor }>;
  series: CounterSeries;
  fieldCount: number;
  /** Byte offset in one CPU's value of every u64 an entry reads: [fields…, hist0 slots…, hist0 sum, hist1 …]. */
  offsets: number[];
}

const histogramWidth = histogramSlots + 1;
const noLabels: Labels = Object.freeze({});

/** The state file: retired totals per view, by map name. */
interface TracepointState {
  retired: Record<string, RetiredTotals[]>;
  /** By map name; absent in state files of earlier versions. */
  folds?: Record<string, SavedFold[]>;
}

export class TracepointCollector implements Collector {
  readonly name: string;
  readonly families: readonly FamilyDescriptor[];
  private readonly views: ViewState[];
  private readonly cpus: number;
  private object: BpfObject | undefined;
  private mapInfo = new Map<string, MapInfo>();
  private attachments: number[] = [];
  /** undefined when pins are off. */
  private readonly pins: ObjectPins | undefined;
  private readonly queue = new SerialQueue();
  private lastHealth: CollectorHealth = { eventsDropped: { map_full: 0 } };
  private readonly log;

  constructor(
    private readonly spec: TracepointCollectorSpec,
    private readonly ctx: CollectorContext,
  ) {
    this.name = spec.name;
    this.cpus = ctx.addon.possibleCpus();
    this.log = ctx.log.child({ collector: spec.name });
    const identityLabels = ctx.identity.labelNames(spec.scope);
    const graceMs = ctx.config.seriesGraceSeconds * 1000;
    this.views = spec.views.map((view) => {
      const offsets = [...(view.fields ?? [])];
      for (const histOffset of view.histograms ?? []) {
        for (let slot = 0; slot < histogramWidth; slot++) offsets.push(histOffset + slot * 8);
      }
      return {
        view,
        fieldCount: view.fields?.length ?? 0,
        offsets,
        series: new CounterSeries(offsets.length, graceMs, { limit: ctx.config.seriesLimit, foldedLabels: identityLabels }),
        families: view.families.map((family) => ({
          spec: family,
          descriptor: { ...family.descriptor, labelNames: [...identityLabels, ...(family.descriptor.labelNames ?? [])] },
        })),
      };
    });
    this.families = this.views.flatMap((v) => v.families.map((f) => f.descriptor));
    if (ctx.config.pins.enabled) this.pins = new ObjectPins(ctx.addon, this.log, ctx.config.pins, spec.pinName ?? spec.object, spec.pinLayout);
  }

  async start(): Promise<void> {
    const objectPath = path.resolve(bpfObjectDir, this.spec.object);
    const object = new this.ctx.addon.BpfObject(objectPath);
    let pinned: PinnedMaps | undefined;
    try {
      this.spec.beforeLoad?.(object);
      pinned = this.pins?.pinMaps(object);
      object.load();
      this.spec.afterLoad?.(object);
    } catch (err) {
      object.close();
      throw new CollectorUnavailableError(withCapabilityHint(`cannot load ${this.spec.object}: ${describeError(err)}`, err, tracingCapabilities));
    }
    this.object = object;
    // The saved final counts and folds belong with the map they were taken from: a fresh map starts its series over.
    const saved = pinned ? this.pins?.readState<TracepointState>() : undefined;
    const now = Date.now();
    for (const { view, series } of this.views) {
      if (!pinned?.reused(view.map)) continue;
      series.restoreFolds(saved?.folds?.[view.map] ?? [], now);
      series.restoreRetired(saved?.retired[view.map] ?? [], now);
    }
    this.mapInfo = new Map(object.maps().map((m) => [m.name, m]));
    for (const point of this.spec.attach) {
      const what = 'tracepoint' in point ? `tracepoint ${point.tracepoint}` : 'rawTracepoint' in point ? `raw tracepoint ${point.rawTracepoint}` : `program ${point.program} (by its section name)`;
      try {
        this.attachments.push(this.attachOne(object, point));
      } catch (err) {
        if (point.optional) {
          this.log.warn({ program: point.program, reason: `${what}: ${describeError(err)}` }, 'optional hook unavailable; the rest of the collector runs');
          continue;
        }
        this.detachAll(object, false);
        // A tracepoint's id is read from tracefs: without it the error is a bare ENOENT.
        const noTracefs = 'tracepoint' in point && tracefsMounted() === undefined ? ' (tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing)' : '';
        throw new CollectorUnavailableError(withCapabilityHint(`cannot attach ${what}: ${describeError(err)}${noTracefs}`, err, tracingCapabilities));
      }
    }
    try {
      await this.spec.hooks?.attach(object);
    } catch (err) {
      this.detachAll(object, false);
      throw err instanceof CollectorUnavailableError ? err : new CollectorUnavailableError(describeError(err));
    }
  }

  private attachOne(object: BpfObject, point: AttachPoint): number {
    const attach = (): number => {
      if ('rawTracepoint' in point) return object.attachRawTracepoint(point.program, point.rawTracepoint);
      if ('auto' in point) return object.attachAuto(point.program);
      const [category, name] = point.tracepoint.split(':') as [string, string];
      return object.attachTracepoint(point.program, category, name);
    };
    return this.pins ? this.pins.adoptOrAttach(object, point.program, point.program, attach) : attach();
  }

  stop({ keepRunning = false }: StopOptions = {}): Promise<void> {
    return this.queue.run(async () => {
      const object = this.object;
      if (!object) return;
      const pins = this.pins;
      this.detachAll(object, keepRunning && pins !== undefined);
      await pins?.flushState();
      if (keepRunning) this.saveState();
      else pins?.remove();
    });
  }

  /**
   * release: leave the programs attached through their pins for the next run.
   * A start that failed half-way detaches what it attached but keeps the
   * pinned maps and saved state: they hold the earlier run's counts, which a
   * later start (another kernel, capability or configuration) continues.
   */
  private detachAll(object: BpfObject, release: boolean): void {
    for (const id of this.attachments) {
      try {
        if (release) object.release(id);
        else object.detach(id);
      } catch (err) {
        this.log.warn({ err: describeError(err) }, 'detach failed');
      }
    }
    this.attachments = [];
    this.spec.hooks?.detach(object);
    object.close();
    this.object = undefined;
  }

  pinnedMaps(): ReadonlyMap<string, MapPinOutcome> {
    return this.pins?.mapOutcomes() ?? new Map();
  }

  private state(): TracepointState {
    return {
      retired: Object.fromEntries(this.views.map((v) => [v.view.map, v.series.retiredTotals()])),
      folds: Object.fromEntries(this.views.map((v) => [v.view.map, v.series.savedFolds()])),
    };
  }

  private saveState(): void {
    if (!this.pins) return;
    try {
      this.pins.writeState(this.state());
    } catch (err) {
      this.log.warn({ err: describeError(err) }, 'cannot save the final counts of retired entries; a restart would lose them');
    }
  }

  /** saveState off the collection path, coalesced: retiring churn writes the newest state, not one file per collection. */
  private saveStateSoon(): void {
    this.pins?.saveStateSoon(
      () => this.state(),
      (err) => this.log.warn({ err: describeError(err) }, 'cannot save the final counts of retired entries; a restart would lose them'),
    );
  }

  private foldedSeries(): number {
    return this.views.reduce((n, v) => n + v.series.foldedSeries, 0);
  }

  programs(): ProgramInfo[] {
    return this.object?.programs() ?? [];
  }

  health(): CollectorHealth {
    return this.lastHealth;
  }

  collect(): Promise<MetricFamily[]> {
    return this.queue.run(async () => {
      const object = this.object;
      if (!object) throw new Error(`${this.name} collector is not started`);
      await this.spec.hooks?.beforeCollect?.(object);
      const now = Date.now();
      const dumps = await Promise.all(this.views.map((v) => object.readMap(v.view.map)));
      const out: MetricFamily[] = [];
      const slicer = new TimeSlicer();
      const foldedBefore = this.foldedSeries();
      let retiredAny = false;
      for (const [i, state] of this.views.entries()) {
        const { families, retired } = await this.collectView(object, state, dumps[i]!, now, slicer);
        out.push(...families);
        retiredAny ||= retired;
      }
      // Right after the kernel entries went: their final counts live only here now. New folds too, for a restart.
      if (retiredAny || this.foldedSeries() !== foldedBefore) this.saveStateSoon();
      this.lastHealth = {
        ...(this.spec.eventsProcessed ? { eventsProcessed: this.spec.eventsProcessed(out) } : {}),
        eventsDropped: { map_full: readPpStat(object, ppStatSlots.droppedMapFull, this.cpus) },
        seriesOverflow: Object.fromEntries(this.views.flatMap((v) => v.families.map((f) => [f.descriptor.name, v.series.foldedSeries]))),
      };
      return out;
    });
  }

  /** retired: kernel entries were deleted (their final counts moved into the series). */
  private async collectView(object: BpfObject, state: ViewState, dump: MapDump, now: number, slicer: TimeSlicer): Promise<{ families: MetricFamily[]; retired: boolean }> {
    const { view, series } = state;
    const info = this.mapInfo.get(view.map);
    if (!info) throw new Error(`${this.spec.object} has no map ${view.map}`);
    const cpus = info.perCpu ? this.cpus : 1;
    const stride = info.perCpu ? info.valueStride : info.valueSize;
    const { cgroups } = this.ctx.identity;
    const retired: number[] = [];
    const goneIds = new Set<bigint>();
    const goneKeys: Buffer[] = [];
    const cgroupOffset = view.cgroupOffset === undefined ? 0 : view.cgroupOffset;
    series.beginCollection();
    for (let i = 0; i < dump.count; i++) {
      if (slicer.due()) await slicer.yield();
      const keyBytes = dump.keys.subarray(i * dump.keySize, (i + 1) * dump.keySize);
      const cgroupId = cgroupOffset === null ? 0n : keyBytes.readBigUInt64LE(cgroupOffset);
      const keyLabels = view.keyLabels ? view.keyLabels(keyBytes) : {};
      if (!keyLabels) continue;
      let isGone: boolean;
      let workload: string;
      if (cgroupId !== 0n) {
        isGone = cgroups.isGone(cgroupId);
        workload = cgroups.resolve(cgroupId) ?? rootCgroup;
      } else {
        const named = view.keyWorkload?.resolve(keyBytes);
        isGone = named?.gone ?? false;
        workload = named?.path ?? rootCgroup;
        if (isGone) goneKeys.push(keyBytes);
      }
      const labels = { ...this.ctx.identity.labelsFor(workload, this.spec.scope), ...keyLabels };
      // Series are their label sets: entries of a restarted container (new cgroup, same pod and container) add up.
      const key = Object.values(labels).join('\0');
      const values = this.entryValues(dump, i, state, cpus, stride);
      const entryId = keyBytes.toString('hex');
      if (isGone) {
        series.retire(entryId, key, labels, values, now);
        retired.push(i);
        if (cgroupId !== 0n) goneIds.add(cgroupId);
      } else if (!series.addLive(entryId, key, labels, values, now)) {
        retired.push(i); // relabeled: its counts stayed with its old series; the kernel starts it afresh
      }
    }
    // Final counts are kept in the series; the kernel entries retired are freed.
    if (retired.length) object.deleteKeys(view.map, selectKeys(dump, retired));
    for (const id of goneIds) cgroups.forget(id);
    for (const key of goneKeys) view.keyWorkload?.forget(key);

    const rows = series.finishCollection(now);
    const families: MetricFamily[] = [];
    for (const { spec, descriptor } of state.families) {
      if ('histogram' in spec) {
        const offset = state.fieldCount + spec.histogram * histogramWidth;
        const samples: HistogramSample[] = [];
        for (const r of rows) {
          if (slicer.due()) await slicer.yield();
          samples.push(histogramSample(r.labels, r.values.slice(offset, offset + histogramWidth)));
        }
        families.push({ ...descriptor, type: 'histogram', samples });
        continue;
      }
      const parts = 'split' in spec ? spec.split : [{ labels: noLabels, value: spec.value }];
      const samples: ScalarSample[] = [];
      for (const r of rows) {
        if (slicer.due()) await slicer.yield();
        const fields = r.values.slice(0, state.fieldCount);
        // Without labels of its own a sample keeps its series' labels object, which exporters cache by identity.
        for (const part of parts) samples.push({ labels: part.labels === noLabels ? r.labels : { ...r.labels, ...part.labels }, value: part.value(fields) });
      }
      families.push({ ...descriptor, type: spec.descriptor.type, samples });
    }
    return { families, retired: retired.length > 0 };
  }

  /** The entry's u64s at the view's offsets, summed over CPUs. */
  private entryValues(dump: MapDump, index: number, { offsets }: ViewState, cpus: number, stride: number): number[] {
    const values = new Array<number>(offsets.length).fill(0);
    const base = index * dump.valueSize;
    for (let cpu = 0; cpu < cpus; cpu++) {
      const cpuBase = base + cpu * stride;
      // Two u32 halves instead of a BigInt per read: the same number (one rounding above 2^53), without an allocation each.
      for (let j = 0; j < offsets.length; j++) {
        const at = cpuBase + offsets[j]!;
        values[j]! += dump.values.readUInt32LE(at) + dump.values.readUInt32LE(at + 4) * 0x1_0000_0000;
      }
    }
    return values;
  }
}

/** Sum of a counter or gauge family's samples: what most collectors report as events processed. */
export function familyTotal(families: readonly MetricFamily[], name: string): number {
  const family = families.find((f) => f.name === name);
  if (!family || family.type === 'histogram') return 0;
  return family.samples.reduce((total, s) => total + s.value, 0);
}
