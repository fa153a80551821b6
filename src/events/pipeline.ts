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
import { currentSyscallArch, syscallNamesByNumber, syscallNrMax, syscallNumbers, trackableSyscalls, type SyscallArch } from '../collectors/syscall-table.js';
import { decodeClassEntries, formatSyscallArgs } from './syscall-args.js';
import { SerialQueue } from '../collectors/serial.js';
import type { SecurityTraceEvent, TraceEvent, TraceKind } from '../api/events.js';
import { decodeRecord, eventKinds, securityOps, splitBatch, tcpStateNames, type EventRecord, type SecurityOp } from './records.js';
import { securityScope, securityScoped } from './scope.js';

export interface TraceFilter {
  kind: TraceKind;
  /** Only this namespace's pods (Kubernetes mode). */
  namespace?: string;
  /** A pod's name, or a cgroup path (with the cgroups below it). */
  pod?: string;
  /** kind syscall: only these syscalls, by name. */
  syscalls?: readonly string[];
  /** kind security: only these kinds of security events (exec, connect, …). */
  kinds?: readonly SecurityOp[];
}

/** A subscriber gets an event (and the kernel's id of its cgroup) and says whether it could take it (false: its transport is behind; counted as lost). */
export type TraceListener = (event: TraceEvent, cgroupId: bigint) => boolean;

/** Called when the trace can deliver no more events (its reader stopped): the transport ends its stream with the error. */
export type TraceFailure = (err: Error) => void;

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
  fail: TraceFailure;
}

/** optional: a kernel without this tracepoint (e.g. no module support) runs the kind without it. */
const attachPoints: Readonly<Record<TraceKind, ReadonlyArray<{ program: string; category: string; name: string; optional?: true }>>> = {
  syscall: [
    { program: 'pp_trace_sys_enter', category: 'raw_syscalls', name: 'sys_enter' },
    { program: 'pp_trace_sys_exit', category: 'raw_syscalls', name: 'sys_exit' },
  ],
  network: [
    { program: 'pp_trace_tcp_state', category: 'sock', name: 'inet_sock_set_state' },
    { program: 'pp_trace_tcp_retransmit', category: 'tcp', name: 'tcp_retransmit_skb' },
    { program: 'pp_trace_tcp_receive_reset', category: 'tcp', name: 'tcp_receive_reset' },
  ],
  security: [
    { program: 'pp_sec_exec', category: 'sched', name: 'sched_process_exec' },
    { program: 'pp_sec_exit', category: 'sched', name: 'sched_process_exit' },
    { program: 'pp_sec_openat', category: 'syscalls', name: 'sys_enter_openat' },
    { program: 'pp_sec_unlinkat', category: 'syscalls', name: 'sys_enter_unlinkat', optional: true },
    { program: 'pp_sec_renameat2', category: 'syscalls', name: 'sys_enter_renameat2', optional: true },
    { program: 'pp_sec_fchmodat', category: 'syscalls', name: 'sys_enter_fchmodat', optional: true },
    // x86-64 has the calls without a directory fd, arm64 does not; fchmodat2 is Linux 6.6+.
    { program: 'pp_sec_open', category: 'syscalls', name: 'sys_enter_open', optional: true },
    { program: 'pp_sec_unlink', category: 'syscalls', name: 'sys_enter_unlink', optional: true },
    { program: 'pp_sec_rename', category: 'syscalls', name: 'sys_enter_rename', optional: true },
    { program: 'pp_sec_renameat', category: 'syscalls', name: 'sys_enter_renameat', optional: true },
    { program: 'pp_sec_chmod', category: 'syscalls', name: 'sys_enter_chmod', optional: true },
    { program: 'pp_sec_fchmodat2', category: 'syscalls', name: 'sys_enter_fchmodat2', optional: true },
    { program: 'pp_sec_setuid', category: 'syscalls', name: 'sys_enter_setuid', optional: true },
    { program: 'pp_sec_setgid', category: 'syscalls', name: 'sys_enter_setgid', optional: true },
    { program: 'pp_sec_ptrace', category: 'syscalls', name: 'sys_enter_ptrace', optional: true },
    { program: 'pp_sec_init_module', category: 'syscalls', name: 'sys_enter_init_module', optional: true },
    { program: 'pp_sec_finit_module', category: 'syscalls', name: 'sys_enter_finit_module', optional: true },
    { program: 'pp_sec_bpf', category: 'syscalls', name: 'sys_enter_bpf', optional: true },
    { program: 'pp_sec_mount', category: 'syscalls', name: 'sys_enter_mount', optional: true },
    { program: 'pp_sec_sock_state', category: 'sock', name: 'inet_sock_set_state' },
  ],
};

/** The kernel's kind number of each trace kind (enum pp_event_kind). */
const kindBit: Readonly<Record<TraceKind, number>> = { syscall: 1 << eventKinds.syscall, network: 1 << eventKinds.tcp, security: 1 << eventKinds.security };

/** struct watched_path in bpf/events.bpf.c. */
const watchPrefixMax = 64;
const watchPathsMax = 16;

