// The per-event path (bpf/events.bpf.c): one ring buffer, filtered in the
// kernel, drained in batches by the addon's reader thread, enriched with the
// same identity as metrics and fanned out to whoever subscribed (the event
// stream of the REST API, gRPC StreamEvents, the CLI's trace).
//
// Nothing is loaded while nobody traces: the first subscription loads the
// object, each kind's programs are attached only while someone subscribes to
// that kind, and the last one to leave unloads it all. The kernel filters
// are the union of what the subscribers ask; each subscriber then gets only
// what matches its own filter.
import path from 'node:path';
import { bpfObjectDir, type BpfObject, type NativeAddon, type RingBufferReader } from '../bpf/addon.js';
import { ppStatSlots, readPpStat } from '../bpf/maps.js';
import type { AgentConfig } from '../config.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import { rootCgroup } from '../identity/cgroups.js';
import type { Identity } from '../identity/identity.js';
import type { FamilyDescriptor, Labels, MetricFamily } from '../metrics/model.js';
import { currentSyscallArch, syscallNamesByNumber, syscallNrMax, syscallNumbers, trackableSyscalls } from '../collectors/syscall-table.js';
import { SerialQueue } from '../collectors/serial.js';
import type { TraceEvent, TraceKind } from '../api/events.js';
import { decodeRecord, eventKinds, splitBatch, tcpStateNames, type EventRecord } from './records.js';

export interface TraceFilter {
  kind: TraceKind;
  /** Only this namespace's pods (Kubernetes mode). */
  namespace?: string;
  /** A pod's name, or a cgroup path (with the cgroups below it). */
  pod?: string;
  /** kind syscall: only these syscalls, by name. */
  syscalls?: readonly string[];
}

/** A subscriber gets an event and says whether it could take it (false: its transport is behind; counted as lost). */
export type TraceListener = (event: TraceEvent) => boolean;

/** The subscription cannot be opened: too many at once, a bad filter, or the kernel refused the programs. */
export class TraceRefusedError extends Error {
  constructor(
    message: string,
    readonly reason: 'limit' | 'filter' | 'unavailable',
  ) {
    super(message);
    this.name = 'TraceRefusedError';
  }
}

interface Subscriber {
  filter: TraceFilter;
  /** kind syscall with a syscall filter: the numbers. */
  syscallNrs?: ReadonlySet<number>;
  listener: TraceListener;
}

const attachPoints: Readonly<Record<TraceKind, ReadonlyArray<{ program: string; category: string; name: string }>>> = {
  syscall: [
    { program: 'pp_trace_sys_enter', category: 'raw_syscalls', name: 'sys_enter' },
    { program: 'pp_trace_sys_exit', category: 'raw_syscalls', name: 'sys_exit' },
  ],
  network: [
    { program: 'pp_trace_tcp_state', category: 'sock', name: 'inet_sock_set_state' },
    { program: 'pp_trace_tcp_retransmit', category: 'tcp', name: 'tcp_retransmit_skb' },
    { program: 'pp_trace_tcp_receive_reset', category: 'tcp', name: 'tcp_receive_reset' },
  ],
};

/** The kernel's kind number of each trace kind (enum pp_event_kind). */
const kindBit: Readonly<Record<TraceKind, number>> = { syscall: 1 << eventKinds.syscall, network: 1 << eventKinds.tcp };

const lostReasons = ['ring_buffer_full', 'rate_limited', 'subscriber_slow', 'undecodable'] as const;
type LostReason = (typeof lostReasons)[number];

const families = {
  events: {
    name: 'probepilot_events_total',
    help: 'Traced events read from the kernel\'s ring buffer, by kind (syscall, network); only while someone traces.',
    type: 'counter',
    labelNames: ['kind'],
  },
  lost: {
    name: 'probepilot_events_lost_total',
    help: 'Traced events lost, by reason: ring_buffer_full (userspace fell behind), rate_limited (over the cgroup\'s events.ratePerSecond), subscriber_slow (a stream\'s client did not keep up), undecodable.',
    type: 'counter',
    labelNames: ['reason'],
  },
  subscribers: {
    name: 'probepilot_trace_subscribers',
    help: 'Event streams tracing a kind of events now; the kind\'s programs are attached only while it is above 0.',
    type: 'gauge',
    labelNames: ['kind'],
  },
} as const satisfies Record<string, FamilyDescriptor>;

