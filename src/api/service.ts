// The agent's operations, once, for every transport (REST now; gRPC and the
// CLI through REST): status, the collectors' lifecycle, and flows read from
// the same counters /metrics exports.
import { existsSync } from 'node:fs';
import os from 'node:os';
import type { Collection, CollectorManager, CollectorState } from '../collectors/manager.js';
import type { Identity } from '../identity/identity.js';
import type { Labels, ScalarSample } from '../metrics/model.js';
import { TimeSlicer } from '../metrics/slice.js';
import { agentVersion } from '../version.js';
import type { ConfigChange } from '../reload.js';

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
}

/** The values a flows query takes, for every transport (REST schema, gRPC checks, CLI choices). */
export const flowViews = ['peer', 'protocol'] as const;
export const flowProtocols = ['tcp', 'udp', 'icmp', 'other'] as const;
export const flowDirections = ['ingress', 'egress'] as const;
export const flowSorts = ['bytes', 'packets'] as const;
export const flowLimit = { default: 20, max: 10000 } as const;

export type FlowView = (typeof flowViews)[number];

export interface FlowQuery {
  /** peer: the peer matrix (who talks to whom); protocol: traffic by protocol. */
  view: FlowView;
  namespace?: string;
  pod?: string;
  /** A peer's workload (or pod), namespace/name, or class (pod, host, node, world, a CIDR name). */
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
  /** view=protocol. */
  protocol?: string;
  bytes: number;
  packets: number;
  /** Over the interval since an earlier query at least a second ago; null for the first. */
  bytesPerSecond: number | null;
  packetsPerSecond: number | null;
}

export interface FlowsResult {
  view: FlowView;
  /** Matching flows before the limit. */
  total: number;
  /** The interval rates are over; null when there is no earlier snapshot yet. */
  intervalSeconds: number | null;
  flows: FlowEntry[];
}

const families: Record<FlowView, { bytes: string; packets: string }> = {
  peer: { bytes: 'probepilot_network_flow_bytes_total', packets: 'probepilot_network_flow_packets_total' },
  protocol: { bytes: 'probepilot_network_bytes_total', packets: 'probepilot_network_packets_total' },
};

interface Snapshot {
  at: number;
  values: Map<string, { bytes: number; packets: number }>;
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
  baseline: Snapshot | undefined;
  interval: number | null;
  flows: Array<{ flow: CollectedFlow; entry: FlowEntry }>;
  sorted: Partial<Record<FlowQuery['sort'], Array<{ flow: CollectedFlow; entry: FlowEntry }>>>;
}

interface CollectedView {
  flows: CollectedFlow[];
  snapshot: Snapshot;
  answers: ViewAnswers | undefined;
}

/** Flow entries as JSON, written once per collection: a query of 10,000 flows joins strings instead of serializing objects. */
const serializedFlows = new WeakMap<FlowEntry, string>();

/** A flow entry as JSON (JSON.stringify's text), from the cache when the entry came from flows(). */
export function flowJson(entry: FlowEntry): string {
  return serializedFlows.get(entry) ?? JSON.stringify(entry);
}

export interface AgentServiceDeps {
  manager: CollectorManager;
  identity: Identity;
  nodeName: string;
  bpfStats: boolean;
  /** Reads and applies the configuration again; throws ConfigError for an invalid one. */
  reload: () => Promise<ConfigChange>;
  /** How old a collection queries may answer from (collectionMaxAgeSeconds). */
  collectionMaxAgeMs: number;
}

/** Labels of a sample as a key: one family's samples carry the same label names in the same order. */
function keyOf(labels: Labels): string {
  return Object.values(labels).join('\0');
}

/** Rates are over at least this long, against the newest snapshot at least this old. */
const minRateIntervalMs = 1000;
/** Queries closer together than this share a snapshot: a burst of queries keeps a handful, not one each. */
const snapshotSpacingMs = 250;

export class AgentService {
  /** Per view, oldest first: recent snapshots, so every query finds one at least a second old. */
  private readonly snapshots = new Map<FlowView, Snapshot[]>();
  /** Flows per view of the collections queries answered from lately (dropped with their collection). */
  private readonly collectedViews = new WeakMap<Collection, Map<FlowView, Promise<CollectedView>>>();

  constructor(private readonly deps: AgentServiceDeps) {}

  reloadConfig(): Promise<ConfigChange> {
    return this.deps.reload();
  }

  collectorNames(): string[] {
    return this.deps.manager.states().map((s) => s.name);
  }

  status(): AgentStatus {
    const { manager, identity } = this.deps;
    return {
      version: agentVersion,
      node: this.deps.nodeName,
      mode: identity.mode,
      kernel: os.release(),
      btf: existsSync('/sys/kernel/btf/vmlinux'),
      bpfStats: this.deps.bpfStats,
      uptimeSeconds: Math.round(process.uptime()),
      collectors: manager.states().map((state) => this.collectorStatus(state)),
      identity: identity.describe(),
    };
  }

  collectors(): CollectorStatus[] {
    return this.deps.manager.states().map((state) => this.collectorStatus(state));
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

  async flows(query: FlowQuery): Promise<FlowsResult> {
    // The network collector's families are all flows read; the other collectors' maps are not.
    const collection = await this.deps.manager.recentCollection('network', this.deps.collectionMaxAgeMs);
    if (!collection) return { view: query.view, total: 0, intervalSeconds: null, flows: [] };
    const view = await this.collectedView(collection, query.view);
    const { at } = view.snapshot;
    const kept = this.snapshots.get(query.view) ?? [];
    const baseline = kept.findLast((s) => at - s.at >= minRateIntervalMs);
    if (baseline) kept.splice(0, kept.indexOf(baseline));
    const newest = kept.at(-1);
    if (!newest || at - newest.at >= snapshotSpacingMs) kept.push(view.snapshot);
    this.snapshots.set(query.view, kept);
    // Queries of one collection find the same baseline: they share its answers.
    if (!view.answers || view.answers.baseline !== baseline) view.answers = await this.answers(view, query.view, baseline);
    const { answers } = view;
    const sorted = (answers.sorted[query.sort] ??= [...answers.flows].sort((a, b) => b.entry[query.sort] - a.entry[query.sort]));
    const flows: FlowEntry[] = [];
    let total = 0;
    for (const { flow, entry } of sorted) {
      if (!this.matches(flow.labels, query)) continue;
      if (total++ < query.limit) flows.push(entry);
    }
    return { view: query.view, total, intervalSeconds: answers.interval, flows };
  }

  private async answers(view: CollectedView, flowView: FlowView, baseline: Snapshot | undefined): Promise<ViewAnswers> {
    const interval = baseline ? (view.snapshot.at - baseline.at) / 1000 : null;
    const rate = (now: number, then: number | undefined) => (interval && interval > 0 ? Math.max(0, now - (then ?? 0)) / interval : null);
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
    return { baseline, interval, flows, sorted: {} };
  }

  /** The flows of a view in a collection, built by the first query that reads them; the others share them. */
  private collectedView(collection: Collection, view: FlowView): Promise<CollectedView> {
    let views = this.collectedViews.get(collection);
    if (!views) this.collectedViews.set(collection, (views = new Map()));
    let built = views.get(view);
    if (!built) views.set(view, (built = this.buildView(collection, view)));
    return built;
  }

  private async buildView(collection: Collection, view: FlowView): Promise<CollectedView> {
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

  private matches(labels: Labels, query: FlowQuery): boolean {
    if (query.namespace !== undefined && labels.namespace !== query.namespace) return false;
    if (query.pod !== undefined && labels.pod !== query.pod && labels.cgroup !== query.pod) return false;
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
