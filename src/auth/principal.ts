// Who is calling and what a call needs, in one place for every transport
// (REST, gRPC, /metrics; the CLI through REST).

export const roles = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof roles)[number];

export interface Principal {
  /** A token's name, or the Kubernetes user name (system:serviceaccount:NS:NAME); "anonymous" with auth.mode=none. */
  name: string;
  kind: 'anonymous' | 'token' | 'serviceaccount' | 'user';
  role: Role;
  /** A tenant: only these namespaces' workloads are visible. Absent: every namespace. */
  namespaces?: readonly string[];
}

/**
 * What a call needs: a role (tokens), and the request attributes a
 * SubjectAccessReview asks about (auth.mode=kubernetes), as kube-rbac-proxy
 * does: a non-resource URL (/metrics), or a resource of group probepilot.io.
 * `tenant` calls may be granted per namespace; the answer is then filtered.
 */
export type Access =
  | { open: true }
  | {
      open?: false;
      role: Role;
      /** SubjectAccessReview: a resource of probepilot.io (resource, verb) or a non-resource path (verb get). */
      resource?: string;
      subresource?: string;
      nonResourcePath?: string;
      verb: 'get' | 'list' | 'watch' | 'update' | 'create';
      /** Granted per namespace too (a namespaced RoleBinding, or a token's namespaces): the answer only shows those. */
      tenant?: boolean;
    };

export type GuardedAccess = Exclude<Access, { open: true }>;

export function roleAllows(held: Role, needed: Role): boolean {
  return roles.indexOf(held) >= roles.indexOf(needed);
}

/** Which namespaces a caller may see; undefined: all. */
export interface Scope {
  namespaces?: ReadonlySet<string>;
}

export const everything: Scope = {};

export function scopeOf(principal: Principal): Scope {
  return principal.namespaces ? { namespaces: new Set(principal.namespaces) } : everything;
}

/** Labels naming a workload or a peer: a tenant sees them only for its own namespaces. */
const identityLabels = ['pod', 'container', 'workload', 'workload_kind', 'cgroup', 'peer_pod', 'peer_workload'];

/**
 * Whether a series (or event) with these labels is visible in a scope. A
 * tenant sees its namespaces' series, including flows whose peer is in its
 * namespaces or is no pod, and the agent's own series (no workload labels);
 * never a series naming another namespace's pods, nor the node's own
 * workloads (namespace "").
 */
export function visible(labels: Readonly<Record<string, string>>, scope: Scope): boolean {
  const allowed = scope.namespaces;
  if (!allowed) return true;
  const namespace = labels.namespace;
  if (namespace !== undefined) {
    if (!allowed.has(namespace)) return false;
  } else if (identityLabels.some((name) => labels[name] !== undefined)) return false;
  const peer = labels.peer_namespace;
  return peer === undefined || peer === '' || allowed.has(peer);
}

/** The access of each operation, shared by the transports that offer it (REST routes, gRPC methods). */
export const operations = {
  status: { role: 'viewer', resource: 'status', verb: 'get' },
  collectors: { role: 'viewer', resource: 'collectors', verb: 'list' },
  setCollector: { role: 'operator', resource: 'collectors', verb: 'update' },
  reload: { role: 'operator', resource: 'config', subresource: 'reload', verb: 'create' },
  flows: { role: 'viewer', resource: 'flows', verb: 'get', tenant: true },
  workloads: { role: 'viewer', resource: 'workloads', verb: 'get', tenant: true },
  events: { role: 'viewer', resource: 'events', verb: 'watch', tenant: true },
  metrics: { role: 'viewer', nonResourcePath: '/metrics', verb: 'get', tenant: true },
} as const satisfies Record<string, GuardedAccess>;
