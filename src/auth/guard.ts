// The one check in front of every transport: who is calling (bearer token,
// or anonymous with auth.mode=none), whether the call is allowed (role, or a
// SubjectAccessReview), whether the caller is within its rate, and the audit
// record of each denial. REST, gRPC and /metrics all call check().
import type { Logger } from '../log.js';
import type { AgentConfig } from '../config.js';
import { createAuditLog, auditPrincipal, type AuditRecord } from './audit.js';
import { apiGroup, ReviewUnavailableError, type KubernetesReviewer, type ReviewedUser } from './kubernetes.js';
import { roleAllows, type GuardedAccess, type Principal } from './principal.js';
import { RateLimiter } from './rate-limit.js';
import { TokenStore } from './tokens.js';

export interface Call {
  transport: AuditRecord['transport'];
  method: string;
  path: string;
  remote: string;
  /** The Authorization header (or gRPC metadata). */
  authorization: string | undefined;
}

export type Denial = { status: 401 | 403 | 429 | 503; error: 'unauthenticated' | 'forbidden' | 'rate_limited' | 'auth_unavailable' | 'too_many_streams'; message: string; retryAfterSeconds?: number };
export type Decision = { allowed: true; principal: Principal } | ({ allowed: false; principal?: Principal } & Denial);

const anonymous: Principal = { name: 'anonymous', kind: 'anonymous', role: 'admin' };

/** "Bearer TOKEN" (scheme case-insensitive, one space or more); anything else is no token. */
export function bearerToken(header: string | undefined): string | undefined {
  const match = /^Bearer +([\x21-\x7e]+) *$/i.exec(header ?? '');
  return match?.[1];
}

export interface GuardDeps {
  log: Logger;
  /** With auth.mode=kubernetes: TokenReview and SubjectAccessReview through the API server. */
  reviewer?: KubernetesReviewer;
  /** The namespaces with pods on this node: a tenant's namespaced grants are looked for in them. */
  namespaces?: () => Iterable<string>;
}

export class Guard {
  private readonly tokens: TokenStore | undefined;
  private readonly reviewer: KubernetesReviewer | undefined;
  private readonly limiter: RateLimiter;
  private readonly streams = new Map<string, number>();
  private readonly auditLog: Logger;

  constructor(
    private readonly config: AgentConfig,
    private readonly deps: GuardDeps,
  ) {
    const log = deps.log.child({ component: 'auth' });
    if (config.auth.mode === 'tokens') this.tokens = new TokenStore(config.auth.tokenFiles, (err) => log.error({ err: err.message }, 'token file not reloaded; the previous tokens stay in force'));
    if (config.auth.mode === 'kubernetes') {
      if (!deps.reviewer) throw new Error('auth.mode=kubernetes needs a KubernetesReviewer');
      this.reviewer = deps.reviewer;
    }
    this.limiter = new RateLimiter(config.auth.rateLimit.requestsPerSecond, config.auth.rateLimit.burst);
    this.auditLog = createAuditLog(config.audit.file);
  }

  get mode(): AgentConfig['auth']['mode'] {
    return this.config.auth.mode;
  }

  async check(call: Call, access: GuardedAccess): Promise<Decision> {
    const decision = await this.decide(call, access);
    if (!decision.allowed) this.audit(call, decision.principal, 'deny', decision.error, decision.status);
    return decision;
  }

  /** Counts an event stream of this caller; undefined when it holds maxStreamsPerIdentity already, else the function that ends it. */
  openStream(principal: Principal, remote: string): (() => void) | undefined {
    // No identities without auth: the agent-wide events.maxSubscribers is the bound.
    if (this.config.auth.mode === 'none') return () => undefined;
    const key = this.rateKey(principal, remote);
    const open = this.streams.get(key) ?? 0;
    if (open >= this.config.auth.maxStreamsPerIdentity) return undefined;
    this.streams.set(key, open + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const left = (this.streams.get(key) ?? 1) - 1;
      if (left > 0) this.streams.set(key, left);
      else this.streams.delete(key);
    };
  }

