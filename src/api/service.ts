// The agent's operations, once, for every transport (REST and gRPC; the CLI
// through REST): status, the collectors' lifecycle, flows and workloads read
// from the same collections /metrics exports, and event streams (traces).
import { existsSync } from 'node:fs';
import os from 'node:os';
import type { Collection, CollectorManager, CollectorState } from '../collectors/manager.js';
import type { Identity } from '../identity/identity.js';
import type { Labels, ScalarSample } from '../metrics/model.js';
import { TimeSlicer } from '../metrics/slice.js';
import { agentVersion } from '../version.js';
import type { ConfigChange } from '../reload.js';
import { RateWindow, ratePerSecond, type RateBaseline } from './rate-window.js';
import { histogramDelta, histogramQuantile } from '../metrics/histogram.js';
import { EventPipeline } from '../events/pipeline.js';
import { securityOps, type SecurityOp } from '../events/records.js';
import { everything, visible, type Scope } from '../auth/principal.js';
import { agentEventTypes, eventTypes, traceKinds, type AgentEvents, type EventType, type StreamedEvent, type TraceKind } from './events.js';
import { NetworkCollector, type LiveFlow } from '../collectors/network.js';
import { tcpFlagNames } from '../collectors/network-decode.js';
import { formatIp, parseIp } from '../ip.js';

export interface ProgramStatus {
  name: string;
  /** Kernel program id, as bpftool shows it. */
  id: number;
  runCount: number;
  runTimeSeconds: number;
}

export interface CollectorStatus extends CollectorState {
  programs: ProgramStatus[];
  details?: Record<string, unknown>;
}

export interface AgentStatus {
  version: string;
  node: string;
  mode: Identity['mode'];
  kernel: string;
  btf: boolean;
  bpfStats: boolean;
  uptimeSeconds: number;
  collectors: CollectorStatus[];
  identity: Record<string, number>;
  /** Traces open now and the programs attached for them. */
  events: ReturnType<EventPipeline['describe']>;
}

/** The values a flows query takes, for every transport (REST schema, gRPC checks, CLI choices). */
export const flowViews = ['peer', 'protocol', '5tuple'] as const;
export const flowProtocols = ['tcp', 'udp', 'icmp', 'other'] as const;
export const flowDirections = ['ingress', 'egress'] as const;
export const flowSorts = ['bytes', 'packets'] as const;
export const flowLimit = { default: 20, max: 10000 } as const;

export type FlowView = (typeof flowViews)[number];

export interface FlowQuery {
  /** peer: the peer matrix (who talks to whom); protocol: traffic by protocol; 5tuple: the live flow table. */
  view: FlowView;
  namespace?: string;
  pod?: string;
  /** A peer's workload (or pod), namespace/name, or class (pod, host, node, world, a CIDR name); view=5tuple: the remote address, or its pod as namespace/name. */
  peer?: string;
  protocol?: (typeof flowProtocols)[number];
  direction?: (typeof flowDirections)[number];
  sort: (typeof flowSorts)[number];
  limit: number;
}

export interface FlowEntry {
  /** The workload's identity labels (namespace, pod, workload, workload_kind; or cgroup in standalone mode). */
  workload: Record<string, string>;
  direction: string;
  /** view=peer: peer_namespace, peer_workload (or peer_pod), peer_class. */
  peer?: Record<string, string>;
  /** view=protocol and view=5tuple. */
  protocol?: string;
  /** view=5tuple: the flow as the workload sees it; direction is who sent its first packet (egress: the workload). */
  tuple?: FlowTuple;
  bytes: number;
  packets: number;
  /** Over the interval since an earlier query at least a second ago; null for the first. */
  bytesPerSecond: number | null;
  packetsPerSecond: number | null;
}

/** One flow of the live table (view=5tuple). bytes and packets count both directions. */
export interface FlowTuple {
  family: 'ipv4' | 'ipv6';
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
  /** The pod at the remote address (namespace, pod, workload), when the identity knows one. */
  remotePod: Record<string, string>;
  bytesSent: number;
  bytesReceived: number;
  packetsSent: number;
  packetsReceived: number;
  /** TCP flags seen each way (syn, ack, fin, rst, …). */
  tcpFlagsSent: string[];
  tcpFlagsReceived: string[];
  firstSeen: string;
  lastSeen: string;
  /** Not idle, and (TCP) not ended by a reset or a FIN each way. */
  active: boolean;
}

