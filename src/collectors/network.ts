// TC network collector: attaches bpf/net.bpf.c to the node's interfaces (and
// to new ones as they appear), and turns its per-CPU traffic map into bytes
// and packets per workload, direction and protocol; keeps the live 5-tuple
// flow table (active flows per workload, idle expiry, SYN/FIN/RST counts).
import path from 'node:path';
import { bpfObjectDir, type BpfObject, type LinkInfo, type MapDump, type ProgramInfo, type TcAttachment, type TcAttachMode, type TcDirection } from '../bpf/addon.js';
import { attributionOf, detachInterface, logAttachFailure, tcDirections, TcAttachModes, workloadBehind, workloadChanges, type PeerWorkload } from './tc-interfaces.js';
import { ppStatSlots, readPpStat, selectKeys } from '../bpf/maps.js';
import { describeError } from '../errors.js';
import { globMatcher } from '../glob.js';
import { rootCgroup } from '../identity/cgroups.js';
import { counterFamily, type FamilyDescriptor, type Labels, type MetricFamily, type ScalarSample } from '../metrics/model.js';
import { CounterSeries, type RetiredTotals, type SavedFold } from '../metrics/series.js';
import { mapSliced, TimeSlicer } from '../metrics/slice.js';
import { ObjectPins, type MapPinOutcome, type PinnedMaps } from '../bpf/pins.js';
import { withCapabilityHint, type Capability } from '../system/capabilities.js';

import { CollectorUnavailableError, type Collector, type CollectorContext, type CollectorHealth, type StopOptions } from './collector.js';
import { SerialQueue } from './serial.js';
import type { AgentConfig } from '../config.js';
import {
  Attribution,
  connDecoder,
  connFinished,
  decodeFlows,
  tcpFlagDecoder,
  type ConnEntry,
  type TcpFlagEntry,
  decodeTraffic,
  encodeIfaceConfig,
  encodeIfindex,
  flowDecoder,
  trafficDecoder,
  l3OffsetFor,
  type AttributionKind,
  type FlowEntry,
  type TrafficEntry,
} from './network-decode.js';
import { PeerDirectory, peerLabelNames } from './network-peers.js';
import { removeClsactIfEmpty } from '../cleanup.js';

/** Loading BPF and attaching TC programs. */
const tcCapabilities: readonly Capability[] = ['CAP_BPF', 'CAP_NET_ADMIN'];

/** Pin name of an interface's TCX link: the index alone could be reused by a new interface. */
function linkPinName(link: Pick<LinkInfo, 'name' | 'ifindex'>, direction: TcDirection): string {
  return `${link.name}-${link.ifindex}-${direction}`;
}

/** What the traffic, flow and TCP flag maps have in common. */
type CountedEntry = Pick<TrafficEntry, 'index' | 'cgroupId' | 'ifindex'>;

const countedValues = (entry: Pick<TrafficEntry, 'bytes' | 'packets'>): number[] => [entry.bytes, entry.packets];
const segmentValues = (entry: TcpFlagEntry): number[] => [entry.segments];

/** One flow of the 5-tuple table as the API shows it. */
export interface LiveFlow {
  /** The workload's identity labels. */
  labels: Labels;
  entry: ConnEntry;
  /** Wall-clock ms. */
  firstSeen: number;
  lastSeen: number;
  /** Not idle, and (TCP) not finished by a reset or a FIN each way. */
  active: boolean;
}

const programFor: Record<TcDirection, string> = { ingress: 'pp_net_ingress', egress: 'pp_net_egress' };

/** The state file: retired totals by map, and the clsact qdiscs this agent created (for --cleanup). */
export interface NetworkState {
  retired: Record<string, RetiredTotals[]>;
  /** By map name; absent in state files of earlier versions. */
  folds?: Record<string, SavedFold[]>;
  createdQdiscs: Array<{ ifindex: number; name: string }>;
}

interface AttachedInterface extends PeerWorkload {
  ifindex: number;
  name: string;
  attachments: TcAttachment[];
}

