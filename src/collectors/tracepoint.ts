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
import { CounterSeries, type RetiredTotals } from '../metrics/series.js';
import { TimeSlicer } from '../metrics/slice.js';
import { ObjectPins } from '../bpf/pins.js';
import { CollectorUnavailableError, type Collector, type CollectorContext, type CollectorHealth, type StopOptions } from './collector.js';
import { SerialQueue } from './serial.js';

export type AttachPoint =
  | { program: string; tracepoint: `${string}:${string}`; optional?: boolean }
  | { program: string; rawTracepoint: string; optional?: boolean };

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
  /** File name under build/bpf/. */
  object: string;
  scope: IdentityScope;
  attach: readonly AttachPoint[];
  views: readonly MapView[];
  /** Map sizes, .rodata settings: before load. */
  beforeLoad?: (object: BpfObject) => void;
  /** Configuration that gives the map keys their meaning (e.g. the syscall of each slot): maps pinned under another are re-created. */
  pinLayout?: string;
  /** What the collector's events are, read from its series as of the last collection. */
  eventsProcessed?: (families: readonly MetricFamily[]) => number;
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
    if (ctx.config.pins.enabled) this.pins = new ObjectPins(ctx.addon, this.log, ctx.config.pins, spec.object, spec.pinLayout);
  }

  async start(): Promise<void> {
    const objectPath = path.join(bpfObjectDir, this.spec.object);
    const object = new this.ctx.addon.BpfObject(objectPath);
    let reused = false;
    try {
      this.spec.beforeLoad?.(object);
      reused = this.pins?.pinMaps(object) ?? false;
      object.load();
    } catch (err) {
      object.close();
      throw new CollectorUnavailableError(`cannot load ${this.spec.object}: ${describeError(err)}`);
    }
    this.object = object;
    // The saved final counts belong with the maps they were taken from: fresh maps start every series over.
    const saved = reused ? this.pins?.readState<TracepointState>() : undefined;
    for (const state of this.views) state.series.restoreRetired(saved?.retired[state.view.map] ?? [], Date.now());
    this.mapInfo = new Map(object.maps().map((m) => [m.name, m]));
    for (const point of this.spec.attach) {
      const what = 'tracepoint' in point ? `tracepoint ${point.tracepoint}` : `raw tracepoint ${point.rawTracepoint}`;
      try {
        this.attachments.push(this.attachOne(object, point));
      } catch (err) {
        if (point.optional) {
          this.log.warn({ program: point.program, reason: `${what}: ${describeError(err)}` }, 'optional hook unavailable; the rest of the collector runs');
          continue;
        }
        await this.stop();
        throw new CollectorUnavailableError(`cannot attach ${what}: ${describeError(err)}`);
      }
    }
  }

  private attachOne(object: BpfObject, point: AttachPoint): number {
    const attach = (): number => {
      if ('rawTracepoint' in point) return object.attachRawTracepoint(point.program, point.rawTracepoint);
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
      for (const id of this.attachments) {
        try {
          if (keepRunning && pins) object.release(id);
          else object.detach(id);
        } catch (err) {
          this.log.warn({ err: describeError(err) }, 'detach failed');
        }
      }
      this.attachments = [];
      object.close();
      this.object = undefined;
      if (keepRunning) this.saveState();
      else pins?.remove();
    });
  }

  private saveState(): void {
    if (!this.pins) return;
    const state: TracepointState = { retired: Object.fromEntries(this.views.map((v) => [v.view.map, v.series.retiredTotals()])) };
    try {
      this.pins.writeState(state);
    } catch (err) {
      this.log.warn({ err: describeError(err) }, 'cannot save the final counts of retired entries; a restart would lose them');
    }
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
      const now = Date.now();
      const dumps = await Promise.all(this.views.map((v) => object.readMap(v.view.map)));
      const out: MetricFamily[] = [];
      const slicer = new TimeSlicer();
      let retiredAny = false;
      for (const [i, state] of this.views.entries()) {
        const { families, retired } = await this.collectView(object, state, dumps[i]!, now, slicer);
        out.push(...families);
        retiredAny ||= retired;
      }
      // Right after the kernel entries went: their final counts live only here now.
      if (retiredAny) this.saveState();
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
    series.beginCollection();
    for (let i = 0; i < dump.count; i++) {
      if (slicer.due()) await slicer.yield();
      const keyBytes = dump.keys.subarray(i * dump.keySize, (i + 1) * dump.keySize);
      const cgroupId = keyBytes.readBigUInt64LE(0);
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