export interface FlowsResult {
  view: FlowView;
  /** Matching flows before the limit. */
  total: number;
  /** The interval rates are over; null when there is no earlier snapshot yet. */
  intervalSeconds: number | null;
  flows: FlowEntry[];
}

/** The columns a workloads query can order by ("name" alphabetically, the others largest first). */
export const workloadSorts = ['rx', 'tx', 'rxPackets', 'txPackets', 'runqueue', 'syscalls', 'retransmits', 'gpu', 'name'] as const;
export type WorkloadSort = (typeof workloadSorts)[number];
export const workloadLimit = { default: 50, max: 10000 } as const;

export interface WorkloadQuery {
  namespace?: string;
  /** A pod name, or a cgroup path in standalone mode. */
  pod?: string;
  sort: WorkloadSort;
  limit: number;
}

export interface WorkloadEntry {
  /** The workload's identity labels (namespace, pod, workload, workload_kind; or cgroup in standalone mode). */
  workload: Record<string, string>;
  rxBytesPerSecond: number | null;
  txBytesPerSecond: number | null;
  rxPacketsPerSecond: number | null;
  txPacketsPerSecond: number | null;
  /** From the run-queue histogram's buckets filled during the interval (not since the agent started); null when nothing waited. */
  runqueueLatencyP99Seconds: number | null;
  syscallsPerSecond: number | null;
  tcpRetransmitsPerSecond: number | null;
  /** Share of a GPU's time the workload's processes kept its SMs busy, summed over GPUs (1 = one whole GPU); null without GPU processes. */
  gpuUtilization: number | null;
}

export interface WorkloadsResult {
  /** Matching workloads before the limit. */
  total: number;
  /** The interval rates are over; null when there is no earlier snapshot yet (rates and p99 are then null). */
  intervalSeconds: number | null;
  /** Collectors a column needs that are not running: their columns are null. */
  collectorsOff: string[];
  workloads: WorkloadEntry[];
}

/** The field a sort orders by. */
export const workloadSortFields: Record<Exclude<WorkloadSort, 'name'>, Exclude<keyof WorkloadEntry, 'workload'>> = {
  rx: 'rxBytesPerSecond',
  tx: 'txBytesPerSecond',
  rxPackets: 'rxPacketsPerSecond',
  txPackets: 'txPacketsPerSecond',
  runqueue: 'runqueueLatencyP99Seconds',
  syscalls: 'syscallsPerSecond',
  retransmits: 'tcpRetransmitsPerSecond',
  gpu: 'gpuUtilization',
};

/** A workload as people read it: namespace/pod, else the workload, or the cgroup path in standalone mode. */
export function workloadName(labels: Readonly<Record<string, string>>): string {
  if (labels.cgroup !== undefined) return labels.cgroup;
  return labels.pod ? `${labels.namespace}/${labels.pod}` : (labels.workload ?? '');
}

/** Orders workloads by a sort: largest first, workloads without a value last, ties by name. */
export function compareWorkloads(sort: WorkloadSort): (a: WorkloadEntry, b: WorkloadEntry) => number {
  const byName = (a: WorkloadEntry, b: WorkloadEntry) => workloadName(a.workload).localeCompare(workloadName(b.workload));
  if (sort === 'name') return byName;
  const field = workloadSortFields[sort];
  return (a, b) => (b[field] ?? -1) - (a[field] ?? -1) || byName(a, b);
}

/** The collectors a workloads query reads, and the families it takes from them. */
const workloadSources = {
  network: { bytes: 'probepilot_network_bytes_total', packets: 'probepilot_network_packets_total' },
  sched: { runqueue: 'probepilot_runqueue_latency_seconds' },
  syscalls: { calls: 'probepilot_syscalls_total' },
  tcp: { retransmits: 'probepilot_tcp_retransmits_total' },
  gpu: { utilization: 'probepilot_gpu_process_utilization_ratio' },
} as const;

/** A workload's counters at one query, summed over its containers, protocols, syscalls and GPUs. */
interface WorkloadReading {
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  syscalls: number;
  retransmits: number;
  /** Per-bucket run-queue counts; undefined while it has none. */
  runqueue: number[] | undefined;
}