/** Re-reads which cgroups match the subscribers' filters this often, so containers started during a trace join it. */
const cgroupRefreshMs = 1000;

export interface EventPipelineDeps {
  config: AgentConfig;
  log: Logger;
  addon: NativeAddon;
  identity: Identity;
}

export class EventPipeline {
  readonly families: readonly FamilyDescriptor[] = Object.values(families);
  private object: BpfObject | undefined;
  private reader: RingBufferReader | undefined;
  private readonly attachments = new Map<TraceKind, number[]>();
  private readonly subscribers = new Set<Subscriber>();
  /** What trace_cgroups and trace_syscalls hold, so a change writes only the difference. */
  private kernelCgroups = new Map<bigint, number>();
  private kernelSyscalls = new Set<number>();
  private refreshTimer: NodeJS.Timeout | undefined;
  private readonly read: Record<TraceKind, number> = { syscall: 0, network: 0 };
  private readonly lost: Record<LostReason, number> = { ring_buffer_full: 0, rate_limited: 0, subscriber_slow: 0, undecodable: 0 };
  /** Kernel-side losses of objects already unloaded. */
  private readonly kernelLostBefore = { ring_buffer_full: 0, rate_limited: 0 };
  private readonly changes = new SerialQueue();
  private readonly cpus: number;
  private readonly syscallNames: Map<number, string>;
  /** Wall clock minus CLOCK_MONOTONIC (the kernel's bpf_ktime_get_ns), in ns. */
  private readonly wallOffsetNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  private readonly log: Logger;

  constructor(private readonly deps: EventPipelineDeps) {
    this.cpus = deps.addon.possibleCpus();
    this.syscallNames = syscallNamesByNumber(currentSyscallArch() ?? 'x64');
    this.log = deps.log.child({ component: 'events' });
  }

  /** Names a syscall filter may use on this architecture. */
  static syscallChoices(): string[] {
    return trackableSyscalls(currentSyscallArch() ?? 'x64');
  }

  /**
   * Starts delivering the events that match filter to listener; resolves with
   * the function that ends the subscription. Rejects with TraceRefusedError.
   */
  subscribe(filter: TraceFilter, listener: TraceListener): Promise<() => Promise<void>> {
    return this.changes.run(async () => {
      const { maxSubscribers } = this.deps.config.events;
      if (this.subscribers.size >= maxSubscribers) {
        throw new TraceRefusedError(`${maxSubscribers} traces are open already (events.maxSubscribers); close one first`, 'limit');
      }
      const subscriber: Subscriber = { filter, listener, ...this.syscallNumbersOf(filter) };
      this.subscribers.add(subscriber);
      try {
        await this.apply();
      } catch (err) {
        this.subscribers.delete(subscriber);
        await this.apply().catch(() => undefined);
        throw err instanceof TraceRefusedError ? err : new TraceRefusedError(`cannot trace ${filter.kind}: ${describeError(err)}`, 'unavailable');
      }
      this.log.info({ kind: filter.kind, namespace: filter.namespace ?? null, pod: filter.pod ?? null, syscalls: filter.syscalls ?? null, subscribers: this.subscribers.size }, 'trace started');
      let ended = false;
      return () =>
        this.changes.run(async () => {
          if (ended) return;
          ended = true;
          this.subscribers.delete(subscriber);
          await this.apply();
          this.log.info({ kind: filter.kind, subscribers: this.subscribers.size }, 'trace ended');
        });
    });
  }

  private syscallNumbersOf(filter: TraceFilter): { syscallNrs?: ReadonlySet<number> } {
    if (filter.kind !== 'syscall' || !filter.syscalls?.length) return {};
    const arch = currentSyscallArch();
    if (!arch) throw new TraceRefusedError(`no syscall table for architecture ${process.arch}`, 'filter');
    const { numbers, missing } = syscallNumbers(filter.syscalls, arch);
    if (missing.length) {
      throw new TraceRefusedError(`unknown syscall ${missing.join(', ')}; the syscalls are ${trackableSyscalls(arch).join(', ')}`, 'filter');
    }
    return { syscallNrs: new Set(numbers.values()) };
  }

