// The agent's HTTP face: /metrics for Prometheus, /healthz and /readyz for
// the kubelet's probes, and the REST API under /api/v1.
import Fastify, { LogController } from 'fastify';
import type { Logger } from './log.js';
import type { PrometheusExporter } from './exporters/prometheus.js';
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

export function buildServer({ log, exporter, ready, collectors, service }: ServerDeps) {
  const app = Fastify({
    // Scrapes every few seconds would drown the logs; errors are still logged.
    loggerInstance: log.child({ component: 'http' }),
    logController: new LogController({ disableRequestLogging: true }),
    // Unknown query parameters and body fields are errors, not silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, useDefaults: true, allErrors: false } },
  });

  app.get('/metrics', async (_request, reply) => {
    const body = await exporter.metrics();
    return reply.type(exporter.contentType).send(body);
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