/** The views answered from a collection's counters (5tuple reads the live table). */
type CountedView = Exclude<FlowView, '5tuple'>;

const families: Record<CountedView, { bytes: string; packets: string }> = {
  peer: { bytes: 'probepilot_network_flow_bytes_total', packets: 'probepilot_network_flow_packets_total' },
  protocol: { bytes: 'probepilot_network_bytes_total', packets: 'probepilot_network_packets_total' },
};

/** What an event stream delivers: the agent's own events of some types, and traces. */
export interface EventStreamRequest {
  /** Empty: the agent's own types (collector, interface, pod); trace kinds only when named. */
  types: EventType[];
  /** Traces only: a namespace, a pod (or cgroup path), syscall names. */
  namespace?: string;
  pod?: string;
  syscalls?: string[];
  /** The security trace only: these kinds of security events. */
  kinds?: SecurityOp[];
}

/** What the kinds filter of the security trace allows. */
export const securityKinds: readonly SecurityOp[] = Object.values(securityOps);

/** Printable text: names, paths and classes never contain control characters. REST checks it as this schema pattern, the rest with isPrintable. */
export const printablePattern = '^[^\\u0000-\\u001f\\u007f]+$';
const printableText = new RegExp(printablePattern);

/** 1 to maxLength characters, none of them a control character. */
export function isPrintable(value: string, maxLength = 4096): boolean {
  return value.length <= maxLength && printableText.test(value);
}

/** A stream request that cannot be served as asked: the message names the field and what it allows. */
export class EventStreamRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EventStreamRequestError';
  }
}

/** The same checks for every transport (REST query, gRPC request, CLI flags). */
export function eventStreamRequest(input: { types: readonly string[]; namespace?: string; pod?: string; syscalls: readonly string[]; kinds?: readonly string[] }): EventStreamRequest {
  const unknown = input.types.filter((t) => !(eventTypes as readonly string[]).includes(t));
  if (unknown.length) throw new EventStreamRequestError(`types: unknown ${unknown.join(', ')}; the types are ${eventTypes.join(', ')}`);
  const types = [...new Set(input.types)] as EventType[];
  const traced = types.some((t) => (traceKinds as readonly string[]).includes(t));
  for (const field of ['namespace', 'pod'] as const) {
    const value = input[field];
    if (value === undefined) continue;
    if (!traced) throw new EventStreamRequestError(`${field} filters traces: ask for types syscall, network or security too`);
    if (!isPrintable(value)) throw new EventStreamRequestError(`${field} must be printable text of 1 to 4096 characters`);
  }
  if (input.syscalls.length) {
    if (!types.includes('syscall')) throw new EventStreamRequestError('syscalls filters the syscall trace: ask for type syscall too');
    const choices = EventPipeline.syscallChoices();
    const bad = input.syscalls.filter((name) => !choices.includes(name));
    if (bad.length) throw new EventStreamRequestError(`syscalls: unknown ${bad.join(', ')}; the syscalls are ${choices.join(', ')}`);
  }
  const kinds = input.kinds ?? [];
  if (kinds.length) {
    if (!types.includes('security')) throw new EventStreamRequestError('kinds filters the security trace: ask for type security too');
    const bad = kinds.filter((kind) => !(securityKinds as readonly string[]).includes(kind));
    if (bad.length) throw new EventStreamRequestError(`kinds: unknown ${bad.join(', ')}; the kinds are ${securityKinds.join(', ')}`);
  }
  return {
    types,
    ...(input.namespace !== undefined ? { namespace: input.namespace } : {}),
    ...(input.pod !== undefined ? { pod: input.pod } : {}),
    ...(input.syscalls.length ? { syscalls: [...new Set(input.syscalls)] } : {}),
    ...(kinds.length ? { kinds: [...new Set(kinds)] as SecurityOp[] } : {}),
  };
}

/** One flow of a collection, split into the parts a FlowEntry shows; built once per collection and view. */
interface CollectedFlow {
  key: string;
  labels: Labels;
  workload: Record<string, string>;
  peer: Record<string, string>;
  bytes: number;
  packets: number;
}

