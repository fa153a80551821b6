// TC network collector: attaches bpf/net.bpf.c to the node's interfaces (and
// to new ones as they appear), and turns its per-CPU traffic map into bytes
// and packets per workload, direction and protocol.
import path from 'node:path';
import { bpfObjectDir, isNativeError, type BpfObject, type LinkInfo, type MapDump, type ProgramInfo, type TcAttachment, type TcAttachMode, type TcDirection } from '../bpf/addon.js';
import { ppStatSlots, readPpStat, selectKeys } from '../bpf/maps.js';
import { describeError } from '../errors.js';
import { globMatcher } from '../glob.js';
import { rootCgroup } from '../identity/cgroups.js';
import type { FamilyDescriptor, Labels, MetricFamily } from '../metrics/model.js';
import { CounterSeries } from '../metrics/series.js';
import { CollectorUnavailableError, type Collector, type CollectorContext, type CollectorHealth } from './collector.js';
import { SerialQueue } from './serial.js';
import {
  Attribution,
  decodeTraffic,
  encodeIfaceConfig,
  encodeIfindex,
  l3OffsetFor,
  type AttributionKind,
  type TrafficEntry,
} from './network-decode.js';

const programFor: Record<TcDirection, string> = { ingress: 'pp_net_ingress', egress: 'pp_net_egress' };
const tcDirections: readonly TcDirection[] = ['ingress', 'egress'];

/** errno values that mean "this kernel has no TCX": fall back to clsact. */
const tcxUnsupported = new Set([22 /* EINVAL */, 95 /* EOPNOTSUPP */, 524 /* ENOTSUPP */]);

interface AttachedInterface {
  ifindex: number;
  name: string;
  attribution: AttributionKind;
  /** The workload behind a veth; undefined until resolved, or for node interfaces. */
  workload: string | undefined;
  /** Peer namespace id (veth) or -1. */
  peerNetnsId: number;
  attachments: TcAttachment[];
}

export class NetworkCollector implements Collector {
  readonly name = 'network';
  readonly families: readonly FamilyDescriptor[];
  private readonly bytesFamily: FamilyDescriptor;
  private readonly packetsFamily: FamilyDescriptor;
  private readonly interfacesFamily: FamilyDescriptor = {
    name: 'probepilot_network_interfaces_attached',
    help: 'Interfaces the network collector is attached to, by attach mode.',
    type: 'gauge',
    labelNames: ['mode'],
  };

