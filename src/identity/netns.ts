// Which workload lives in a network namespace. Two ways in: the namespace id
// our namespace gave it (IFLA_LINK_NETNSID of a veth whose peer is there),
// and its inode (what /proc/PID/ns/net links to, and what BPF reads as
// net->ns.inum). /proc tells us which processes share that namespace, and
// their cgroups name the workload (a pod's pause and app containers share the
// pod's cgroup as their common ancestor).
import { readdirSync, readlinkSync } from 'node:fs';
import { cgroupOfPid, commonAncestor } from './cgroups.js';

export interface NetnsWorkload {
  /** Common ancestor cgroup of the namespace's processes. */
  cgroupPath: string;
  pids: number;
}

export interface NetnsInodeWorkload {
  workload: NetnsWorkload;
  /** The namespace had no process left at the last scan: its workload as last seen, until forgetInode(). */
  gone: boolean;
}

type NetnsIdOf = (nsPath: string) => number;

export interface NetnsWorkloadsOptions {
  minRefreshIntervalMs?: number;
  /** How many processes of one namespace are read to find their common cgroup. */
  maxPidsPerNamespace?: number;
  now?: () => number;
  /** Where procfs is; tests point it at a fake tree. */
  procRoot?: string;
}

export class NetnsWorkloads {
  private byNsid = new Map<number, NetnsWorkload>();
  private byInode = new Map<number, NetnsWorkload>();
  private readonly goneInodes = new Map<number, NetnsWorkload>();
  /** The agent's own namespace: the node's, never a workload's. */
  private ownInode: number | undefined;
  private lastRefresh = -Infinity;
  private readonly minRefreshIntervalMs: number;
  private readonly maxPidsPerNamespace: number;
  private readonly now: () => number;
  private readonly procRoot: string;

  constructor(
    private readonly netnsId: NetnsIdOf,
    options: NetnsWorkloadsOptions = {},
  ) {
    this.minRefreshIntervalMs = options.minRefreshIntervalMs ?? 2000;
    this.maxPidsPerNamespace = options.maxPidsPerNamespace ?? 64;
    this.now = options.now ?? Date.now;
    this.procRoot = options.procRoot ?? '/proc';
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

  /**
   * The workload of namespace `nsid` from a scan at most minRefreshIntervalMs
   * old, even when it is known: a young namespace's first answer can name a
   * visitor (CNI plugins and set-up tools enter a new pod's namespace from
   * their own cgroups), so answers still settling are asked for again.
   */
  current(nsid: number): NetnsWorkload | undefined {
    if (nsid < 0) return undefined;
    this.refresh();
    return this.byNsid.get(nsid);
  }

  /**
   * The workload of the namespace with this inode, scanning /proc again
   * (rate-limited) when it is unknown. undefined for the agent's own
   * namespace (the node) and for namespaces no process lives in.
   */
  resolveInode(inode: number): NetnsInodeWorkload | undefined {
    const known = this.lookupInode(inode);
    if (known || inode === this.ownInode) return known;
    this.refresh();
    return this.lookupInode(inode);
  }

  /** Drops what is remembered of a gone namespace (its counts were retired). */
  forgetInode(inode: number): void {
    this.goneInodes.delete(inode);
  }

  private lookupInode(inode: number): NetnsInodeWorkload | undefined {
    const live = this.byInode.get(inode);
    if (live) return { workload: live, gone: false };
    const gone = this.goneInodes.get(inode);
    return gone ? { workload: gone, gone: true } : undefined;
  }

  refresh(force = false): boolean {
    const now = this.now();
    if (!force && now - this.lastRefresh < this.minRefreshIntervalMs) return false;
    this.lastRefresh = now;
    this.ownInode = this.namespaceOf('self');
    const pidsByNamespace = new Map<number, number[]>();
    for (const entry of readdirSync(this.procRoot)) {
      const pid = Number(entry);
      if (!Number.isInteger(pid)) continue;
      const ns = this.namespaceOf(entry);
      if (ns === undefined || ns === this.ownInode) continue;
      const pids = pidsByNamespace.get(ns);
      if (pids) pids.push(pid);
      else pidsByNamespace.set(ns, [pid]);
    }
    const byNsid = new Map<number, NetnsWorkload>();
    const byInode = new Map<number, NetnsWorkload>();
    for (const [inode, pids] of pidsByNamespace) {
      const cgroups = pids
        .slice(0, this.maxPidsPerNamespace)
        .map((pid) => cgroupOfPid(pid, this.procRoot))
        .filter((p): p is string => p !== undefined);
      if (!cgroups.length) continue;
      const workload = { cgroupPath: commonAncestor(cgroups), pids: pids.length };
      byInode.set(inode, workload);
      const nsid = this.firstNsid(pids);
      if (nsid >= 0) byNsid.set(nsid, workload); // else no veth of ours leads there
    }
    for (const [inode, workload] of this.byInode) if (!byInode.has(inode)) this.goneInodes.set(inode, workload);
    for (const inode of byInode.keys()) this.goneInodes.delete(inode);
    this.byNsid = byNsid;
    this.byInode = byInode;
    return true;
  }

  private firstNsid(pids: number[]): number {
    for (const pid of pids.slice(0, 4)) {
      try {
        return this.netnsId(`${this.procRoot}/${pid}/ns/net`);
      } catch {
        // the process exited between the scan and now: try another
      }
    }
    return -1;
  }

  /** The inode of a process's network namespace ("net:[4026531840]"); undefined when it is gone. */
  private namespaceOf(pid: string): number | undefined {
    let link: string;
    try {
      link = readlinkSync(`${this.procRoot}/${pid}/ns/net`);
    } catch {
      return undefined;
    }
    const inode = /^net:\[(\d+)\]$/.exec(link)?.[1];
    return inode === undefined ? undefined : Number(inode);
  }
}
