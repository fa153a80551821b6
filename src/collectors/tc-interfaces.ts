// TC programs of one object kept attached to the node's interfaces as they
// come and go, each told through an interface map how to attribute what
// crosses it (the host end of a pod's veth, or a node interface attributed
// per socket) — the same layout net.bpf.c's net_ifaces uses. For collectors
// other than the network one (which also pins and adopts its links, and
// shares the attach mode choice and the workload checks from here); these
// attachments end with the agent.
import { isNativeError, type BpfObject, type LinkInfo, type TcAttachment, type TcAttachMode, type TcDirection } from '../bpf/addon.js';
import { describeError } from '../errors.js';
import { globMatcher } from '../glob.js';
import type { Logger } from '../log.js';
import type { AgentConfig } from '../config.js';
import type { NetnsWorkloads } from '../identity/netns.js';
import type { CollectorContext } from './collector.js';
import { Attribution, encodeIfaceConfig, encodeIfindex, l3OffsetFor, type AttributionKind } from './network-decode.js';

/** errno values that mean "this kernel has no TCX": fall back to clsact. */
const tcxUnsupported = new Set([22 /* EINVAL */, 95 /* EOPNOTSUPP */, 524 /* ENOTSUPP */]);
export const tcDirections: readonly TcDirection[] = ['ingress', 'egress'];
/** How long the workload first seen behind a veth is checked again before it is trusted. */
const workloadSettleMs = 30_000;

/** An attached interface as far as its workload goes. */
export interface PeerWorkload {
  attribution: AttributionKind;
  peerNetnsId: number;
  /** The workload behind a veth; undefined until its namespace has a process, or for node interfaces. */
  workload: string | undefined;
  /** Until when `workload` may still name a visitor of the pod's young namespace (epoch ms). */
  workloadCheckUntil: number;
}

/** The workload behind a veth now, for a new attachment; undefined for node interfaces and namespaces no process lives in yet. */
export function workloadBehind(netns: NetnsWorkloads, link: LinkInfo, now: number): Pick<PeerWorkload, 'workload' | 'workloadCheckUntil'> {
  if (attributionOf(link) !== Attribution.peerWorkload) return { workload: undefined, workloadCheckUntil: 0 };
  const workload = (netns.resolve(link.linkNetnsId) ?? (netns.refresh(true), netns.resolve(link.linkNetnsId)))?.cgroupPath;
  return { workload, workloadCheckUntil: now + workloadSettleMs };
}

/**
 * Interfaces whose workload is now found, or was found wrong while settling,
 * with the one their namespace's processes show now. Pod set-up runs tools in
 * the pod's namespace from other cgroups (a CNI plugin's, the test runner's),
 * so a namespace's first answer is asked for again for workloadSettleMs.
 */
export function workloadChanges<T extends PeerWorkload>(netns: NetnsWorkloads, interfaces: Iterable<T>, now: number): Array<{ iface: T; workload: string }> {
  const changes: Array<{ iface: T; workload: string }> = [];
  for (const iface of interfaces) {
    if (iface.attribution !== Attribution.peerWorkload) continue;
    if (iface.workload !== undefined && now >= iface.workloadCheckUntil) continue;
    const workload = netns.current(iface.peerNetnsId)?.cgroupPath;
    if (workload === undefined || workload === iface.workload) continue;
    if (iface.workload === undefined) iface.workloadCheckUntil = now + workloadSettleMs;
    changes.push({ iface, workload });
  }
  return changes;
}

export function attributionOf(link: LinkInfo): AttributionKind {
  return link.kind === 'veth' && link.linkNetnsId >= 0 ? Attribution.peerWorkload : Attribution.socket;
}

export interface TcInterfacesSpec {
  /** The program of each direction. */
  programs: Record<TcDirection, string>;
  /** The object's map of struct iface_config by ifindex. */
  ifaceMap: string;
}

interface Attached extends PeerWorkload {
  name: string;
  attachments: TcAttachment[];
}

/** What a key's ifindex names for identity. */
export interface InterfaceWorkload {
  path: string;
  gone: boolean;
}

export class TcInterfaces {
  private readonly attached = new Map<number, Attached>();
  /** Workloads of interfaces gone since the last collection but one: their entries retire under them. */
  private departed = new Map<number, string>();
  private departedBefore = new Map<number, string>();
  private readonly wanted: (name: string) => boolean;
  private readonly modes: TcAttachModes;
  private timer: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  constructor(
    private readonly ctx: CollectorContext,
    private readonly spec: TcInterfacesSpec,
    log: Logger,
  ) {
    // Same interfaces as the network collector: what it counts, this one parses.
    const { interfaces, attachMode } = ctx.config.collectors.network;
    this.wanted = globMatcher(interfaces.include, interfaces.exclude);
    this.modes = new TcAttachModes(attachMode, log);
    this.log = log;
  }

  /** Attaches to every wanted interface, then keeps up with new and removed ones; throws when none could be attached but some were tried. */
  start(object: BpfObject): void {
    const failures = this.rescan(object);
    if (this.attached.size === 0 && failures.length > 0) throw new Error(`could not attach to any interface: ${failures[failures.length - 1]}`);
    const intervalMs = this.ctx.config.collectors.network.rescanIntervalSeconds * 1000;
    this.timer = setInterval(() => {
      try {
        this.rescan(object);
      } catch (err) {
        this.log.warn({ err: describeError(err) }, 'interface rescan failed');
      }
    }, intervalMs);
    this.timer.unref();
  }