/** The answers of one collection for one view against one baseline: every flow with its rates, serialized, and sorted each way. */
interface ViewAnswers {
  /** When the baseline the rates are over was read; undefined when there was none. */
  baselineAt: number | undefined;
  interval: number | null;
  flows: Array<{ flow: CollectedFlow; entry: FlowEntry }>;
  sorted: Partial<Record<FlowQuery['sort'], Array<{ flow: CollectedFlow; entry: FlowEntry }>>>;
}

/** A flow view's counters, by flow key. */
type FlowCounters = Map<string, { bytes: number; packets: number }>;

interface CollectedView {
  flows: CollectedFlow[];
  /** The collection's counters, and when it read them. */
  snapshot: { at: number; values: FlowCounters };
  /** Built once per baseline, and shared by the queries (and the warm-up) that find it while it is being built. */
  answers: { baselineAt: number | undefined; built: Promise<ViewAnswers> } | undefined;
}

/** The answers sorted by one counter, descending; sorted once per answers. */
function sortedFlows(answers: ViewAnswers, sort: FlowQuery['sort']): ViewAnswers['flows'] {
  return (answers.sorted[sort] ??= [...answers.flows].sort((a, b) => b.entry[sort] - a.entry[sort]));
}

/** Flow entries as JSON, written once per collection: a query of 10,000 flows joins strings instead of serializing objects. */
const serializedFlows = new WeakMap<FlowEntry, string>();

/** A flow entry as JSON (JSON.stringify's text), from the cache when the entry came from flows(). */
export function flowJson(entry: FlowEntry): string {
  return serializedFlows.get(entry) ?? JSON.stringify(entry);
}

export interface AgentServiceDeps {
  events: AgentEvents;
  pipeline: EventPipeline;
  manager: CollectorManager;
  identity: Identity;
  nodeName: string;
  bpfStats: boolean;
  /** Reads and applies the configuration again; throws ConfigError for an invalid one. */
  reload: () => Promise<ConfigChange>;
  /** How old a collection queries may answer from (collectionMaxAgeSeconds). */
  collectionMaxAgeMs: number;
  /** Whether queries start the next collection ahead (collectionAhead). */
  collectionAhead: boolean;
}

function eventVisible(event: StreamedEvent, scope: Scope): boolean {
  switch (event.type) {
    case 'collector':
      return true;
    case 'pod':
      return visible({ namespace: event.namespace, pod: event.pod }, scope);
    case 'interface':
      return event.workload === null;
    default:
      return visible(event.workload, scope);
  }
}

/** Labels of a sample as a key: one family's samples carry the same label names in the same order. */
function keyOf(labels: Labels): string {
  return Object.values(labels).join('\0');
}

export class AgentService {
  /** Per view: the flows' counters at recent queries. */
  private readonly flowReadings = new Map<FlowView, RateWindow<FlowCounters>>();
  /** Every workload's counters at recent queries, and when each collector was read. */
  private readonly workloadReadings = new RateWindow<{ readAt: Partial<Record<keyof typeof workloadSources, number>>; rows: Map<string, WorkloadReading> }>();
  /** Flows per view of the collections queries answered from lately (dropped with their collection). */
  private readonly collectedViews = new WeakMap<Collection, Map<CountedView, Promise<CollectedView>>>();

  constructor(private readonly deps: AgentServiceDeps) {}

  reloadConfig(): Promise<ConfigChange> {
    return this.deps.reload();
  }

  collectorNames(): string[] {
    return this.deps.manager.states().map((s) => s.name);
  }

  /** A tenant (a scope with namespaces) gets no collector details: they name interfaces' workloads. */
  status(scope: Scope = everything): AgentStatus {
    const { manager, identity } = this.deps;
    return {
      version: agentVersion,
      node: this.deps.nodeName,
      mode: identity.mode,
      kernel: os.release(),
      btf: existsSync('/sys/kernel/btf/vmlinux'),
      bpfStats: this.deps.bpfStats,
      uptimeSeconds: Math.round(process.uptime()),
      collectors: this.collectors(scope),
      identity: identity.describe(),
      events: this.deps.pipeline.describe(),
    };
  }