export class NetworkCollector implements Collector {
  readonly name = 'network';
  readonly families: readonly FamilyDescriptor[];
  private readonly bytesFamily: FamilyDescriptor;
  private readonly packetsFamily: FamilyDescriptor;
  private readonly flowBytesFamily: FamilyDescriptor;
  private readonly flowPacketsFamily: FamilyDescriptor;
  private readonly activeFlowsFamily: FamilyDescriptor;
  private readonly tcpSegmentsFamily: FamilyDescriptor;
  private readonly podsTrackedFamily: FamilyDescriptor = {
    name: 'probepilot_pods_tracked',
    help: 'Workloads (pods) the network collector attributes traffic to: those behind the veths it is attached to.',
    type: 'gauge',
    labelNames: [],
  };
  private readonly interfacesFamily: FamilyDescriptor = {
    name: 'probepilot_network_interfaces_attached',
    help: 'Interfaces the network collector is attached to, by attach mode.',
    type: 'gauge',
    labelNames: ['mode'],
  };

  private object: BpfObject | undefined;
  private readonly interfaces = new Map<number, AttachedInterface>();
  private wanted: (name: string) => boolean;
  /** The configuration this instance runs with (a reload may change its interface patterns). */
  private section: AgentConfig['collectors']['network'];
  private readonly totals: CounterSeries;
  /** The peer matrix, when enabled. */
  private readonly flows: CounterSeries | undefined;
  private readonly peers: PeerDirectory | undefined;
  /** SYN/FIN/RST segments, when the flow table is on. */
  private readonly segments: CounterSeries | undefined;
  private readonly cpus: number;
  private readonly modes: TcAttachModes;
  private attachFailures = 0;
  private lastAttachError = '';
  private timer: NodeJS.Timeout | undefined;
  /** undefined when pins are off. */
  private readonly pins: ObjectPins | undefined;
  /** Kernel ids of our (pinned) maps: a clsact filter whose program uses one is ours, left by an earlier run. */
  private ownMapIds = new Set<number>();
  /** clsact qdiscs created by this agent or an earlier run, by ifindex (the name guards against a reused index). */
  private readonly createdQdiscs = new Map<number, string>();
  private readonly queue = new SerialQueue();
  private lastHealth: CollectorHealth = { eventsDropped: { map_full: 0 } };
  private readonly log;

  constructor(private readonly ctx: CollectorContext) {
    const labelNames = [...ctx.identity.labelNames('pod'), 'direction', 'protocol'];
    this.bytesFamily = {
      name: 'probepilot_network_bytes_total',
      help: 'Bytes sent (egress) and received (ingress) by a workload, by L4 protocol, counted at TC including the L2 header.',
      type: 'counter',
      labelNames,
    };
    this.packetsFamily = {
      name: 'probepilot_network_packets_total',
      help: 'Packets sent (egress) and received (ingress) by a workload, by L4 protocol (GSO super-packets count once, as in interface statistics).',
      type: 'counter',
      labelNames,
    };
    const { interfaces, flows, flowTable } = ctx.config.collectors.network;
    const flowLabelNames = [...ctx.identity.labelNames('pod'), 'direction', ...peerLabelNames(flows.peerLabel)];
    this.flowBytesFamily = {
      name: 'probepilot_network_flow_bytes_total',
      help: 'Bytes a workload sent to (egress) and received from (ingress) each peer: a pod of this node, or a class of peers (host, world, configured CIDR names).',
      type: 'counter',
      labelNames: flowLabelNames,
    };
    this.flowPacketsFamily = {
      name: 'probepilot_network_flow_packets_total',
      help: 'Packets a workload sent to (egress) and received from (ingress) each peer: a pod of this node, or a class of peers (host, world, configured CIDR names).',
      type: 'counter',
      labelNames: flowLabelNames,
    };
    this.activeFlowsFamily = {
      name: 'probepilot_network_active_flows',
      help: 'Flows (5-tuples) of a workload in the kernel flow table that saw a packet within collectors.network.flowTable.idleSeconds and, for TCP, no reset and not a FIN each way.',
      type: 'gauge',
      labelNames: ctx.identity.labelNames('pod'),
    };
    this.tcpSegmentsFamily = {
      name: 'probepilot_network_tcp_segments_total',
      help: 'TCP segments a workload sent (egress) and received (ingress) carrying SYN, FIN or RST, counted at TC (a SYN-ACK counts as syn).',
      type: 'counter',
      labelNames: [...ctx.identity.labelNames('pod'), 'direction', 'flag'],
    };
    this.families = [
      this.bytesFamily,
      this.packetsFamily,
      ...(flows.enabled ? [this.flowBytesFamily, this.flowPacketsFamily] : []),
      ...(flowTable.enabled ? [this.activeFlowsFamily, this.tcpSegmentsFamily] : []),
      this.podsTrackedFamily,
      this.interfacesFamily,
    ];
    this.wanted = globMatcher(interfaces.include, interfaces.exclude);
    this.section = ctx.config.collectors.network;
    const graceMs = ctx.config.seriesGraceSeconds * 1000;
    const identityLabels = ctx.identity.labelNames('pod');
    this.totals = new CounterSeries(2, graceMs, { limit: ctx.config.seriesLimit, foldedLabels: identityLabels });
    if (flows.enabled) {
      // The peer's name folds too (its class stays): pods x peers is what grows.
      const [peerNamespace, peerName] = peerLabelNames(flows.peerLabel);
      this.flows = new CounterSeries(2, graceMs, { limit: ctx.config.seriesLimit, foldedLabels: [...identityLabels, peerNamespace!, peerName!] });
      this.peers = new PeerDirectory(flows.peerCidrs, flows.peerLabel, flows.maxPeers);
    }
    if (flowTable.enabled) this.segments = new CounterSeries(1, graceMs, { limit: ctx.config.seriesLimit, foldedLabels: identityLabels });
    this.cpus = ctx.addon.possibleCpus();
    this.log = ctx.log.child({ collector: this.name });
    this.modes = new TcAttachModes(ctx.config.collectors.network.attachMode, this.log);
    if (ctx.config.pins.enabled) this.pins = new ObjectPins(ctx.addon, this.log, ctx.config.pins, 'net.bpf.o');
  }

