// Which cgroups' security events leave the kernel: the verdicts of the
// kernel's security_scope map (bpf/events.bpf.c explains the lookup), worked
// out from security.namespaces, security.cgroups and security.nodeProcesses
// and the cgroups and pods the identity knows now. Only directories get a
// verdict (the root, kubepods, pods, listed cgroups); everything below them
// follows the deepest decided ancestor.
import path from 'node:path';
import type { AgentConfig } from '../config.js';
import { rootCgroup } from '../identity/cgroups.js';
import type { Identity } from '../identity/identity.js';
import { isKubepodsDir, parseKubeletCgroup } from '../identity/kubelet.js';

/** The values of security_scope in bpf/events.bpf.c. */
export const scopeVerdicts = { include: 1, exclude: 2 } as const;
export type ScopeVerdict = (typeof scopeVerdicts)[keyof typeof scopeVerdicts];

type SecurityConfig = Pick<AgentConfig['security'], 'namespaces' | 'cgroups' | 'nodeProcesses'>;

/** Whether any scoping is configured; without it the kernel skips the lookup altogether. */
export function securityScoped(security: SecurityConfig): boolean {
  const { namespaces, cgroups, nodeProcesses } = security;
  return nodeProcesses !== 'auto' || [namespaces.include, namespaces.exclude, cgroups.include, cgroups.exclude].some((list) => list.length > 0);
}

function trimmed(cgroupPath: string): string {
  return cgroupPath.length > 1 && cgroupPath.endsWith('/') ? cgroupPath.slice(0, -1) : cgroupPath;
}

/** cgroup id → verdict, for the cgroups the identity knows (gone ones left out). Namespaces count in Kubernetes mode only. */
export function securityScope(security: SecurityConfig, identity: Identity): Map<bigint, ScopeVerdict> {
  const { include, exclude } = scopeVerdicts;
  const kubernetes = identity.mode === 'kubernetes';
  const namespaceInclude = kubernetes ? new Set(security.namespaces.include) : new Set<string>();
  const namespaceExclude = kubernetes ? new Set(security.namespaces.exclude) : new Set<string>();
  const cgroupInclude = new Set(security.cgroups.include.map(trimmed));
  const cgroupExclude = new Set(security.cgroups.exclude.map(trimmed));
  const narrowed = namespaceInclude.size > 0 || cgroupInclude.size > 0;
  const node: ScopeVerdict = security.nodeProcesses === 'include' ? include : security.nodeProcesses === 'exclude' ? exclude : narrowed ? exclude : include;
  // Pods of no listed namespace: in unless some include list narrows what is in.
  const pods: ScopeVerdict = narrowed ? exclude : include;
  const verdicts = new Map<bigint, ScopeVerdict>();
  for (const [id, cgroupPath] of identity.cgroups.known()) {
    if (identity.cgroups.isGone(id)) continue;
    let verdict: ScopeVerdict | undefined;
    if (cgroupPath === rootCgroup) verdict = node;
    if (kubernetes && isKubepodsRoot(cgroupPath)) verdict = pods;
    if (kubernetes && isPodDir(cgroupPath)) {
      const { namespace } = identity.labelsFor(cgroupPath, 'pod');
      if (namespace !== undefined && namespaceExclude.has(namespace)) verdict = exclude;
      else if (namespace !== undefined && namespaceInclude.has(namespace)) verdict = include;
    }
    // A listed cgroup is the most specific rule for its own directory.
    if (cgroupExclude.has(cgroupPath)) verdict = exclude;
    else if (cgroupInclude.has(cgroupPath)) verdict = include;
    if (verdict !== undefined) verdicts.set(id, verdict);
  }
  return verdicts;
}

/** The pod's own cgroup: a kubelet pod cgroup whose parent is none. */
function isPodDir(cgroupPath: string): boolean {
  return parseKubeletCgroup(cgroupPath) !== undefined && parseKubeletCgroup(path.posix.dirname(cgroupPath)) === undefined;
}

/** The kubelet's top directory: named like it, with no such directory above it. */
function isKubepodsRoot(cgroupPath: string): boolean {
  const parts = cgroupPath.split('/').filter(Boolean);
  return parts.length > 0 && isKubepodsDir(parts.at(-1)!) && !parts.slice(0, -1).some(isKubepodsDir);
}