  audit(call: Omit<Call, 'authorization'>, principal: Principal | undefined, decision: AuditRecord['decision'], reason: string, status: AuditRecord['status']): void {
    const record: AuditRecord = { principal: auditPrincipal(principal), transport: call.transport, method: call.method, path: call.path, remote: call.remote, decision, reason, status };
    this.auditLog.info(record, 'audit');
  }

  private rateKey(principal: Principal | undefined, remote: string): string {
    return !principal || principal.kind === 'anonymous' ? `address:${remote}` : `${principal.kind}:${principal.name}`;
  }

  private limited(principal: Principal | undefined, remote: string): (Denial & { allowed: false }) | undefined {
    const wait = this.limiter.take(this.rateKey(principal, remote));
    if (wait === 0) return undefined;
    return { allowed: false, status: 429, error: 'rate_limited', message: `more than ${this.config.auth.rateLimit.requestsPerSecond} requests per second (auth.rateLimit); retry in ${wait.toFixed(2)} s`, retryAfterSeconds: Math.max(1, Math.ceil(wait)) };
  }

  private async decide(call: Call, access: GuardedAccess): Promise<Decision> {
    // No identities to limit without auth (a standalone host's own tools and scrapers share one address).
    if (this.config.auth.mode === 'none') return { allowed: true, principal: anonymous };
    const token = bearerToken(call.authorization);
    if (token === undefined) return this.limited(undefined, call.remote) ?? { allowed: false, status: 401, error: 'unauthenticated', message: 'a bearer token is required (Authorization: Bearer TOKEN)' };
    if (this.tokens) {
      const principal = this.tokens.lookup(token);
      if (!principal) return this.limited(undefined, call.remote) ?? { allowed: false, status: 401, error: 'unauthenticated', message: 'unknown bearer token' };
      const limited = this.limited(principal, call.remote);
      if (limited) return { ...limited, principal };
      if (!roleAllows(principal.role, access.role)) return { allowed: false, principal, status: 403, error: 'forbidden', message: `${call.method} ${call.path} needs the ${access.role} role; token "${principal.name}" has ${principal.role}` };
      return { allowed: true, principal };
    }
    return this.decideKubernetes(call, access, token);
  }

  private async decideKubernetes(call: Call, access: GuardedAccess, token: string): Promise<Decision> {
    const reviewer = this.reviewer!;
    let user: ReviewedUser | null;
    try {
      user = await reviewer.authenticate(token);
    } catch (err) {
      if (err instanceof ReviewUnavailableError) return this.limited(undefined, call.remote) ?? { allowed: false, status: 503, error: 'auth_unavailable', message: err.message, retryAfterSeconds: 5 };
      throw err;
    }
    if (!user) return this.limited(undefined, call.remote) ?? { allowed: false, status: 401, error: 'unauthenticated', message: 'the Kubernetes API server did not accept the bearer token (TokenReview)' };
    const kind = user.username.startsWith('system:serviceaccount:') ? 'serviceaccount' : 'user';
    let principal: Principal = { name: user.username, kind, role: access.role };
    const limited = this.limited(principal, call.remote);
    if (limited) return { ...limited, principal };
    try {
      if (await reviewer.authorize(user, access)) return { allowed: true, principal };
      // A RoleBinding in some namespaces makes a tenant: it sees those namespaces only.
      if (access.tenant) {
        const granted: string[] = [];
        for (const namespace of new Set(this.deps.namespaces?.() ?? [])) if (await reviewer.authorize(user, access, namespace)) granted.push(namespace);
        principal = { ...principal, namespaces: granted.sort() };
        if (granted.length) return { allowed: true, principal };
      }
    } catch (err) {
      if (err instanceof ReviewUnavailableError) return { allowed: false, principal, status: 503, error: 'auth_unavailable', message: err.message, retryAfterSeconds: 5 };
      throw err;
    }
    const what = access.nonResourcePath !== undefined ? `${access.verb} ${access.nonResourcePath}` : `${access.verb} ${access.resource}.${apiGroup}`;
    return { allowed: false, principal, status: 403, error: 'forbidden', message: `${user.username} may not ${what} (SubjectAccessReview)` };
  }
}