  async start(): Promise<void> {
    const objectPath = path.join(bpfObjectDir, 'net.bpf.o');
    const object = new this.ctx.addon.BpfObject(objectPath);
    const { maxEntries, flows, flowTable } = this.ctx.config.collectors.network;
    let pinned: PinnedMaps | undefined;
    try {
      object.setMapMaxEntries('net_traffic', maxEntries);
      object.setConst('flows_enabled', Buffer.from([flows.enabled ? 1 : 0]));
      object.setMapMaxEntries('net_flows', flows.maxEntries);
      object.setMapMaxEntries('net_peer_addresses', flows.maxPeers);
      object.setConst('conns_enabled', Buffer.from([flowTable.enabled ? 1 : 0]));
      object.setMapMaxEntries('net_conns', flowTable.maxEntries);
      object.setMapMaxEntries('net_tcp_flags', maxEntries);
      pinned = this.pins?.pinMaps(object);
      object.load();
      this.peers?.installCidrs(object);
    } catch (err) {
      object.close();
      throw new CollectorUnavailableError(withCapabilityHint(`cannot load ${path.basename(objectPath)}: ${describeError(err)}`, err, tcCapabilities));
    }
    this.object = object;
    // With the earlier run's maps replaced, its clsact filters still use those: they are ours too.
    this.ownMapIds = new Set([...object.maps().filter((m) => !m.internal).map((m) => m.id), ...(pinned?.replacedIds ?? [])]);
    const saved = this.pins?.readState<NetworkState>();
    for (const { ifindex, name } of saved?.createdQdiscs ?? []) this.createdQdiscs.set(ifindex, name);
    // The saved final counts and folds belong with the map they were taken from: a fresh map starts its series over.
    const now = Date.now();
    for (const [map, series] of this.seriesByMap()) {
      if (!pinned?.reused(map)) continue;
      series.restoreFolds(saved?.folds?.[map] ?? [], now);
      series.restoreRetired(saved?.retired[map] ?? [], now);
    }
    await this.queue.run(() => this.rescan());
    // Links left for interfaces that went away while the agent was down.
    this.pins?.removeLinksExcept(new Set([...this.interfaces.values()].flatMap((i) => tcDirections.map((d) => linkPinName(i, d)))));
    if (this.interfaces.size === 0 && this.attachFailures > 0) {
      // Pins stay: they hold the earlier run's counts, which a later start continues.
      this.abandonStart(object);
      throw new CollectorUnavailableError(`could not attach to any interface: ${this.lastAttachError}`);
    }
    const intervalMs = this.ctx.config.collectors.network.rescanIntervalSeconds * 1000;
    this.timer = setInterval(() => {
      this.queue.run(() => this.rescan()).catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'interface rescan failed'));
    }, intervalMs);
    this.timer.unref();
  }

  async stop({ keepRunning = false }: StopOptions = {}): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.queue.run(async () => {
      const object = this.object;
      if (!object) return;
      for (const iface of this.interfaces.values()) {
        if (keepRunning && this.pins) this.release(object, iface);
        else this.detach(object, iface);
      }
      this.interfaces.clear();
      object.close();
      this.object = undefined;
      await this.pins?.flushState();
      if (keepRunning && this.pins) {
        this.saveState();
        return;
      }
      this.pins?.remove();
      if (!this.pins) return;
      // Leaving for good: the clsact qdiscs we created go too, unless someone else's filter uses them.
      for (const [ifindex, name] of this.createdQdiscs) {
        try {
          if (removeClsactIfEmpty(this.ctx.addon, ifindex)) this.log.info({ interface: name }, 'removed the clsact qdisc the agent created');
        } catch (err) {
          this.log.warn({ interface: name, err: describeError(err) }, 'cannot remove the clsact qdisc the agent created');
        }
      }
      this.createdQdiscs.clear();
    });
  }

  /** A start that failed half-way (no interface could be attached): the attached ones are detached (none normally), the maps stay pinned. */
  private abandonStart(object: BpfObject): void {
    for (const iface of this.interfaces.values()) this.detach(object, iface);
    this.interfaces.clear();
    object.close();
    this.object = undefined;
  }

  /** The series fed by each counted map, by map name. */
  private seriesByMap(): Array<[string, CounterSeries]> {
    return [['net_traffic', this.totals], ...(this.flows ? [['net_flows', this.flows] as [string, CounterSeries]] : []), ...(this.segments ? [['net_tcp_flags', this.segments] as [string, CounterSeries]] : [])];
  }

  private foldedSeries(): number {
    return this.seriesByMap().reduce((n, [, series]) => n + series.foldedSeries, 0);
  }

  pinnedMaps(): ReadonlyMap<string, MapPinOutcome> {
    return this.pins?.mapOutcomes() ?? new Map();
  }

  private state(): NetworkState {
    const byMap = this.seriesByMap();
    return {
      retired: Object.fromEntries(byMap.map(([map, series]) => [map, series.retiredTotals()])),
      folds: Object.fromEntries(byMap.map(([map, series]) => [map, series.savedFolds()])),
      createdQdiscs: [...this.createdQdiscs].map(([ifindex, name]) => ({ ifindex, name })),
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

  programs(): ProgramInfo[] {
    return this.object?.programs() ?? [];
  }

  /** New interface patterns apply at once (attach and detach); any other change of this collector's section needs a fresh instance. */
  async reconfigure(next: AgentConfig): Promise<boolean> {
    const { interfaces, ...rest } = next.collectors.network;
    const { interfaces: _, ...currentRest } = this.section;
    if (JSON.stringify(rest) !== JSON.stringify(currentRest)) return false;
    this.wanted = globMatcher(interfaces.include, interfaces.exclude);
    this.section = next.collectors.network;
    await this.queue.run(() => this.rescan());
    return true;
  }

  describe(): Record<string, unknown> {
    return {
      interfaces: [...this.interfaces.values()].map((i) => ({
        name: i.name,
        ifindex: i.ifindex,
        mode: i.attachments[0]?.mode ?? null,
        // peer-workload: a veth whose far end is a workload; socket: a node interface, attributed per socket.
        attribution: i.attribution === Attribution.peerWorkload ? 'peer-workload' : 'socket',
        workload: i.workload ?? null,
      })),
    };
  }

  health(): CollectorHealth {
    return this.lastHealth;
  }

  collect(): Promise<MetricFamily[]> {
    return this.queue.run(async () => {
      const object = this.requireObject();
      const now = Date.now();
      const slicer = new TimeSlicer();
      const foldedBefore = this.foldedSeries();
      this.totals.beginCollection();
      this.flows?.beginCollection();
      this.segments?.beginCollection();
      const traffic = await object.readMap('net_traffic');
      const trafficEntries = await mapSliced(traffic.count, trafficDecoder(traffic, this.cpus), slicer);
      const goneCgroups = await this.fold(object, 'net_traffic', this.totals, traffic, trafficEntries, (e) => this.trafficLabels(e), countedValues, now, false, slicer);
      if (this.flows && this.peers) {
        const flows = await object.readMap('net_flows');
        const peers = this.peers;
        const flowEntries = await mapSliced(flows.count, flowDecoder(flows, this.cpus), slicer);
        for (const id of await this.fold(object, 'net_flows', this.flows, flows, flowEntries, (e) => this.flowLabels(peers, e), countedValues, now, false, slicer)) goneCgroups.add(id);
        peers.forgetDeparted();
      }
      if (this.segments) {
        const flags = await object.readMap('net_tcp_flags');
        const flagEntries = await mapSliced(flags.count, tcpFlagDecoder(flags, this.cpus), slicer);
        for (const id of await this.fold(object, 'net_tcp_flags', this.segments, flags, flagEntries, (e) => this.segmentLabels(e), segmentValues, now, false, slicer)) goneCgroups.add(id);
      }
      const active = this.segments ? await this.expireFlows(object, slicer) : undefined;
      for (const id of goneCgroups) this.ctx.identity.cgroups.forget(id);
      // A restart must find new folds (their kernel entries keep counting into the overflow series).
      if (this.foldedSeries() !== foldedBefore) this.saveStateSoon();

      const families: MetricFamily[] = [];
      let packetsTotal = 0;
      for (const [series, bytesFamily, packetsFamily] of [
        [this.totals, this.bytesFamily, this.packetsFamily],
        ...(this.flows ? [[this.flows, this.flowBytesFamily, this.flowPacketsFamily] as const] : []),
      ] as const) {
        const bytes: ScalarSample[] = [];
        const packets: ScalarSample[] = [];
        for (const { labels, values } of series.finishCollection(now)) {
          if (slicer.due()) await slicer.yield();
          bytes.push({ labels, value: values[0]! });
          packets.push({ labels, value: values[1]! });
          if (series === this.totals) packetsTotal += values[1]!;
        }
        families.push(counterFamily(bytesFamily, bytes), counterFamily(packetsFamily, packets));
      }
      if (this.segments && active) {
        const segments: ScalarSample[] = [];
        for (const { labels, values } of this.segments.finishCollection(now)) segments.push({ labels, value: values[0]! });
        families.push(counterFamily(this.tcpSegmentsFamily, segments));
        families.push(counterFamily(this.activeFlowsFamily, [...active.values()]));
      }
      const tracked = new Set([...this.interfaces.values()].flatMap((i) => (i.attribution === Attribution.peerWorkload && i.workload !== undefined ? [i.workload] : [])));
      families.push(counterFamily(this.podsTrackedFamily, [{ labels: {}, value: tracked.size }]));
      this.lastHealth = {
        eventsProcessed: packetsTotal,
        eventsDropped: { map_full: readPpStat(object, ppStatSlots.droppedMapFull, this.cpus) },
        seriesOverflow: {
          [this.bytesFamily.name]: this.totals.foldedSeries,
          [this.packetsFamily.name]: this.totals.foldedSeries,
          ...(this.flows ? { [this.flowBytesFamily.name]: this.flows.foldedSeries, [this.flowPacketsFamily.name]: this.flows.foldedSeries } : {}),
          ...(this.segments ? { [this.tcpSegmentsFamily.name]: this.segments.foldedSeries } : {}),
        },
      };
      const byMode = new Map<string, number>([['tcx', 0], ['clsact', 0]]);
      for (const iface of this.interfaces.values()) {
        const mode = iface.attachments[0]?.mode;
        if (mode) byMode.set(mode, (byMode.get(mode) ?? 0) + 1);
      }
      families.push(counterFamily(this.interfacesFamily, [...byMode].map(([mode, value]) => ({ labels: { mode }, value }))));
      return families;
    });
  }

  private requireObject(): BpfObject {
    if (!this.object) throw new Error('network collector is not started');
    return this.object;
  }

  private workloadOf(entry: CountedEntry): string {
    if (entry.ifindex !== 0) return this.interfaces.get(entry.ifindex)?.workload ?? rootCgroup;
    return this.ctx.identity.cgroups.resolve(entry.cgroupId) ?? rootCgroup;
  }

  private trafficLabels(entry: TrafficEntry): { labels: Labels; current: boolean } {
    return { labels: { ...this.ctx.identity.labelsFor(this.workloadOf(entry), 'pod'), direction: entry.direction, protocol: entry.protocol }, current: true };
  }

  private segmentLabels(entry: TcpFlagEntry): { labels: Labels; current: boolean } {
    return { labels: { ...this.ctx.identity.labelsFor(this.workloadOf(entry), 'pod'), direction: entry.direction, flag: entry.flag }, current: true };
  }

  /**
   * Reads the 5-tuple table: flows idle for flowTable.idleSeconds, and those
   * of interfaces no longer attached, leave the kernel map; the rest are
   * returned with their workload. The LRU makes room by itself when full;
   * expiry keeps "active" meaning recent.
   */
  private async readFlowTable(object: BpfObject, slicer: TimeSlicer): Promise<LiveFlow[]> {
    const dump = await object.readMap('net_conns');
    const decode = connDecoder(dump);
    const idleNs = BigInt(Math.round(this.section.flowTable.idleSeconds * 1e9));
    // bpf_ktime_get_ns is CLOCK_MONOTONIC, as process.hrtime is.
    const monoNow = process.hrtime.bigint();
    const wallNow = Date.now();
    const wall = (ns: bigint) => wallNow - Number(monoNow - ns) / 1e6;
    const { cgroups } = this.ctx.identity;
    const expired: number[] = [];
    const live: LiveFlow[] = [];
    for (let i = 0; i < dump.count; i++) {
      if (slicer.due()) await slicer.yield();
      const entry = decode(i);
      const idle = monoNow - entry.lastSeenNs > idleNs;
      const orphaned = (entry.ifindex !== 0 && !this.interfaces.has(entry.ifindex)) || (entry.cgroupId !== 0n && cgroups.isGone(entry.cgroupId));
      if (idle || orphaned) {
        expired.push(i);
        continue;
      }
      const labels = this.ctx.identity.labelsFor(this.workloadOf(entry), 'pod');
      live.push({ labels, entry, firstSeen: wall(entry.firstSeenNs), lastSeen: wall(entry.lastSeenNs), active: !connFinished(entry) });
    }
    if (expired.length) object.deleteKeys('net_conns', selectKeys(dump, expired));
    return live;
  }

  /** Active flows per workload, after expiry. */
  private async expireFlows(object: BpfObject, slicer: TimeSlicer): Promise<Map<string, ScalarSample>> {
    const active = new Map<string, ScalarSample>();
    for (const flow of await this.readFlowTable(object, slicer)) {
      const key = Object.values(flow.labels).join('\0');
      const sample = active.get(key) ?? { labels: flow.labels, value: 0 };
      if (flow.active) sample.value += 1;
      active.set(key, sample);
    }
    return active;
  }

  /** The live 5-tuple table, for the flows API (view=5tuple); empty when the table is off. */
  flowTable(): Promise<LiveFlow[]> {
    return this.queue.run(async () => (this.segments ? this.readFlowTable(this.requireObject(), new TimeSlicer()) : []));
  }

  private flowLabels(peers: PeerDirectory, entry: FlowEntry): { labels: Labels; current: boolean } {
    const peer = peers.labelsOf(entry.peerClass, entry.peerAddress);
    return { labels: { ...this.ctx.identity.labelsFor(this.workloadOf(entry), 'pod'), direction: entry.direction, ...peer.labels }, current: peer.current };
  }

  /**
   * Folds one map's entries into their series. Entries whose cgroup is gone,
   * whose peer is no longer current, or (`retireAll`) whose interface goes
   * away keep their final counts in their series and leave the kernel map;
   * so do entries whose labels changed since the last read (see
   * CounterSeries.addLive), which then count afresh under the new labels.
   * Returns the gone cgroups, to forget once every map has been read.
   */
  private async fold<E extends CountedEntry>(
    object: BpfObject,
    map: string,
    series: CounterSeries,
    dump: MapDump,
    entries: readonly E[],
    labelsOf: (entry: E) => { labels: Labels; current: boolean },
    valuesOf: (entry: E) => number[],
    now: number,
    retireAll: boolean,
    slicer: TimeSlicer,
  ): Promise<Set<bigint>> {
    const { cgroups } = this.ctx.identity;
    const gone = new Set<bigint>();
    const deleted: number[] = [];
    for (const entry of entries) {
      if (slicer.due()) await slicer.yield();
      const { labels, current } = labelsOf(entry);
      // Series are their label sets: entries that name the same workload and peer add up.
      const key = Object.values(labels).join('\0');
      const entryId = dump.keys.toString('hex', entry.index * dump.keySize, (entry.index + 1) * dump.keySize);
      const values = valuesOf(entry);
      const cgroupGone = entry.cgroupId !== 0n && cgroups.isGone(entry.cgroupId);
      if (cgroupGone) gone.add(entry.cgroupId);
      if (retireAll || cgroupGone || !current) {
        series.retire(entryId, key, labels, values, now);
        deleted.push(entry.index);
      } else if (!series.addLive(entryId, key, labels, values, now)) {
        deleted.push(entry.index);
      }
    }
    if (deleted.length) {
      object.deleteKeys(map, selectKeys(dump, deleted));
      // Right after the kernel entries went: their final counts live only here now.
      this.saveStateSoon();
    }
    return gone;
  }

  /** Final counts of one interface go to its current workload, then its kernel entries are dropped. */
  private async retireInterface(object: BpfObject, ifindex: number): Promise<void> {
    const now = Date.now();
    const slicer = new TimeSlicer();
    const traffic = await object.readMap('net_traffic');
    const ofInterface = <E extends CountedEntry>(entries: E[]) => entries.filter((e) => e.ifindex === ifindex);
    await this.fold(object, 'net_traffic', this.totals, traffic, ofInterface(decodeTraffic(traffic, this.cpus)), (e) => this.trafficLabels(e), countedValues, now, true, slicer);
    if (this.flows && this.peers) {
      const flows = await object.readMap('net_flows');
      const peers = this.peers;
      await this.fold(object, 'net_flows', this.flows, flows, ofInterface(decodeFlows(flows, this.cpus)), (e) => this.flowLabels(peers, e), countedValues, now, true, slicer);
    }
    if (this.segments) {
      const flags = await object.readMap('net_tcp_flags');
      const decode = tcpFlagDecoder(flags, this.cpus);
      const entries = ofInterface(Array.from({ length: flags.count }, (_, i) => decode(i)));
      await this.fold(object, 'net_tcp_flags', this.segments, flags, entries, (e) => this.segmentLabels(e), segmentValues, now, true, slicer);
    }
  }

  private async rescan(): Promise<void> {
    const object = this.object;
    if (!object) return;
    try {
      if (this.peers?.sync(object, this.ctx.identity.peers())) {
        this.log.warn({ peers: this.peers.overflow }, 'peer addresses beyond collectors.network.flows.maxPeers: their traffic counts as world');
      }
    } catch (err) {
      // Peers stay as they were; interfaces must still come and go.
      this.log.warn({ err: describeError(err) }, 'cannot update the peer addresses');
    }
    const links = this.ctx.addon.listLinks();
    const present = new Map(links.map((l) => [l.ifindex, l]));
    for (const iface of [...this.interfaces.values()]) {
      const link = present.get(iface.ifindex);
      if (link && link.name === iface.name && this.wanted(link.name)) {
        // A veth is often created with both ends here and its peer moved into the pod afterwards.
        if (link.linkNetnsId !== iface.peerNetnsId) await this.reattribute(object, iface, link);
        continue;
      }
      this.detach(object, iface);
      await this.retireInterface(object, iface.ifindex);
      object.deleteKeys('net_ifaces', encodeIfindex(iface.ifindex));
      this.interfaces.delete(iface.ifindex);
      if (!link) this.createdQdiscs.delete(iface.ifindex); // went with its interface
      this.log.info({ interface: iface.name, ifindex: iface.ifindex, reason: link ? 'no longer matched' : 'removed' }, 'detached from interface');
      this.ctx.events?.publish({ type: 'interface', action: 'detached', interface: iface.name, ifindex: iface.ifindex, mode: iface.attachments[0]?.mode ?? null, workload: iface.workload ?? null });
    }
    for (const link of links) {
      if (!this.interfaces.has(link.ifindex) && this.wanted(link.name)) this.attach(object, link);
    }
    await this.resolveWorkloads(object);
  }

  private configure(object: BpfObject, link: LinkInfo): void {
    object.update('net_ifaces', encodeIfindex(link.ifindex), encodeIfaceConfig(attributionOf(link), l3OffsetFor(link.hwType)));
  }

  /** Counts so far stay with the old attribution; new ones follow the interface's new peer. */
  private async reattribute(object: BpfObject, iface: AttachedInterface, link: LinkInfo): Promise<void> {
    await this.retireInterface(object, iface.ifindex);
    this.configure(object, link);
    iface.attribution = attributionOf(link);
    iface.peerNetnsId = link.linkNetnsId;
    Object.assign(iface, workloadBehind(this.ctx.identity.netns, link, Date.now()));
    this.log.info({ interface: iface.name, peerNetnsId: link.linkNetnsId, workload: iface.workload ?? null }, 'interface peer moved; attribution updated');
  }

  private attach(object: BpfObject, link: LinkInfo): void {
    this.configure(object, link);
    const iface: AttachedInterface = {
      ifindex: link.ifindex,
      name: link.name,
      attribution: attributionOf(link),
      ...workloadBehind(this.ctx.identity.netns, link, Date.now()),
      peerNetnsId: link.linkNetnsId,
      attachments: [],
    };
    try {
      for (const direction of tcDirections) iface.attachments.push(this.attachTc(object, link, direction));
    } catch (err) {
      this.detach(object, iface);
      object.deleteKeys('net_ifaces', encodeIfindex(link.ifindex));
      this.attachFailures++;
      this.lastAttachError = withCapabilityHint(`${link.name}: ${describeError(err)}`, err, tcCapabilities);
      logAttachFailure(this.log, link, err);
      return;
    }
    this.interfaces.set(link.ifindex, iface);
    const mode = iface.attachments[0]?.mode ?? null;
    this.log.info({ interface: link.name, ifindex: link.ifindex, mode, workload: iface.workload ?? null, kind: link.kind || null }, 'attached to interface');
    this.ctx.events?.publish({ type: 'interface', action: 'attached', interface: link.name, ifindex: link.ifindex, mode, workload: iface.workload ?? null });
  }

  private attachTc(object: BpfObject, link: LinkInfo, direction: TcDirection): TcAttachment {
    const adopted = this.adoptEarlier(object, link, direction, this.modes.first());
    if (adopted) return adopted;
    const attachment = this.modes.attach(object, programFor[direction], link.ifindex, direction);
    if (attachment.createdQdisc) this.createdQdiscs.set(link.ifindex, link.name);
    // TCX links outlive us through their pin; clsact filters need none (the qdisc holds them) and are found again by their maps.
    if (attachment.mode === 'tcx' && this.pins) object.pinAttachment(attachment.id, this.pins.linkPath(linkPinName(link, direction)));
    return attachment;
  }

  /**
   * What an earlier run left on this hook, taken over so nothing is counted
   * twice: its pinned TCX link, or its clsact filter (found by the pinned
   * maps its program uses; one re-created map still leaves the others).
   * Leftovers in the other mode, and duplicates, are removed.
   */
  private adoptEarlier(object: BpfObject, link: LinkInfo, direction: TcDirection, mode: TcAttachMode): TcAttachment | undefined {
    const pins = this.pins;
    if (!pins) return undefined;
    const program = programFor[direction];
    const pinPath = pins.linkPath(linkPinName(link, direction));
    let adopted: TcAttachment | undefined;
    if (mode === 'tcx') {
      const adoption = object.adoptLink(program, pinPath);
      if (adoption.outcome === 'kept' || adoption.outcome === 'updated') adopted = { id: adoption.id, mode: 'tcx', createdQdisc: false };
      if (adoption.outcome === 'updated') this.log.info({ interface: link.name, direction, reason: adoption.reason }, 'TCX link of the previous run updated in place to the new program');
      if (adoption.outcome === 'stale') this.log.warn({ interface: link.name, direction, reason: adoption.reason }, 'TCX link of the previous run removed; attaching anew');
    } else {
      pins.removeLink(linkPinName(link, direction));
    }
    for (const filter of this.ctx.addon.listTcFilters(link.ifindex, direction)) {
      if (!this.ctx.addon.programById(filter.programId)?.mapIds.some((id) => this.ownMapIds.has(id))) continue;
      if (adopted) {
        this.ctx.addon.detachTcFilter(link.ifindex, direction, filter.handle, filter.priority);
        continue;
      }
      const adoption = object.adoptTcFilter(program, link.ifindex, direction, filter.handle, filter.priority);
      if (adoption.outcome === 'updated') this.log.info({ interface: link.name, direction, reason: adoption.reason }, 'clsact filter of the previous run updated in place to the new program');
      adopted = { id: adoption.id, mode: 'clsact', createdQdisc: false };
    }
    return adopted;
  }

  /** Leaves the interface's programs attached (pinned TCX links, clsact filters) for the next run. */
  private release(object: BpfObject, iface: AttachedInterface): void {
    for (const attachment of iface.attachments) object.release(attachment.id);
    iface.attachments = [];
  }

  private detach(object: BpfObject, iface: AttachedInterface): void {
    detachInterface(object, iface, this.log);
  }

  /**
   * A veth whose namespace had no process yet, or whose first answer named a
   * visitor: earlier counts stay with what it was attributed to (the node's
   * root when unknown) and new ones go to the workload found now.
   */
  private async resolveWorkloads(object: BpfObject): Promise<void> {
    for (const { iface, workload } of workloadChanges(this.ctx.identity.netns, this.interfaces.values(), Date.now())) {
      await this.retireInterface(object, iface.ifindex);
      this.log.info({ interface: iface.name, workload, previous: iface.workload ?? null }, 'resolved workload behind interface');
      iface.workload = workload;
    }
  }
}
