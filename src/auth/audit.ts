// The audit stream: one JSON line per mutating call and per denied request,
// on its own pino destination (audit.file, or stdout marked log="audit") so
// it can be shipped and kept apart from the agent's operational logs.
import { pino, type Logger } from 'pino';
import type { Principal } from './principal.js';

export interface AuditRecord {
  /** Who: null when no identity could be established. */
  principal: Pick<Principal, 'name' | 'kind' | 'role'> | null;
  /** What. */
  transport: 'http' | 'grpc';
  method: string;
  path: string;
  /** From where: the peer address. */
  remote: string;
  decision: 'allow' | 'deny';
  /** Why it was denied (unauthenticated, forbidden, rate_limited, auth_unavailable, too_many_streams); empty when allowed. */
  reason: string;
  /** The result: HTTP status, or the gRPC status code name. */
  status: number | string;
}

export function createAuditLog(file: string): Logger {
  const options = { base: { log: 'audit' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label: string) => ({ level: label }) } };
  // Synchronous: a record is on disk when the call it describes has been answered.
  return pino(options, file ? pino.destination({ dest: file, append: true, mkdir: true, sync: true }) : pino.destination({ dest: 1, sync: true }));
}

export function auditPrincipal(principal: Principal | undefined): AuditRecord['principal'] {
  return principal ? { name: principal.name, kind: principal.kind, role: principal.role } : null;
}