const lostReasons = ['ring_buffer_full', 'rate_limited', 'subscriber_slow', 'undecodable'] as const;
type LostReason = (typeof lostReasons)[number];

const families = {
  events: {
    name: 'probepilot_events_total',
    help: 'Traced events read from the kernel\'s ring buffer, by kind (syscall, network, security); only while someone traces (security: while security.enabled).',
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
  private kernelScope = new Map<bigint, number>();
  private refreshTimer: NodeJS.Timeout | undefined;
  private readonly read: Record<TraceKind, number> = { syscall: 0, network: 0, security: 0 };
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
  subscribe(filter: TraceFilter, listener: TraceListener, fail: TraceFailure): Promise<() => Promise<void>> {
    return this.changes.run(async () => {
      const { maxSubscribers } = this.deps.config.events;
      if (this.subscribers.size >= maxSubscribers) {
        throw new TraceRefusedError(`${maxSubscribers} traces are open already (events.maxSubscribers); close one first`, 'limit');
      }
      const subscriber: Subscriber = { filter, listener, fail, ...this.syscallNumbersOf(filter) };
      this.subscribers.add(subscriber);
      try {
        await this.apply();
      } catch (err) {
        this.subscribers.delete(subscriber);
        await this.apply().catch(() => undefined);
        throw err instanceof TraceRefusedError ? err : new TraceRefusedError(`cannot trace ${filter.kind}: ${describeError(err)}`, 'unavailable');
      }
      this.log.info({ kind: filter.kind, namespace: filter.namespace ?? null, pod: filter.pod ?? null, syscalls: filter.syscalls ?? null, kinds: filter.kinds ?? null, subscribers: this.subscribers.size }, 'trace started');
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
    this.writeScope(object);
    this.writeSyscalls(object);
    for (const kind of Object.keys(attachPoints) as TraceKind[]) {
      const wanted = this.subscribersOf(kind).length > 0;
      const attached = this.attachments.get(kind);
      if (wanted && !attached) this.attach(object, kind);
      if (!wanted && attached) await this.detach(object, kind);
    }
    // Scoped security events follow pods as they come and go.
    const filtered =
      [...this.subscribers].some((s) => s.filter.namespace !== undefined || s.filter.pod !== undefined) ||
      (this.subscribersOf('security').length > 0 && securityScoped(this.deps.config.security));
    if (filtered && !this.refreshTimer) {
      this.refreshTimer = setInterval(() => {
        this.changes
          .run(async () => {
            if (!this.object) return;
            this.writeCgroups(this.object);
            this.writeScope(this.object);
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
      writeWatchedPaths(object, this.deps.config.security);
      writeDecodeClasses(object, currentSyscallArch());
      this.reader = object.openRingBuffer('events', (err, batch) => this.onBatch(err, batch));
    } catch (err) {
      object.close();
      throw new TraceRefusedError(`cannot load events.bpf.o: ${describeError(err)}`, 'unavailable');
    }
    this.object = object;
    this.kernelCgroups = new Map();
    this.kernelSyscalls = new Set();
    this.kernelScope = new Map();
    return object;
  }

  private attach(object: BpfObject, kind: TraceKind): void {
    const ids: number[] = [];
    try {
      for (const point of attachPoints[kind]) {
        try {
          ids.push(object.attachTracepoint(point.program, point.category, point.name));
        } catch (err) {
          if (!point.optional) throw err;
          this.log.warn({ kind, tracepoint: `${point.category}:${point.name}`, reason: describeError(err) }, 'tracepoint unavailable; its events are off');
        }
      }
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
    const value = Buffer.alloc(32);
    value.writeUInt32LE(this.cgroupFilteredKinds(), 0);
    value.writeUInt32LE(syscallSubscribers.length > 0 && syscallSubscribers.every((s) => s.syscallNrs) ? 1 : 0, 4);
    value.writeBigUInt64LE(BigInt(costNs), 8);
    value.writeBigUInt64LE(BigInt(costNs) * BigInt(burst), 16);
    value.writeUInt32LE(this.securityOpsWanted(), 24);
    value.writeUInt32LE(securityScoped(this.deps.config.security) ? 1 : 0, 28);
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
    syncCgroupMap(object, 'trace_cgroups', this.kernelCgroups, wanted);
    this.kernelCgroups = wanted;
  }

  /** Bit (1 << op) of every security op some security subscriber wants: the others are not even reserved in the kernel. */
  private securityOpsWanted(): number {
    let ops = 0;
    for (const subscriber of this.subscribersOf('security')) {
      const wanted = subscriber.filter.kinds ?? Object.values(securityOps);
      for (const [nr, op] of Object.entries(securityOps)) if (wanted.includes(op)) ops |= 1 << Number(nr);
    }
    return ops >>> 0;
  }

  /** security_scope: the verdicts of security.namespaces, security.cgroups and security.nodeProcesses for the cgroups known now. */
  private writeScope(object: BpfObject): void {
    const { security } = this.deps.config;
    if (!securityScoped(security)) return;
    this.deps.identity.cgroups.refresh();
    const wanted = securityScope(security, this.deps.identity);
    syncCgroupMap(object, 'security_scope', this.kernelScope, wanted);
    const changed = wanted.size !== this.kernelScope.size || [...wanted].some(([id, verdict]) => this.kernelScope.get(id) !== verdict);
    this.kernelScope = wanted;
    if (changed) {
      const verdicts = [...wanted.values()];
      this.log.info({ cgroups: wanted.size, included: verdicts.filter((v) => v === 1).length, excluded: verdicts.filter((v) => v === 2).length }, 'security scope updated');
    }
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
      this.log.error({ err: describeError(err) }, 'ring buffer reader stopped; open traces are ended');
      // A stream left open would wait for events that never come; its end unloads the programs, and the next trace loads them afresh.
      const failure = new Error(`the trace stopped: the ring buffer reader failed (${describeError(err)})`);
      for (const subscriber of this.subscribers) {
        try {
          subscriber.fail(failure);
        } catch (failErr) {
          this.log.warn({ kind: subscriber.filter.kind, err: describeError(failErr) }, 'a trace subscriber failed to end');
        }
      }
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
          if (!subscriber.listener(event, record.cgroupId)) this.lost.subscriber_slow++;
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
    if (record.kind === 'security' && subscriber.filter.kinds && !subscriber.filter.kinds.includes(record.op)) return false;
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
      const syscall = this.syscallNames.get(record.nr) ?? `syscall_${record.nr}`;
      const decodedArgs = formatSyscallArgs(syscall, record.args, record.decoded);
      return {
        type: 'syscall',
        ...base,
        tid: record.tid,
        syscall,
        nr: record.nr,
        ret: Number(record.ret),
        durationSeconds: Number(record.durationNs) / 1e9,
        args: record.args.map((arg) => `0x${arg.toString(16)}`),
        ...(decodedArgs ? { decodedArgs } : {}),
      };
    }
    if (record.kind === 'security') {
      const exited = record.op === 'exit';
      const status = Number(record.arg);
      const event: SecurityTraceEvent = {
        type: 'security',
        ...base,
        kind: record.op,
        uid: record.uid,
        euid: record.euid,
        ppid: record.ppid,
        parentComm: record.parentComm,
        ...(record.path ? { path: record.path } : {}),
        ...(record.args.length ? { args: record.args } : {}),
        // wait(2): a signal's number in the low 7 bits, else the code above them; shells report 128 + signal.
        ...(exited ? { exitCode: status & 0x7f ? 128 + (status & 0x7f) : (status >> 8) & 0xff } : record.arg ? { arg: status } : {}),
        ...(record.family ? { family: record.family === 4 ? 'ipv4' : 'ipv6', address: record.address, port: record.port } : {}),
      };
      return event;
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
      subscribers: { syscall: this.subscribersOf('syscall').length, network: this.subscribersOf('network').length, security: this.subscribersOf('security').length },
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

/** The kernel's syscall_decode: the syscalls whose paths, sockaddr or argv sys_enter reads (none on an architecture without a table). */
function writeDecodeClasses(object: BpfObject, arch: SyscallArch | undefined): void {
  if (!arch) return;
  for (const { nr, decodeClass } of decodeClassEntries(arch)) {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(nr);
    object.update('syscall_decode', key, Buffer.from([decodeClass]));
  }
}

/** The kernel's watched_paths: a file operation elsewhere never leaves the kernel. */
function writeWatchedPaths(object: BpfObject, security: AgentConfig['security']): void {
  // The first matching prefix decides: sensitive files (read too) before the directories they are in.
  const entries = [...security.sensitivePaths.map((prefix) => ({ prefix, flags: 3 })), ...security.watchedPaths.map((prefix) => ({ prefix, flags: 1 }))];
  entries.slice(0, watchPathsMax).forEach(({ prefix, flags }, i) => {
    const value = Buffer.alloc(8 + watchPrefixMax);
    const bytes = Buffer.from(prefix, 'utf8').subarray(0, watchPrefixMax);
    value.writeUInt32LE(bytes.length, 0);
    value.writeUInt32LE(flags, 4);
    bytes.copy(value, 8);
    const key = Buffer.alloc(4);
    key.writeUInt32LE(i);
    object.update('watched_paths', key, value);
  });
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

/** Writes a cgroup id → u32 map so that it holds wanted, given that it holds current: only the difference. */
function syncCgroupMap(object: BpfObject, map: string, current: ReadonlyMap<bigint, number>, wanted: ReadonlyMap<bigint, number>): void {
  const value = Buffer.alloc(4);
  for (const [id, bits] of wanted) {
    if (current.get(id) === bits) continue;
    value.writeUInt32LE(bits);
    object.update(map, cgroupKey(id), value);
  }
  const stale = [...current.keys()].filter((id) => !wanted.has(id));
  if (stale.length) object.deleteKeys(map, Buffer.concat(stale.map(cgroupKey)));
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