  /**
   * Starts delivering the events a request asks for to listener (false: the
   * transport could not take it); resolves with the function that ends the
   * stream. A trace that cannot be opened rejects with TraceRefusedError; one
   * that stops later calls fail (maybe before this resolves, maybe once per kind).
   */
  async openEventStream(
    request: EventStreamRequest,
    deliver: (event: StreamedEvent) => boolean,
    fail: (err: Error) => void,
    scope: Scope = everything,
  ): Promise<() => Promise<void>> {
    // A tenant's stream carries its namespaces' events only: traces and pods by their labels, interfaces only when they are no pod's.
    const listener = scope.namespaces ? (event: StreamedEvent): boolean => (eventVisible(event, scope) ? deliver(event) : true) : deliver;
    const agentTypes = new Set<string>(request.types.length ? request.types.filter((t) => (agentEventTypes as readonly string[]).includes(t)) : agentEventTypes);
    const kinds = request.types.filter((t): t is TraceKind => (traceKinds as readonly string[]).includes(t));
    const ends: Array<() => Promise<void>> = [];
    try {
      for (const kind of kinds) {
        const filter = {
          kind,
          ...(request.namespace !== undefined ? { namespace: request.namespace } : {}),
          ...(request.pod !== undefined ? { pod: request.pod } : {}),
          ...(kind === 'syscall' && request.syscalls ? { syscalls: request.syscalls } : {}),
          ...(kind === 'security' && request.kinds ? { kinds: request.kinds } : {}),
        };
        ends.push(await this.deps.pipeline.subscribe(filter, listener, fail));
      }
    } catch (err) {
      await Promise.all(ends.map((end) => end()));
      throw err;
    }
    const unsubscribe = agentTypes.size
      ? this.deps.events.subscribe((event) => {
          if (agentTypes.has(event.type)) listener(event);
        })
      : () => undefined;
    return async () => {
      unsubscribe();
      await Promise.all(ends.map((end) => end()));
    };
  }

  collectors(scope: Scope = everything): CollectorStatus[] {
    return this.deps.manager.states().map((state) => {
      const status = this.collectorStatus(state);
      if (!scope.namespaces) return status;
      const { details: _details, ...rest } = status;
      return rest;
    });
  }

  /** Throws UnknownCollectorError for a name the agent has no collector for. */
  async setCollectorEnabled(name: string, enabled: boolean): Promise<CollectorStatus> {
    return this.collectorStatus(await this.deps.manager.setEnabled(name, enabled));
  }

  private collectorStatus(state: CollectorState): CollectorStatus {
    const collector = state.up ? this.deps.manager.collector(state.name) : undefined;
    const programs = (collector?.programs() ?? []).map((p) => ({ name: p.name, id: p.id, runCount: p.runCount, runTimeSeconds: p.runTimeNs / 1e9 }));
    const details = collector?.describe?.();
    return { ...state, programs, ...(details ? { details } : {}) };
  }

  async flows(query: FlowQuery, scope: Scope = everything): Promise<FlowsResult> {
    if (query.view === '5tuple') return this.liveFlows(query, scope);
    const counted: CountedView = query.view;
    // The network collector's families are all flows read; the other collectors' maps are not.
    // A collection started ahead gets its answers built before the queries that will read it arrive.
    const collection = await this.deps.manager.recentCollection('network', this.deps.collectionMaxAgeMs, (fresh) => {
      this.flowAnswers(fresh, counted).then(
        (answers) => {
          for (const sort of flowSorts) sortedFlows(answers, sort);
        },
        // Not lost: the queries that read this collection share the same answers, and so meet the error themselves.
        () => undefined,
      );
    }, this.deps.collectionAhead);
    if (!collection) return { view: query.view, total: 0, intervalSeconds: null, flows: [] };
    const answers = await this.flowAnswers(collection, counted);
    const sorted = sortedFlows(answers, query.sort);
    const flows: FlowEntry[] = [];
    let total = 0;
    for (const { flow, entry } of sorted) {
      if (!this.matches(flow.labels, query) || !visible(flow.labels, scope)) continue;
      if (total++ < query.limit) flows.push(entry);
    }
    return { view: query.view, total, intervalSeconds: answers.interval, flows };
  }

