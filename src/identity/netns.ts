// Which workload lives behind a veth: the kernel tells us the peer's network
// namespace id (IFLA_LINK_NETNSID); /proc tells us which processes share that
// namespace, and their cgroups name the workload (a pod's pause and app
// containers share the pod's cgroup as their common ancestor).
import { readdirSync, readlinkSync } from 'node:fs';
import { cgroupOfPid, commonAncestor } from './cgroups.js';

export interface NetnsWorkload {
  /** Common ancestor cgroup of the namespace's processes. */
  cgroupPath: string;
  pids: number;
}

type NetnsIdOf = (nsPath: string) => number;

export interface NetnsWorkloadsOptions {
  minRefreshIntervalMs?: number;
  /** How many processes of one namespace are read to find their common cgroup. */
  maxPidsPerNamespace?: number;
  now?: () => number;
}

export class NetnsWorkloads {
  private byNsid = new Map<number, NetnsWorkload>();
  private lastRefresh = -Infinity;
  private readonly minRefreshIntervalMs: number;
  private readonly maxPidsPerNamespace: number;
  private readonly now: () => number;

  constructor(
    private readonly netnsId: NetnsIdOf,
    options: NetnsWorkloadsOptions = {},
  ) {
    this.minRefreshIntervalMs = options.minRefreshIntervalMs ?? 2000;
    this.maxPidsPerNamespace = options.maxPidsPerNamespace ?? 64;
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.byNsid.size;
  }

  /** The workload of namespace `nsid`, scanning /proc again (rate-limited) when it is unknown. */
  resolve(nsid: number): NetnsWorkload | undefined {
    if (nsid < 0) return undefined;
    const known = this.byNsid.get(nsid);
    if (known) return known;
    this.refresh();
    return this.byNsid.get(nsid);
  }

  refresh(force = false): boolean {
    const now = this.now();
    if (!force && now - this.lastRefresh < this.minRefreshIntervalMs) return false;
    this.lastRefresh = now;
    const own = namespaceOf('self');
    const pidsByNamespace = new Map<string, number[]>();
    for (const entry of readdirSync('/proc')) {
      const pid = Number(entry);
      if (!Number.isInteger(pid)) continue;
      const ns = namespaceOf(entry);
      if (!ns || ns === own) continue;
      const pids = pidsByNamespace.get(ns);
      if (pids) pids.push(pid);
      else pidsByNamespace.set(ns, [pid]);
    }
    const next = new Map<number, NetnsWorkload>();
    for (const pids of pidsByNamespace.values()) {
      const nsid = this.firstNsid(pids);
      if (nsid < 0) continue; // no veth of ours leads there
      const cgroups = pids
        .slice(0, this.maxPidsPerNamespace)
        .map(cgroupOfPid)
        .filter((p): p is string => p !== undefined);
      if (cgroups.length) next.set(nsid, { cgroupPath: commonAncestor(cgroups), pids: pids.length });
    }
    this.byNsid = next;
    return true;
  }

  private firstNsid(pids: number[]): number {
    for (const pid of pids.slice(0, 4)) {
      try {
        return this.netnsId(`/proc/${pid}/ns/net`);
      } catch {
        // the process exited between the scan and now: try another
      }
    }
    return -1;
  }
}

function namespaceOf(pid: string): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return undefined;
  }
}
