// The agent's HTTP face: /metrics for Prometheus, /healthz and /readyz for
// the kubelet's probes, and the REST API under /api/v1.
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { Readable } from 'node:stream';
import type { SecureContextOptions } from 'node:tls';
import Fastify, { LogController } from 'fastify';
import type { AgentConfig } from './config.js';
import type { Guard } from './auth/guard.js';
import { installGuard } from './auth/http.js';
import { operations, scopeOf, visible } from './auth/principal.js';
import { tlsEnabled, tlsOptions } from './auth/tls.js';
import type { Logger } from './log.js';
import { PrometheusExporter } from './exporters/prometheus.js';
import type { CollectorState } from './collectors/manager.js';
import { registerApi } from './api/rest.js';
import type { AgentService } from './api/service.js';

export interface ServerDeps {
  log: Logger;
  exporter: PrometheusExporter;
  ready: () => boolean;
  collectors: () => CollectorState[];
  service: AgentService;
  guard: Guard;
  tls: AgentConfig['tls'];
  limits: AgentConfig['limits'];
}

/** Whether an Accept-Encoding header takes gzip (Prometheus sends "gzip"); "gzip;q=0" refuses it. */
export function acceptsGzip(header: string | undefined): boolean {
  return (header ?? '').split(',').some((part) => {
    const [coding, ...params] = part.trim().split(';');
    if (coding?.trim().toLowerCase() !== 'gzip') return false;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}

/** The scraper's timeout in seconds (X-Prometheus-Scrape-Timeout-Seconds); undefined when absent or not a positive number. */
export function scrapeTimeout(header: string | string[] | undefined): number | undefined {
  const seconds = Number(Array.isArray(header) ? header[0] : header);
  return header !== undefined && Number.isFinite(seconds) && seconds > 0 ? seconds : undefined;
}

/** The node server under fastify: HTTPS with tls files, and the limits against big or slow clients. */
function nodeServer(tls: AgentConfig['tls'], limits: AgentConfig['limits'], handler: Parameters<typeof createHttpServer>[1]): { server: HttpServer; setSecureContext?: (options: SecureContextOptions) => void } {
  const common = { maxHeaderSize: limits.headerBytes, headersTimeout: limits.headersTimeoutSeconds * 1000, requestTimeout: limits.requestTimeoutSeconds * 1000 };
  if (!tlsEnabled(tls)) return { server: createHttpServer(common, handler) };
  const server = createHttpsServer({ ...common, ...tlsOptions(tls) }, handler);
  // An https.Server is an http.Server to fastify (same request events and methods); the type differs only by its TLS half.
  return { server: server as unknown as HttpServer, setSecureContext: (options) => server.setSecureContext(options) };
}

export function buildServer({ log, exporter, ready, collectors, service, guard, tls, limits }: ServerDeps) {
  let secure: ((options: SecureContextOptions) => void) | undefined;
  const app = Fastify({
    serverFactory: (handler) => {
      const built = nodeServer(tls, limits, handler);
      secure = built.setSecureContext;
      return built.server;
    },
    bodyLimit: limits.bodyBytes,
    // Scrapes every few seconds would drown the logs; errors are still logged.
    loggerInstance: log.child({ component: 'http' }),
    logController: new LogController({ disableRequestLogging: true }),
    // Unknown query parameters and body fields are errors, not silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, useDefaults: true, allErrors: false } },
  });

  installGuard(app, guard, limits);
  const open = { config: { access: { open: true as const } } };

  app.get('/metrics', { config: { access: operations.metrics } }, async (request, reply) => {
    const answer = await exporter.scrape(scrapeTimeout(request.headers['x-prometheus-scrape-timeout-seconds']));
    if (!answer) {
      return reply.code(503).type('text/plain; charset=utf-8').send('the first collection did not finish within the scrape timeout; the next scrape gets it\n');
    }
    reply.type(exporter.contentType).header('vary', 'accept-encoding');
    // A tenant's scrape: its namespaces' series and the agent's own, rendered from the same collection.
    const scope = scopeOf(request.principal!);
    const exposition = scope.namespaces ? await exporter.filtered(answer.exposition, (labels) => visible(labels, scope)) : answer.exposition;
    if (!acceptsGzip(request.headers['accept-encoding'])) return reply.send(Readable.from(exposition.chunks));
    return reply.header('content-encoding', 'gzip').send(await PrometheusExporter.gzipped(exposition));
  });

  app.get('/healthz', open, async () => ({ status: 'ok' }));

  app.get('/readyz', open, async (_request, reply) => {
    const states = collectors().map(({ name, enabled, up, reason }) => ({ name, enabled, up, reason }));
    return reply.code(ready() ? 200 : 503).send({ status: ready() ? 'ready' : 'starting', collectors: states });
  });

  app.get('/', open, async (_request, reply) =>
    reply
      .type('text/plain; charset=utf-8')
      .send('ProbePilot agent\n\n/metrics               Prometheus exposition\n/healthz               liveness\n/readyz                readiness and collector states\n/api/v1/openapi.json   the REST API\n'),
  );

  registerApi(app, service, guard);

  return { app, setSecureContext: (options: SecureContextOptions) => secure?.(options) };
}