  /** The kernel's flow table as it is now: no rates (entries come and go between queries). */
  private async liveFlows(query: FlowQuery, scope: Scope): Promise<FlowsResult> {
    const network = this.deps.manager.collector('network');
    const table: LiveFlow[] = network instanceof NetworkCollector ? await network.flowTable() : [];
    const pods = new Map<string, Record<string, string>>();
    for (const [text, pod] of this.deps.identity.peers().pods) {
      const ip = parseIp(text);
      if (ip) pods.set(formatIp(ip.family, ip.bytes), { namespace: pod.namespace, pod: pod.pod, workload: pod.workload });
    }
    const entries: FlowEntry[] = [];
    for (const { labels, entry, firstSeen, lastSeen, active } of table) {
      const protocol = entry.ipProtocol === 6 ? 'tcp' : entry.ipProtocol === 17 ? 'udp' : entry.ipProtocol === 1 || entry.ipProtocol === 58 ? 'icmp' : 'other';
      const remoteAddress = formatIp(entry.family, entry.remoteAddress);
      const peer = pods.get(remoteAddress);
      // A tenant's own connection stays listed; another tenant's pod behind its remote address is not named.
      const remotePod = peer && visible(peer, scope) ? peer : {};
      if (!this.matchesWorkload(labels, query) || !visible(labels, scope)) continue;
      if (query.direction !== undefined && entry.openedBy !== query.direction) continue;
      if (query.protocol !== undefined && protocol !== query.protocol) continue;
      if (query.peer !== undefined && query.peer !== remoteAddress && query.peer !== `${remotePod.namespace}/${remotePod.pod}`) continue;
      entries.push({
        workload: labels,
        direction: entry.openedBy,
        protocol,
        tuple: {
          family: entry.family === 4 ? 'ipv4' : 'ipv6',
          localAddress: formatIp(entry.family, entry.localAddress),
          localPort: entry.localPort,
          remoteAddress,
          remotePort: entry.remotePort,
          remotePod,
          bytesSent: entry.bytes.egress,
          bytesReceived: entry.bytes.ingress,
          packetsSent: entry.packets.egress,
          packetsReceived: entry.packets.ingress,
          tcpFlagsSent: tcpFlagNames(entry.tcpFlags.egress),
          tcpFlagsReceived: tcpFlagNames(entry.tcpFlags.ingress),
          firstSeen: new Date(firstSeen).toISOString(),
          lastSeen: new Date(lastSeen).toISOString(),
          active,
        },
        bytes: entry.bytes.egress + entry.bytes.ingress,
        packets: entry.packets.egress + entry.packets.ingress,
        bytesPerSecond: null,
        packetsPerSecond: null,
      });
    }
    entries.sort((a, b) => b[query.sort] - a[query.sort]);
    return { view: query.view, total: entries.length, intervalSeconds: null, flows: entries.slice(0, query.limit) };
  }

  /** A collection's answers for one view, against the baseline its time finds: the queries of one collection share them. */
  private async flowAnswers(collection: Collection, flowView: CountedView): Promise<ViewAnswers> {
    const view = await this.collectedView(collection, flowView);
    let readings = this.flowReadings.get(flowView);
    if (!readings) this.flowReadings.set(flowView, (readings = new RateWindow()));
    const baseline = readings.advance(view.snapshot.at, view.snapshot.values);
    if (!view.answers || view.answers.baselineAt !== baseline?.at) view.answers = { baselineAt: baseline?.at, built: this.answers(view, flowView, baseline) };
    return view.answers.built;
  }

  private async answers(view: CollectedView, flowView: FlowView, baseline: RateBaseline<FlowCounters> | undefined): Promise<ViewAnswers> {
    const interval = baseline?.intervalSeconds ?? null;
    const rate = (now: number, then: number | undefined) => (interval ? ratePerSecond(now, then, interval) : null);
    const slicer = new TimeSlicer();
    const flows: ViewAnswers['flows'] = [];
    for (const flow of view.flows) {
      if (slicer.due()) await slicer.yield();
      const { labels, workload, peer, bytes, packets } = flow;
      const before = baseline?.values.get(flow.key);
      const entry: FlowEntry = {
        workload,
        direction: labels.direction ?? '',
        ...(flowView === 'peer' ? { peer } : { protocol: labels.protocol ?? '' }),
        bytes,
        packets,
        bytesPerSecond: rate(bytes, before?.bytes),
        packetsPerSecond: rate(packets, before?.packets),
      };
      serializedFlows.set(entry, JSON.stringify(entry));
      flows.push({ flow, entry });
    }
    return { baselineAt: baseline?.at, interval, flows, sorted: {} };
  }