  private object: BpfObject | undefined;
  private readonly interfaces = new Map<number, AttachedInterface>();
  private readonly wanted: (name: string) => boolean;
  private readonly totals: CounterSeries;
  private readonly cpus: number;
  /** Learned in auto mode from the first attach. */
  private tcxAvailable: boolean | undefined;
  private attachFailures = 0;
  private lastAttachError = '';
  private timer: NodeJS.Timeout | undefined;
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
    this.families = [this.bytesFamily, this.packetsFamily, this.interfacesFamily];
    const { interfaces } = ctx.config.collectors.network;
    this.wanted = globMatcher(interfaces.include, interfaces.exclude);
    this.totals = new CounterSeries(2, ctx.config.seriesGraceSeconds * 1000, ctx.config.seriesLimit);
    this.cpus = ctx.addon.possibleCpus();
    this.log = ctx.log.child({ collector: this.name });
  }

  async start(): Promise<void> {
    const objectPath = path.join(bpfObjectDir, 'net.bpf.o');
    const object = new this.ctx.addon.BpfObject(objectPath);
    try {
      object.setMapMaxEntries('net_traffic', this.ctx.config.collectors.network.maxEntries);
      object.load();
    } catch (err) {
      object.close();
      throw new CollectorUnavailableError(`cannot load ${path.basename(objectPath)}: ${describeError(err)}`);
    }
    this.object = object;
    await this.queue.run(() => this.rescan());
    if (this.interfaces.size === 0 && this.attachFailures > 0) {
      await this.stop();
      throw new CollectorUnavailableError(`could not attach to any interface: ${this.lastAttachError}`);
    }
    const intervalMs = this.ctx.config.collectors.network.rescanIntervalSeconds * 1000;
    this.timer = setInterval(() => {
      this.queue.run(() => this.rescan()).catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'interface rescan failed'));
    }, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.queue.run(async () => {
      const object = this.object;
      if (!object) return;
      for (const iface of this.interfaces.values()) this.detach(object, iface);
      this.interfaces.clear();
      object.close();
      this.object = undefined;
    });
  }

  programs(): ProgramInfo[] {
    return this.object?.programs() ?? [];
  }

  health(): CollectorHealth {
    return this.lastHealth;
  }

  collect(): Promise<MetricFamily[]> {
    return this.queue.run(async () => {
      const object = this.requireObject();
      const dump = await object.readMap('net_traffic');
      const entries = decodeTraffic(dump, this.cpus);
      const now = Date.now();
      const { cgroups } = this.ctx.identity;
      const goneCgroupEntries: TrafficEntry[] = [];
      const relabeled: TrafficEntry[] = [];
      this.totals.beginCollection();
      for (const entry of entries) {
        if (entry.cgroupId !== 0n && cgroups.isGone(entry.cgroupId)) goneCgroupEntries.push(entry);
        else if (!this.add(dump, entry, now, false)) relabeled.push(entry);
      }
      this.retire(object, dump, goneCgroupEntries, now);
      // Their counts so far already stayed with their old series: only the kernel entries go.
      if (relabeled.length) object.deleteKeys('net_traffic', selectKeys(dump, relabeled.map((e) => e.index)));
      for (const entry of goneCgroupEntries) cgroups.forget(entry.cgroupId);

      const bytes: { labels: Labels; value: number }[] = [];
      const packets: { labels: Labels; value: number }[] = [];
      let packetsTotal = 0;
      for (const { labels, values } of this.totals.finishCollection(now)) {
        bytes.push({ labels, value: values[0]! });
        packets.push({ labels, value: values[1]! });
        packetsTotal += values[1]!;
      }
      this.lastHealth = {
        eventsProcessed: packetsTotal,
        eventsDropped: { map_full: readPpStat(object, ppStatSlots.droppedMapFull, this.cpus) },
        seriesDropped: this.totals.droppedSeries,
      };
      const byMode = new Map<string, number>([['tcx', 0], ['clsact', 0]]);
      for (const iface of this.interfaces.values()) {
        const mode = iface.attachments[0]?.mode;
        if (mode) byMode.set(mode, (byMode.get(mode) ?? 0) + 1);
      }
      return [
        { ...this.bytesFamily, type: 'counter', samples: bytes },
        { ...this.packetsFamily, type: 'counter', samples: packets },
        { ...this.interfacesFamily, type: 'gauge', samples: [...byMode].map(([mode, value]) => ({ labels: { mode }, value })) },
      ];
    });
  }

  private requireObject(): BpfObject {
    if (!this.object) throw new Error('network collector is not started');
    return this.object;
  }

  private workloadOf(entry: TrafficEntry): string {
    if (entry.ifindex !== 0) return this.interfaces.get(entry.ifindex)?.workload ?? rootCgroup;
    return this.ctx.identity.cgroups.resolve(entry.cgroupId) ?? rootCgroup;
  }

  /** False when the entry's labels changed since it was last read (see CounterSeries.addLive). */
  private add(dump: MapDump, entry: TrafficEntry, now: number, retire: boolean): boolean {
    const workload = this.workloadOf(entry);
    const labels = { ...this.ctx.identity.labelsFor(workload, 'pod'), direction: entry.direction, protocol: entry.protocol };
    // Series are their label sets: entries that name the same workload add up.
    const key = Object.values(labels).join('\0');
    const entryId = dump.keys.toString('hex', entry.index * dump.keySize, (entry.index + 1) * dump.keySize);
    const values = [entry.bytes, entry.packets];
    if (!retire) return this.totals.addLive(entryId, key, labels, values, now);
    this.totals.retire(entryId, key, labels, values, now);
    return true;
  }

  /** Moves entries' final counts into their series and deletes them from the kernel map. */
  private retire(object: BpfObject, dump: MapDump, entries: readonly TrafficEntry[], now: number): void {
    if (!entries.length) return;
    for (const entry of entries) this.add(dump, entry, now, true);
    object.deleteKeys(
      'net_traffic',
      selectKeys(
        dump,
        entries.map((e) => e.index),
      ),
    );
  }

  /** Final counts of one interface go to its current workload, then its kernel entries are dropped. */
  private async retireInterface(object: BpfObject, ifindex: number): Promise<void> {
    const dump = await object.readMap('net_traffic');
    const entries = decodeTraffic(dump, this.cpus).filter((e) => e.ifindex === ifindex);
    this.retire(object, dump, entries, Date.now());
  }

  private async rescan(): Promise<void> {
    const object = this.object;
    if (!object) return;
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
      this.log.info({ interface: iface.name, ifindex: iface.ifindex, reason: link ? 'no longer matched' : 'removed' }, 'detached from interface');
    }
    for (const link of links) {
      if (!this.interfaces.has(link.ifindex) && this.wanted(link.name)) this.attach(object, link);
    }
    await this.resolvePendingWorkloads(object);
  }

  private attributionOf(link: LinkInfo): AttributionKind {
    return link.kind === 'veth' && link.linkNetnsId >= 0 ? Attribution.peerWorkload : Attribution.socket;
  }

  private configure(object: BpfObject, link: LinkInfo): void {
    object.update('net_ifaces', encodeIfindex(link.ifindex), encodeIfaceConfig(this.attributionOf(link), l3OffsetFor(link.hwType)));
  }

  private workloadBehind(link: LinkInfo): string | undefined {
    if (this.attributionOf(link) !== Attribution.peerWorkload) return undefined;
    const { netns } = this.ctx.identity;
    return (netns.resolve(link.linkNetnsId) ?? (netns.refresh(true), netns.resolve(link.linkNetnsId)))?.cgroupPath;
  }

  /** Counts so far stay with the old attribution; new ones follow the interface's new peer. */
  private async reattribute(object: BpfObject, iface: AttachedInterface, link: LinkInfo): Promise<void> {
    await this.retireInterface(object, iface.ifindex);
    this.configure(object, link);
    iface.attribution = this.attributionOf(link);
    iface.peerNetnsId = link.linkNetnsId;
    iface.workload = this.workloadBehind(link);
    this.log.info({ interface: iface.name, peerNetnsId: link.linkNetnsId, workload: iface.workload ?? null }, 'interface peer moved; attribution updated');
  }

  private attach(object: BpfObject, link: LinkInfo): void {
    this.configure(object, link);
    const iface: AttachedInterface = {
      ifindex: link.ifindex,
      name: link.name,
      attribution: this.attributionOf(link),
      workload: this.workloadBehind(link),
      peerNetnsId: link.linkNetnsId,
      attachments: [],
    };
    try {
      for (const direction of tcDirections) iface.attachments.push(this.attachTc(object, link.ifindex, direction));
    } catch (err) {
      this.detach(object, iface);
      object.deleteKeys('net_ifaces', encodeIfindex(link.ifindex));
      this.attachFailures++;
      this.lastAttachError = `${link.name}: ${describeError(err)}`;
      // An interface that vanished between listing and attaching is not worth a warning.
      const level = isNativeError(err) && err.errno === 19 /* ENODEV */ ? 'debug' : 'warn';
      this.log[level]({ interface: link.name, ifindex: link.ifindex, err: describeError(err) }, 'cannot attach to interface');
      return;
    }
    this.interfaces.set(link.ifindex, iface);
    this.log.info(
      { interface: link.name, ifindex: link.ifindex, mode: iface.attachments[0]?.mode, workload: iface.workload ?? null, kind: link.kind || null },
      'attached to interface',
    );
  }

  private attachTc(object: BpfObject, ifindex: number, direction: TcDirection): TcAttachment {
    const setting = this.ctx.config.collectors.network.attachMode;
    const mode: TcAttachMode = setting === 'auto' ? (this.tcxAvailable === false ? 'clsact' : 'tcx') : setting;
    try {
      const attachment = object.attachTc(programFor[direction], ifindex, direction, mode);
      if (setting === 'auto') this.tcxAvailable ??= mode === 'tcx';
      return attachment;
    } catch (err) {
      if (setting !== 'auto' || mode !== 'tcx' || !isNativeError(err) || !tcxUnsupported.has(err.errno)) throw err;
      this.tcxAvailable = false;
      this.log.info({ err: describeError(err) }, 'TCX is not available, using clsact');
      return object.attachTc(programFor[direction], ifindex, direction, 'clsact');
    }
  }

  private detach(object: BpfObject, iface: AttachedInterface): void {
    for (const attachment of iface.attachments) {
      try {
        object.detach(attachment.id);
      } catch (err) {
        this.log.warn({ interface: iface.name, err: describeError(err) }, 'detach failed');
      }
    }
    iface.attachments = [];
  }

  /** A veth whose namespace had no process yet: once it has one, earlier counts stay with the node (root) and new ones go to the workload. */
  private async resolvePendingWorkloads(object: BpfObject): Promise<void> {
    for (const iface of this.interfaces.values()) {
      if (iface.attribution !== Attribution.peerWorkload || iface.workload !== undefined) continue;
      const workload = this.ctx.identity.netns.resolve(iface.peerNetnsId)?.cgroupPath;
      if (workload === undefined) continue;
      await this.retireInterface(object, iface.ifindex);
      iface.workload = workload;
      this.log.info({ interface: iface.name, workload }, 'resolved workload behind interface');
    }
  }
}
