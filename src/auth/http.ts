// The guard on the HTTP server: every route declares its access in its
// route config; a route without one (an unknown URL) needs a viewer, so an
// unauthenticated caller cannot even learn which URLs exist.
import type { FastifyRequest } from 'fastify';
import type { AgentApp } from '../api/rest.js';
import type { AgentConfig } from '../config.js';
import type { Guard } from './guard.js';
import type { Access, GuardedAccess, Principal } from './principal.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: Access;
  }
  interface FastifyRequest {
    principal: Principal | undefined;
  }
}

const mutating = new Set(['PUT', 'POST', 'PATCH', 'DELETE']);

export function requestPath(request: FastifyRequest): string {
  const url = request.raw.url ?? '/';
  const query = url.indexOf('?');
  return query < 0 ? url : url.slice(0, query);
}

/** The peer address, as the audit log and the unauthenticated rate limit key on it. */
export function remoteOf(request: FastifyRequest): string {
  return request.socket.remoteAddress ?? 'unknown';
}

export function installGuard(app: AgentApp, guard: Guard, limits: AgentConfig['limits']): void {
  app.decorateRequest('principal', undefined);
  app.addHook('onRequest', async (request: FastifyRequest, reply) => {
    const path = requestPath(request);
    const url = request.raw.url ?? '/';
    if (url.length - path.length > limits.queryBytes) {
      return reply.code(414).send({ error: 'uri_too_long', message: `the query string is longer than ${limits.queryBytes} bytes (limits.queryBytes)` });
    }
    const declared = request.routeOptions.config?.access;
    if (declared?.open) return;
    const access: GuardedAccess = declared ?? { role: 'viewer', nonResourcePath: path, verb: 'get' };
    const decision = await guard.check({ transport: 'http', method: request.method, path, remote: remoteOf(request), authorization: request.headers.authorization }, access);
    if (!decision.allowed) {
      if (decision.retryAfterSeconds !== undefined) reply.header('retry-after', String(decision.retryAfterSeconds));
      if (decision.status === 401) reply.header('www-authenticate', 'Bearer realm="probepilot"');
      return reply.code(decision.status).send({ error: decision.error, message: decision.message });
    }
    request.principal = decision.principal;
  });
  app.addHook('onResponse', async (request: FastifyRequest, reply) => {
    if (!mutating.has(request.method) || !request.principal) return;
    guard.audit({ transport: 'http', method: request.method, path: requestPath(request), remote: remoteOf(request) }, request.principal, 'allow', '', reply.statusCode);
  });
}