  /** The flows of a view in a collection, built by the first query that reads them; the others share them. */
  private collectedView(collection: Collection, view: CountedView): Promise<CollectedView> {
    let views = this.collectedViews.get(collection);
    if (!views) this.collectedViews.set(collection, (views = new Map()));
    let built = views.get(view);
    if (!built) views.set(view, (built = this.buildView(collection, view)));
    return built;
  }

  private async buildView(collection: Collection, view: CountedView): Promise<CollectedView> {
    const names = families[view];
    const samples = (name: string): ScalarSample[] => {
      const family = collection.families.find((f) => f.name === name);
      return family && family.type !== 'histogram' ? family.samples : [];
    };
    const identityNames = new Set(this.deps.identity.labelNames('pod'));
    identityNames.add('cgroup');
    const slicer = new TimeSlicer();
    const byKey = new Map<string, CollectedFlow>();
    for (const [field, name] of [['bytes', names.bytes], ['packets', names.packets]] as const) {
      for (const sample of samples(name)) {
        if (slicer.due()) await slicer.yield();
        const key = keyOf(sample.labels);
        let flow = byKey.get(key);
        if (!flow) {
          const workload: Record<string, string> = {};
          const peer: Record<string, string> = {};
          for (const [label, value] of Object.entries(sample.labels)) {
            if (identityNames.has(label)) workload[label] = value;
            else if (label.startsWith('peer_')) peer[label] = value;
          }
          flow = { key, labels: sample.labels, workload, peer, bytes: 0, packets: 0 };
          byKey.set(key, flow);
        }
        flow[field] += sample.value;
      }
    }
    const flows = [...byKey.values()];
    return { flows, snapshot: { at: collection.at, values: new Map(flows.map((f) => [f.key, { bytes: f.bytes, packets: f.packets }])) }, answers: undefined };
  }