  stop(object: BpfObject): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const iface of this.attached.values()) this.detach(object, iface);
    this.attached.clear();
  }

  /** undefined: not a pod's interface (its entries are the node's, or carry a cgroup). */
  workloadOf(ifindex: number): InterfaceWorkload | undefined {
    const live = this.attached.get(ifindex)?.workload;
    if (live !== undefined) return { path: live, gone: false };
    const gone = this.departed.get(ifindex) ?? this.departedBefore.get(ifindex);
    return gone === undefined ? undefined : { path: gone, gone: true };
  }

  /** Once per collection: interfaces gone for two collections are forgotten (every map had a read to retire their entries). */
  collected(): void {
    this.departedBefore = this.departed;
    this.departed = new Map();
  }

  describe(): Array<{ name: string; ifindex: number; mode: string | null; workload: string | null }> {
    return [...this.attached].map(([ifindex, i]) => ({ name: i.name, ifindex, mode: i.attachments[0]?.mode ?? null, workload: i.workload ?? null }));
  }

  /** Returns the attach errors of this pass. */
  private rescan(object: BpfObject): string[] {
    const links = this.ctx.addon.listLinks();
    const present = new Map(links.map((l) => [l.ifindex, l]));
    for (const [ifindex, iface] of [...this.attached]) {
      const link = present.get(ifindex);
      if (link && link.name === iface.name && this.wanted(link.name) && link.linkNetnsId === iface.peerNetnsId) continue;
      // Moved peer, renamed or removed: attach afresh (below) if still wanted, with the new attribution.
      this.detach(object, iface);
      object.deleteKeys(this.spec.ifaceMap, encodeIfindex(ifindex));
      this.attached.delete(ifindex);
      if (iface.workload !== undefined) this.departed.set(ifindex, iface.workload);
      this.log.info({ interface: iface.name, ifindex }, 'detached from interface');
    }
    const failures: string[] = [];
    for (const link of links) {
      if (this.attached.has(link.ifindex) || !this.wanted(link.name)) continue;
      const error = this.attach(object, link);
      if (error) failures.push(error);
    }
    for (const { iface, workload } of workloadChanges(this.ctx.identity.netns, this.attached.values(), Date.now())) {
      this.log.info({ interface: iface.name, workload, previous: iface.workload ?? null }, 'resolved workload behind interface');
      iface.workload = workload;
    }
    return failures;
  }

  private attach(object: BpfObject, link: LinkInfo): string | undefined {
    const attribution = attributionOf(link);
    object.update(this.spec.ifaceMap, encodeIfindex(link.ifindex), encodeIfaceConfig(attribution, l3OffsetFor(link.hwType)));
    const iface: Attached = { name: link.name, attribution, peerNetnsId: link.linkNetnsId, ...workloadBehind(this.ctx.identity.netns, link, Date.now()), attachments: [] };
    try {
      for (const direction of tcDirections) iface.attachments.push(this.modes.attach(object, this.spec.programs[direction], link.ifindex, direction));
    } catch (err) {
      this.detach(object, iface);
      object.deleteKeys(this.spec.ifaceMap, encodeIfindex(link.ifindex));
      logAttachFailure(this.log, link, err);
      return `${link.name}: ${describeError(err)}`;
    }
    this.attached.set(link.ifindex, iface);
    this.log.info({ interface: link.name, ifindex: link.ifindex, mode: iface.attachments[0]?.mode ?? null, workload: iface.workload ?? null }, 'attached to interface');
    return undefined;
  }

  private detach(object: BpfObject, iface: Attached): void {
    detachInterface(object, iface, this.log);
  }
}

/**
 * collectors.network.attachMode applied: in auto mode TCX first, until the
 * kernel refuses it once; clsact for every later attach then.
 */
export class TcAttachModes {
  private tcxAvailable: boolean | undefined;

  constructor(
    private readonly setting: AgentConfig['collectors']['network']['attachMode'],
    private readonly log: Logger,
  ) {}

  /** The mode the next attach tries first. */
  first(): TcAttachMode {
    return this.setting === 'auto' ? (this.tcxAvailable === false ? 'clsact' : 'tcx') : this.setting;
  }

  /** Attaches in the first mode; in auto mode a kernel without TCX gets clsact instead, now and from then on. */
  attach(object: BpfObject, program: string, ifindex: number, direction: TcDirection): TcAttachment {
    const mode = this.first();
    try {
      const attachment = object.attachTc(program, ifindex, direction, mode);
      if (this.setting === 'auto') this.tcxAvailable ??= mode === 'tcx';
      return attachment;
    } catch (err) {
      if (this.setting !== 'auto' || mode !== 'tcx' || !isNativeError(err) || !tcxUnsupported.has(err.errno)) throw err;
      this.tcxAvailable = false;
      this.log.info({ err: describeError(err) }, 'TCX is not available, using clsact');
      return object.attachTc(program, ifindex, direction, 'clsact');
    }
  }
}

/** An interface that vanished between listing and attaching is not worth a warning. */
export function logAttachFailure(log: Logger, link: LinkInfo, err: unknown): void {
  const level = isNativeError(err) && err.errno === 19 /* ENODEV */ ? 'debug' : 'warn';
  log[level]({ interface: link.name, ifindex: link.ifindex, err: describeError(err) }, 'cannot attach to interface');
}

/** Detaches an interface's programs; one that fails is logged and the rest still go. */
export function detachInterface(object: BpfObject, iface: { name: string; attachments: TcAttachment[] }, log: Logger): void {
  for (const attachment of iface.attachments) {
    try {
      object.detach(attachment.id);
    } catch (err) {
      log.warn({ interface: iface.name, err: describeError(err) }, 'detach failed');
    }
  }
  iface.attachments = [];
}