  /** Loads, attaches, writes the kernel filters and detaches so that the kernel side matches the subscribers. */
  private async apply(): Promise<void> {
    if (this.subscribers.size === 0) {
      this.unload();
      return;
    }
    const object = this.loaded();
    this.writeConfig(object);
    this.writeCgroups(object);
    this.writeSyscalls(object);
    for (const kind of Object.keys(attachPoints) as TraceKind[]) {
      const wanted = this.subscribersOf(kind).length > 0;
      const attached = this.attachments.get(kind);
      if (wanted && !attached) this.attach(object, kind);
      if (!wanted && attached) await this.detach(object, kind);
    }
    const filtered = [...this.subscribers].some((s) => s.filter.namespace !== undefined || s.filter.pod !== undefined);
    if (filtered && !this.refreshTimer) {
      this.refreshTimer = setInterval(() => {
        this.changes
          .run(async () => {
            if (this.object) this.writeCgroups(this.object);
          })
          .catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'cannot update the traced cgroups; the previous set stays'));
      }, cgroupRefreshMs);
      this.refreshTimer.unref();
    } else if (!filtered && this.refreshTimer) {
      clearInterval(this.refreshTimer);
      this.refreshTimer = undefined;
    }
  }

  private loaded(): BpfObject {
    if (this.object) return this.object;
    const object = new this.deps.addon.BpfObject(path.join(bpfObjectDir, 'events.bpf.o'));
    try {
      object.setMapMaxEntries('events', ringBufferSize(this.deps.config.events.ringBufferBytes));
      object.load();
      this.reader = object.openRingBuffer('events', (err, batch) => this.onBatch(err, batch));
    } catch (err) {
      object.close();
      throw new TraceRefusedError(`cannot load events.bpf.o: ${describeError(err)}`, 'unavailable');
    }
    this.object = object;
    this.kernelCgroups = new Map();
    this.kernelSyscalls = new Set();
    return object;
  }

  private attach(object: BpfObject, kind: TraceKind): void {
    const ids: number[] = [];
    try {
      for (const point of attachPoints[kind]) ids.push(object.attachTracepoint(point.program, point.category, point.name));
    } catch (err) {
      for (const id of ids) object.detach(id);
      throw new TraceRefusedError(`cannot attach the ${kind} trace: ${describeError(err)}`, 'unavailable');
    }
    this.attachments.set(kind, ids);
  }

  private async detach(object: BpfObject, kind: TraceKind): Promise<void> {
    for (const id of this.attachments.get(kind) ?? []) object.detach(id);
    this.attachments.delete(kind);
    if (kind === 'syscall') {
      // An entry left now would pair with its thread's next exit once syscalls are traced again.
      const pending = await object.readMap('pending_syscalls');
      if (pending.count) object.deleteKeys('pending_syscalls', pending.keys);
    }
  }

  private unload(): void {
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    this.refreshTimer = undefined;
    const object = this.object;
    if (!object) return;
    const kernel = this.kernelLost(object);
    this.kernelLostBefore.ring_buffer_full += kernel.ring_buffer_full;
    this.kernelLostBefore.rate_limited += kernel.rate_limited;
    this.reader?.close();
    this.reader = undefined;
    this.attachments.clear();
    object.close();
    this.object = undefined;
  }

  private subscribersOf(kind: TraceKind): Subscriber[] {
    return [...this.subscribers].filter((s) => s.filter.kind === kind);
  }

  /** A kind is filtered by cgroup in the kernel only when every one of its subscribers names a namespace or pod. */
  private cgroupFilteredKinds(): number {
    let kinds = 0;
    for (const kind of Object.keys(kindBit) as TraceKind[]) {
      const subscribers = this.subscribersOf(kind);
      if (subscribers.length && subscribers.every((s) => s.filter.namespace !== undefined || s.filter.pod !== undefined)) kinds |= kindBit[kind];
    }
    return kinds;
  }

  private writeConfig(object: BpfObject): void {
    const syscallSubscribers = this.subscribersOf('syscall');
    const { ratePerSecond, burst } = this.deps.config.events;
    const costNs = ratePerSecond > 0 ? Math.max(1, Math.round(1e9 / ratePerSecond)) : 0;
    const value = Buffer.alloc(24);
    value.writeUInt32LE(this.cgroupFilteredKinds(), 0);
    value.writeUInt32LE(syscallSubscribers.length > 0 && syscallSubscribers.every((s) => s.syscallNrs) ? 1 : 0, 4);
    value.writeBigUInt64LE(BigInt(costNs), 8);
    value.writeBigUInt64LE(BigInt(costNs) * BigInt(burst), 16);
    object.update('trace_config', Buffer.alloc(4), value);
  }

  /** trace_cgroups: every cgroup some cgroup-filtered subscriber wants, with the kinds that want it. */
  private writeCgroups(object: BpfObject): void {
    const filteredKinds = this.cgroupFilteredKinds();
    const wanted = new Map<bigint, number>();
    if (filteredKinds) {
      const { identity } = this.deps;
      identity.cgroups.refresh();
      for (const [id, cgroupPath] of identity.cgroups.known()) {
        if (identity.cgroups.isGone(id)) continue;
        const labels = identity.labelsFor(cgroupPath, 'container');
        let kinds = 0;
        for (const subscriber of this.subscribers) {
          const bit = kindBit[subscriber.filter.kind];
          if (filteredKinds & bit && filterMatches(subscriber.filter, labels, cgroupPath)) kinds |= bit;
        }
        if (kinds) wanted.set(id, kinds);
      }
    }
    const value = Buffer.alloc(4);
    for (const [id, kinds] of wanted) {
      if (this.kernelCgroups.get(id) === kinds) continue;
      value.writeUInt32LE(kinds);
      object.update('trace_cgroups', cgroupKey(id), value);
    }
    const stale = [...this.kernelCgroups.keys()].filter((id) => !wanted.has(id));
    if (stale.length) object.deleteKeys('trace_cgroups', Buffer.concat(stale.map(cgroupKey)));
    this.kernelCgroups = wanted;
  }

  private writeSyscalls(object: BpfObject): void {
    const wanted = new Set<number>();
    for (const subscriber of this.subscribersOf('syscall')) for (const nr of subscriber.syscallNrs ?? []) if (nr < syscallNrMax) wanted.add(nr);
    const key = Buffer.alloc(4);
    const write = (nr: number, on: boolean): void => {
      key.writeUInt32LE(nr);
      object.update('trace_syscalls', key, Buffer.from([on ? 1 : 0]));
    };
    for (const nr of wanted) if (!this.kernelSyscalls.has(nr)) write(nr, true);
    for (const nr of this.kernelSyscalls) if (!wanted.has(nr)) write(nr, false);
    this.kernelSyscalls = wanted;
  }

  private onBatch(err: Error | null, batch: Buffer | null): void {
    if (err || !batch) {
      this.log.error({ err: describeError(err) }, 'ring buffer reader stopped; traces get no more events');
      return;
    }
    for (const bytes of splitBatch(batch)) {
      let record: EventRecord | undefined;
      let event: TraceEvent;
      let cgroupPath: string;
      try {
        record = decodeRecord(bytes);
        if (!record) {
          this.lost.undecodable++;
          continue;
        }
        cgroupPath = this.pathOf(record.cgroupId);
        event = this.enrich(record, cgroupPath);
      } catch (err) {
        // Anything thrown here would leave the addon's callback as an uncaught exception: counted, never fatal.
        this.lost.undecodable++;
        this.log.warn({ err: describeError(err) }, 'a traced event could not be decoded');
        continue;
      }
      this.read[event.type]++;
      for (const subscriber of this.subscribers) {
        if (!this.wants(subscriber, event, record, cgroupPath)) continue;
        try {
          if (!subscriber.listener(event)) this.lost.subscriber_slow++;
        } catch (err) {
          // One broken transport must not stop the others' events (nor the reader).
          this.lost.subscriber_slow++;
          this.log.warn({ kind: event.type, err: describeError(err) }, 'a trace subscriber failed an event');
        }
      }
    }
  }

  private wants(subscriber: Subscriber, event: TraceEvent, record: EventRecord, cgroupPath: string): boolean {
    if (subscriber.filter.kind !== event.type) return false;
    if (record.kind === 'syscall' && subscriber.syscallNrs && !subscriber.syscallNrs.has(record.nr)) return false;
    return filterMatches(subscriber.filter, event.workload, cgroupPath);
  }

  private pathOf(cgroupId: bigint): string {
    return this.deps.identity.cgroups.resolve(cgroupId) ?? rootCgroup;
  }

  private enrich(record: EventRecord, cgroupPath: string): TraceEvent {
    const base = {
      time: new Date(Number((record.monotonicNs + this.wallOffsetNs) / 1_000_000n)).toISOString(),
      workload: this.deps.identity.labelsFor(cgroupPath, 'container'),
      pid: record.pid,
      comm: record.comm,
    };
    if (record.kind === 'syscall') {
      return {
        type: 'syscall',
        ...base,
        tid: record.tid,
        syscall: this.syscallNames.get(record.nr) ?? `syscall_${record.nr}`,
        nr: record.nr,
        ret: Number(record.ret),
        durationSeconds: Number(record.durationNs) / 1e9,
        args: record.args.map((arg) => `0x${arg.toString(16)}`),
      };
    }
    return {
      type: 'network',
      ...base,
      event: record.type,
      family: record.family === 4 ? 'ipv4' : 'ipv6',
      source: record.source,
      sourcePort: record.sourcePort,
      destination: record.destination,
      destinationPort: record.destinationPort,
      oldState: tcpStateNames[record.oldState] ?? String(record.oldState),
      newState: tcpStateNames[record.newState] ?? String(record.newState),
    };
  }

  private kernelLost(object: BpfObject): { ring_buffer_full: number; rate_limited: number } {
    return {
      ring_buffer_full: readPpStat(object, ppStatSlots.eventsRingBufferFull, this.cpus),
      rate_limited: readPpStat(object, ppStatSlots.eventsRateLimited, this.cpus),
    };
  }

  /** Subscribers and attached programs, for the status API. */
  describe(): { subscribers: Record<TraceKind, number>; attached: TraceKind[]; programs: Array<{ name: string; id: number }> } {
    const attached = [...this.attachments.keys()];
    const programNames = new Set(attached.flatMap((kind) => attachPoints[kind].map((p) => p.program)));
    return {
      subscribers: { syscall: this.subscribersOf('syscall').length, network: this.subscribersOf('network').length },
      attached,
      programs: (this.object?.programs() ?? []).filter((p) => programNames.has(p.name)).map((p) => ({ name: p.name, id: p.id })),
    };
  }

  metrics(): MetricFamily[] {
    const kernel = this.object ? this.kernelLost(this.object) : { ring_buffer_full: 0, rate_limited: 0 };
    const lost: Record<LostReason, number> = {
      ...this.lost,
      ring_buffer_full: this.kernelLostBefore.ring_buffer_full + kernel.ring_buffer_full,
      rate_limited: this.kernelLostBefore.rate_limited + kernel.rate_limited,
    };
    const kinds = Object.keys(attachPoints) as TraceKind[];
    return [
      { ...families.events, samples: kinds.map((kind) => ({ labels: { kind }, value: this.read[kind] })) },
      { ...families.lost, samples: lostReasons.map((reason) => ({ labels: { reason }, value: lost[reason] })) },
      { ...families.subscribers, samples: kinds.map((kind) => ({ labels: { kind }, value: this.subscribersOf(kind).length })) },
    ];
  }

  /** Ends every subscription's kernel side (the transports end their streams themselves). */
  stop(): Promise<void> {
    return this.changes.run(async () => {
      this.subscribers.clear();
      this.unload();
    });
  }
}

/** A cgroup path is path or below it. */
function isWithin(cgroupPath: string, prefix: string): boolean {
  const base = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  return cgroupPath === base || cgroupPath.startsWith(`${base}/`);
}

function filterMatches(filter: TraceFilter, labels: Labels, cgroupPath: string): boolean {
  if (filter.namespace !== undefined && labels.namespace !== filter.namespace) return false;
  if (filter.pod !== undefined && labels.pod !== filter.pod && !isWithin(cgroupPath, filter.pod)) return false;
  return true;
}

function cgroupKey(id: bigint): Buffer {
  const key = Buffer.alloc(8);
  key.writeBigUInt64LE(id);
  return key;
}

/** The kernel wants a power of two of at least a page. */
export function ringBufferSize(bytes: number): number {
  let size = 4096;
  while (size < bytes) size *= 2;
  return size;
}