  /**
   * Per workload: network rates, run-queue p99, syscall and retransmit rates
   * over the interval since an earlier query, and GPU utilization now; each
   * from its collector alone, a collector not running leaving its columns null.
   */
  async workloads(query: WorkloadQuery, scope: Scope = everything): Promise<WorkloadsResult> {
    const { manager, identity } = this.deps;
    const running = new Set(manager.states().filter((s) => s.up).map((s) => s.name));
    const sources = Object.keys(workloadSources) as Array<keyof typeof workloadSources>;
    // Collections take tens of milliseconds, some more than others: each collector's rates are over the time between its own reads.
    const readAt: Partial<Record<keyof typeof workloadSources, number>> = {};
    const collected = await Promise.all(
      sources.map(async (name) => {
        const collection = running.has(name) ? await manager.recentCollection(name, this.deps.collectionMaxAgeMs, undefined, this.deps.collectionAhead) : undefined;
        if (!collection) return [];
        readAt[name] = collection.at;
        return collection.families;
      }),
    );
    // The newest collection read, not the query's own time: queries answered from the same collections find the same baseline.
    const readTimes = Object.values(readAt);
    const at = readTimes.length ? Math.max(...readTimes) : Date.now();
    const byName = new Map(collected.flat().map((f) => [f.name, f]));
    const scalars = (name: string): ScalarSample[] => {
      const family = byName.get(name);
      return family && family.type !== 'histogram' ? family.samples : [];
    };
    const identityNames = identity.labelNames('pod');
    const rows = new Map<string, { workload: Record<string, string>; reading: WorkloadReading; gpu: number | null }>();
    const rowOf = (labels: Readonly<Record<string, string>>) => {
      const workload: Record<string, string> = {};
      for (const name of identityNames) if (labels[name] !== undefined) workload[name] = labels[name];
      const key = keyOf(workload);
      let row = rows.get(key);
      if (!row) {
        row = { workload, reading: { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0, syscalls: 0, retransmits: 0, runqueue: undefined }, gpu: null };
        rows.set(key, row);
      }
      return row;
    };
    for (const [field, direction, name] of [
      ['rxBytes', 'ingress', workloadSources.network.bytes],
      ['txBytes', 'egress', workloadSources.network.bytes],
      ['rxPackets', 'ingress', workloadSources.network.packets],
      ['txPackets', 'egress', workloadSources.network.packets],
    ] as const) {
      for (const sample of scalars(name)) if (sample.labels.direction === direction) rowOf(sample.labels).reading[field] += sample.value;
    }
    for (const sample of scalars(workloadSources.syscalls.calls)) rowOf(sample.labels).reading.syscalls += sample.value;
    for (const sample of scalars(workloadSources.tcp.retransmits)) rowOf(sample.labels).reading.retransmits += sample.value;
    let runqueueBounds: readonly number[] = [];
    const runqueue = byName.get(workloadSources.sched.runqueue);
    for (const sample of runqueue?.type === 'histogram' ? runqueue.samples : []) {
      runqueueBounds = sample.bounds;
      const { reading } = rowOf(sample.labels);
      reading.runqueue = reading.runqueue ? reading.runqueue.map((n, i) => n + (sample.counts[i] ?? 0)) : [...sample.counts];
    }
    for (const sample of scalars(workloadSources.gpu.utilization)) {
      const row = rowOf(sample.labels);
      row.gpu = (row.gpu ?? 0) + sample.value;
    }

    const baseline = this.workloadReadings.advance(at, { readAt, rows: new Map([...rows].map(([key, row]) => [key, row.reading])) });
    const interval = baseline?.intervalSeconds ?? null;
    /** Seconds between this collector's two reads; null when it did not run at both (no rates from it yet). */
    const intervalOf = (name: keyof typeof workloadSources): number | null => {
      const [then, now] = [baseline?.values.readAt[name], readAt[name]];
      return then !== undefined && now !== undefined && now > then ? (now - then) / 1000 : null;
    };
    const workloads: WorkloadEntry[] = [];
    for (const [key, { workload, reading, gpu }] of rows) {
      if (!this.matchesWorkload(workload, query) || !visible(workload, scope)) continue;
      const before = baseline?.values.rows.get(key);
      const rate = (collector: keyof typeof workloadSources, field: Exclude<keyof WorkloadReading, 'runqueue'>) => {
        const seconds = intervalOf(collector);
        return seconds === null ? null : ratePerSecond(reading[field], before?.[field], seconds);
      };
      workloads.push({
        workload,
        rxBytesPerSecond: rate('network', 'rxBytes'),
        txBytesPerSecond: rate('network', 'txBytes'),
        rxPacketsPerSecond: rate('network', 'rxPackets'),
        txPacketsPerSecond: rate('network', 'txPackets'),
        runqueueLatencyP99Seconds: intervalOf('sched') !== null && reading.runqueue ? histogramQuantile(0.99, runqueueBounds, histogramDelta(reading.runqueue, before?.runqueue)) : null,
        syscallsPerSecond: rate('syscalls', 'syscalls'),
        tcpRetransmitsPerSecond: rate('tcp', 'retransmits'),
        gpuUtilization: running.has('gpu') ? gpu : null,
      });
    }
    workloads.sort(compareWorkloads(query.sort));
    return {
      total: workloads.length,
      intervalSeconds: interval,
      collectorsOff: sources.filter((name) => !running.has(name)),
      workloads: workloads.slice(0, query.limit),
    };
  }

  private matchesWorkload(labels: Readonly<Record<string, string>>, query: { namespace?: string; pod?: string }): boolean {
    if (query.namespace !== undefined && labels.namespace !== query.namespace) return false;
    if (query.pod !== undefined && labels.pod !== query.pod && labels.cgroup !== query.pod) return false;
    return true;
  }

  private matches(labels: Record<string, string>, query: FlowQuery): boolean {
    if (!this.matchesWorkload(labels, query)) return false;
    if (query.direction !== undefined && labels.direction !== query.direction) return false;
    if (query.protocol !== undefined && labels.protocol !== query.protocol) return false;
    if (query.peer !== undefined) {
      const peerName = labels.peer_workload ?? labels.peer_pod ?? '';
      const candidates = [peerName, labels.peer_class, `${labels.peer_namespace ?? ''}/${peerName}`];
      if (!candidates.includes(query.peer)) return false;
    }
    return true;
  }
}
