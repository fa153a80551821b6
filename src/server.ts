// The agent's HTTP face: /metrics for Prometheus, /healthz and /readyz for
// the kubelet's probes, and the REST API under /api/v1.
import { Readable } from 'node:stream';
import Fastify, { LogController } from 'fastify';
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

export function buildServer({ log, exporter, ready, collectors, service }: ServerDeps) {
  const app = Fastify({
    // Scrapes every few seconds would drown the logs; errors are still logged.
    loggerInstance: log.child({ component: 'http' }),
    logController: new LogController({ disableRequestLogging: true }),
    // Unknown query parameters and body fields are errors, not silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, useDefaults: true, allErrors: false } },
  });

  app.get('/metrics', async (request, reply) => {
    const answer = await exporter.scrape(scrapeTimeout(request.headers['x-prometheus-scrape-timeout-seconds']));
    if (!answer) {
      return reply.code(503).type('text/plain; charset=utf-8').send('the first collection did not finish within the scrape timeout; the next scrape gets it\n');
    }
    reply.type(exporter.contentType).header('vary', 'accept-encoding');
    if (!acceptsGzip(request.headers['accept-encoding'])) return reply.send(Readable.from(answer.exposition.chunks));
    return reply.header('content-encoding', 'gzip').send(await PrometheusExporter.gzipped(answer.exposition));
  });

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    const states = collectors().map(({ name, enabled, up, reason }) => ({ name, enabled, up, reason }));
    return reply.code(ready() ? 200 : 503).send({ status: ready() ? 'ready' : 'starting', collectors: states });
  });

  app.get('/', async (_request, reply) =>
    reply
      .type('text/plain; charset=utf-8')
      .send('ProbePilot agent\n\n/metrics               Prometheus exposition\n/healthz               liveness\n/readyz                readiness and collector states\n/api/v1/openapi.json   the REST API\n'),
  );

  registerApi(app, service);

  return app;
}
