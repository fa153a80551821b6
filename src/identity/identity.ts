// Turns a workload (a cgroup path) into the identity labels every
// per-workload metric carries. Standalone mode: the cgroup path itself.
import { sanitizeLabelValue, type Labels } from '../metrics/model.js';
import { CgroupPaths, rootCgroup } from './cgroups.js';
import { NetnsWorkloads } from './netns.js';

export interface Identity {
  readonly mode: 'standalone';
  readonly labelNames: readonly string[];
  readonly cgroups: CgroupPaths;
  readonly netns: NetnsWorkloads;
  /** Labels for a workload's cgroup path; the root stands for the node itself and for what cannot be attributed. */
  labelsFor(cgroupPath: string | undefined): Labels;
}

export class StandaloneIdentity implements Identity {
  readonly mode = 'standalone';
  readonly labelNames = ['cgroup'] as const;
  private readonly cache = new Map<string, Labels>();

  constructor(
    readonly cgroups: CgroupPaths,
    readonly netns: NetnsWorkloads,
  ) {}

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
}
