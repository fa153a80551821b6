// Turns a workload (a cgroup path) into the identity labels every
// per-workload metric carries. Standalone mode: the cgroup path itself.
import { sanitizeLabelValue, type FamilyDescriptor, type Labels, type MetricFamily } from '../metrics/model.js';
import { CgroupPaths, rootCgroup } from './cgroups.js';
import { NetnsWorkloads } from './netns.js';

/**
 * What a metric's source can tell apart: a container (tracepoints see the
 * task's own cgroup) or only a pod (traffic behind a pod's veth).
 */
export type IdentityScope = 'container' | 'pod';

/** A pod as the peer of some traffic. */
export interface PeerPod {
  namespace: string;
  pod: string;
  workload: string;
}

/** Who traffic peers can be named as: pods by address, and the addresses of the cluster's other nodes. */
export interface Peers {
  pods: ReadonlyMap<string, PeerPod>;
  nodes: ReadonlySet<string>;
}

export interface Identity {
  readonly mode: 'standalone' | 'kubernetes';
  readonly cgroups: CgroupPaths;
  readonly netns: NetnsWorkloads;
  /** Identity label names a family of this scope carries, in order. */
  labelNames(scope: IdentityScope): readonly string[];
  /** Labels for a workload's cgroup path; the root stands for the node itself and for what cannot be attributed. */
  labelsFor(cgroupPath: string | undefined, scope: IdentityScope): Labels;
  /** Pods by IP address (text) and node addresses, for the peer side of traffic; the same object until something changes. Empty in standalone mode. */
  peers(): Peers;
  /** Sizes of what the identity keeps (pods known, label cache, …), for the status API. */
  describe(): Record<string, number>;
  /** What the identity source reports about itself (e.g. whether the API server answers). */
  readonly families: readonly FamilyDescriptor[];
  metrics(): MetricFamily[];
}

export class StandaloneIdentity implements Identity {
  readonly mode = 'standalone';
  readonly families: readonly FamilyDescriptor[] = [];
  private readonly cache = new Map<string, Labels>();
  private readonly noPeers: Peers = { pods: new Map(), nodes: new Set() };

  constructor(
    readonly cgroups: CgroupPaths,
    readonly netns: NetnsWorkloads,
  ) {}

  labelNames(): readonly string[] {
    return ['cgroup'];
  }

  /** Standalone mode has one identity whatever the scope: the cgroup path. */
  labelsFor(cgroupPath: string | undefined): Labels {
    const key = cgroupPath ?? rootCgroup;
    let labels = this.cache.get(key);
    if (!labels) {
      labels = Object.freeze({ cgroup: sanitizeLabelValue(key) });
      if (this.cache.size > 100_000) this.cache.clear();
      this.cache.set(key, labels);
    }
    return labels;
  }

  /** Standalone mode knows no pods; peers fall into their classes (host, world, configured CIDRs). */
  peers(): Peers {
    return this.noPeers;
  }

  describe(): Record<string, number> {
    return { labelCache: this.cache.size };
  }

  metrics(): MetricFamily[] {
    return [];
  }
}
