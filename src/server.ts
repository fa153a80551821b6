// The agent's HTTP face: /metrics for Prometheus, /healthz and /readyz for
// the kubelet's probes.
import Fastify, { LogController } from 'fastify';
import type { Logger } from './log.js';
import type { PrometheusExporter } from './exporters/prometheus.js';
import type { CollectorState } from './collectors/manager.js';

export interface ServerDeps {
  log: Logger;
  exporter: PrometheusExporter;
  ready: () => boolean;
  collectors: () => CollectorState[];
}

export function buildServer({ log, exporter, ready, collectors }: ServerDeps) {
  // Scrapes every few seconds would drown the logs; errors are still logged.
  const app = Fastify({ loggerInstance: log.child({ component: 'http' }), logController: new LogController({ disableRequestLogging: true }) });

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
    reply.type('text/plain; charset=utf-8').send('ProbePilot agent\n\n/metrics  Prometheus exposition\n/healthz  liveness\n/readyz   readiness and collector states\n'),
  );

  return app;
}
