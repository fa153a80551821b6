// The REST API (/api/v1) over the service layer. Every route is declared once
// with its JSON schemas: fastify validates inputs with them and
// /api/v1/openapi.json is built from them. Errors are JSON {error, message};
// bad input is a 4xx, never a 5xx.
import type { FastifyInstance, FastifyReply, FastifyRequest, RawReplyDefaultExpression, RawRequestDefaultExpression, RawServerDefault } from 'fastify';
import { Readable } from 'node:stream';
import type { Logger } from '../log.js';
import { TimeSlicer } from '../metrics/slice.js';
import { UnknownCollectorError } from '../collectors/manager.js';
import { ConfigError } from '../config.js';
import { agentVersion } from '../version.js';
import { agentEventTypes, eventTypes, type StreamedEvent } from './events.js';
import { TraceRefusedError } from '../events/pipeline.js';
import type { Guard } from '../auth/guard.js';
import { remoteOf } from '../auth/http.js';
import { operations, scopeOf, type Access, type Principal } from '../auth/principal.js';
import { eventStreamRequest, EventStreamRequestError, flowDirections, securityKinds, flowJson, printablePattern, flowLimit, flowProtocols, flowSorts, flowViews, workloadLimit, workloadSorts, type AgentService, type FlowQuery, type WorkloadQuery } from './service.js';

type JsonSchema = Record<string, unknown>;

interface Route {
  method: 'GET' | 'PUT' | 'POST';
  /** fastify syntax (:name). */
  url: string;
  summary: string;
  /** Who may call it (roles, SubjectAccessReview attributes): every route declares it, so none ships unprotected. */
  access: Access;
  querystring?: JsonSchema;
  params?: JsonSchema;
  body?: JsonSchema;
  /** Schema of the 200 answer; text/event-stream routes have none. */
  response?: JsonSchema;
  eventStream?: boolean;
  handler: (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}

const errorSchema: JsonSchema = {
  type: 'object',
  required: ['error', 'message'],
  properties: { error: { type: 'string' }, message: { type: 'string' } },
};

const programSchema: JsonSchema = {
  type: 'object',
  properties: { name: { type: 'string' }, id: { type: 'number', description: 'Kernel program id (bpftool prog show id N).' }, runCount: { type: 'number' }, runTimeSeconds: { type: 'number' } },
};

const collectorSchema: JsonSchema = {
  type: 'object',
  required: ['name', 'enabled', 'up', 'reason'],
  properties: {
    name: { type: 'string' },
    enabled: { type: 'boolean' },
    up: { type: 'boolean' },
    reason: { type: 'string', description: 'Why it is not up; empty when it is.' },
    lastCollectSeconds: { type: 'number' },
    collectErrors: { type: 'number' },
    series: { type: 'number', description: 'Samples of its families at the last collection.' },
    programs: { type: 'array', items: programSchema, description: 'Run counts and times need bpfStats.' },
    details: { type: 'object', additionalProperties: true, description: 'Collector-specific: the network collector lists its interfaces and attach modes (tcx, clsact).' },
  },
};

const statusSchema: JsonSchema = {
  type: 'object',
  properties: {
    version: { type: 'string' },
    node: { type: 'string' },
    mode: { type: 'string', enum: ['standalone', 'kubernetes'] },
    kernel: { type: 'string' },
    btf: { type: 'boolean' },
    bpfStats: { type: 'boolean' },
    uptimeSeconds: { type: 'number' },
    collectors: { type: 'array', items: collectorSchema },
    identity: { type: 'object', additionalProperties: { type: 'number' } },
    events: {
      type: 'object',
      description: 'Traces open now: subscribers per kind, the kinds whose programs are attached, and those programs (kernel ids).',
      properties: {
        subscribers: { type: 'object', additionalProperties: { type: 'number' } },
        attached: { type: 'array', items: { type: 'string' } },
        programs: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, id: { type: 'number' } } } },
      },
    },
  },
};

const labels: JsonSchema = { type: 'object', additionalProperties: { type: 'string' } };
const nullableNumber: JsonSchema = { type: ['number', 'null'] };
const flowsSchema: JsonSchema = {
  type: 'object',
  properties: {
    view: { type: 'string' },
    total: { type: 'number' },
    intervalSeconds: nullableNumber,
    flows: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          workload: labels,
          direction: { type: 'string' },
          peer: labels,
          protocol: { type: 'string' },
          bytes: { type: 'number' },
          packets: { type: 'number' },
          bytesPerSecond: nullableNumber,
          packetsPerSecond: nullableNumber,
          tuple: {
            type: 'object',
            description: 'view=5tuple: the flow as the workload sees it (local = the workload\'s end); direction says who sent the first packet.',
            properties: {
              family: { type: 'string', enum: ['ipv4', 'ipv6'] },
              localAddress: { type: 'string' },
              localPort: { type: 'number' },
              remoteAddress: { type: 'string' },
              remotePort: { type: 'number' },
              remotePod: labels,
              bytesSent: { type: 'number' },
              bytesReceived: { type: 'number' },
              packetsSent: { type: 'number' },
              packetsReceived: { type: 'number' },
              tcpFlagsSent: { type: 'array', items: { type: 'string' } },
              tcpFlagsReceived: { type: 'array', items: { type: 'string' } },
              firstSeen: { type: 'string', format: 'date-time' },
              lastSeen: { type: 'string', format: 'date-time' },
              active: { type: 'boolean' },
            },
          },
        },
      },
    },
  },
};

const name: JsonSchema = { type: 'string', minLength: 1, maxLength: 253, pattern: printablePattern };
const podOrCgroup: JsonSchema = { type: 'string', minLength: 1, maxLength: 4096, pattern: printablePattern, description: 'A pod name, or a cgroup path in standalone mode.' };

const workloadsSchema: JsonSchema = {
  type: 'object',
  properties: {
    total: { type: 'number' },
    intervalSeconds: { ...nullableNumber, description: 'The interval rates and the run-queue p99 are over; null for the first query (they are null then).' },
    collectorsOff: { type: 'array', items: { type: 'string' }, description: 'Collectors a column needs that are not running: their columns are null.' },
    workloads: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          workload: labels,
          rxBytesPerSecond: nullableNumber,
          txBytesPerSecond: nullableNumber,
          rxPacketsPerSecond: nullableNumber,
          txPacketsPerSecond: nullableNumber,
          runqueueLatencyP99Seconds: { ...nullableNumber, description: 'From the run-queue histogram buckets filled during the interval.' },
          syscallsPerSecond: nullableNumber,
          tcpRetransmitsPerSecond: nullableNumber,
          gpuUtilization: { ...nullableNumber, description: 'Share of GPU time its processes kept SMs busy, summed over GPUs.' },
        },
      },
    },
  },
};

const limitSchema = ({ max, default: fallback }: { max: number; default: number }): JsonSchema => ({ type: 'integer', minimum: 1, maximum: max, default: fallback });

/** A handler of a query with a limit, which it checks first: the schema's coercion also reads "1e400" as a number, only a plain integer in range is a limit. */
function limitedQuery<Q extends { limit: number }>(max: number, handle: (query: Q, reply: FastifyReply, request: FastifyRequest) => Promise<unknown>): Route['handler'] {
  return async (request, reply) => {
    const query = request.query as Q;
    if (!Number.isSafeInteger(query.limit) || query.limit < 1 || query.limit > max) {
      return reply.code(400).send({ error: 'bad_request', message: `querystring/limit must be an integer from 1 to ${max}` });
    }
    return handle(query, reply, request);
  };
}
/** "a,b,c" of names made of letters, digits and underscores. */
const commaList = '^[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*$';

function splitList(value: string | undefined): string[] {
  return value === undefined ? [] : value.split(',');
}

/** Bytes an event stream may have waiting for a slow client before its events are dropped. */
const maxStreamBacklogBytes = 8 << 20;

/** The agent's fastify instance (its logger is the agent's pino logger). */
export type AgentApp = FastifyInstance<RawServerDefault, RawRequestDefaultExpression, RawReplyDefaultExpression, Logger>;

/** The caller the guard let in (auth.mode=none: anonymous, every namespace). */
function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new Error(`${request.method} ${request.url} reached its handler without the guard`);
  return request.principal;
}

export function registerApi(app: AgentApp, service: AgentService, guard: Guard): void {
  // Open event streams never end by themselves: closing the server ends them.
  const streams = new Set<() => void>();
  // A stream still opening when the server closes is ended as soon as it opens (else close waits for it forever).
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
    for (const end of streams) end();
  });
  const routes: Route[] = [
    {
      method: 'GET',
      url: '/api/v1/status',
      summary: 'Version, node, mode, kernel, and every collector with its state, programs and series',
      access: operations.status,
      response: statusSchema,
      handler: async (request) => service.status(scopeOf(principalOf(request))),
    },
    {
      method: 'GET',
      url: '/api/v1/collectors',
      summary: 'Every collector with its state',
      access: operations.collectors,
      response: { type: 'array', items: collectorSchema },
      handler: async (request) => service.collectors(scopeOf(principalOf(request))),
    },
    {
      method: 'PUT',
      url: '/api/v1/collectors/:name',
      summary: 'Enable (attach) or disable (detach, series removed) a collector at run time',
      access: operations.setCollector,
      params: { type: 'object', required: ['name'], properties: { name } },
      body: { type: 'object', required: ['enabled'], additionalProperties: false, properties: { enabled: { type: 'boolean' } } },
      response: collectorSchema,
      handler: async (request) => {
        const { name: collector } = request.params as { name: string };
        const { enabled } = request.body as { enabled: boolean };
        return service.setCollectorEnabled(collector, enabled);
      },
    },
    {
      method: 'POST',
      url: '/api/v1/config/reload',
      summary: 'Read the configuration again (as SIGHUP): apply collector changes now, list the keys that need a restart; an invalid one is refused and nothing changes',
      access: operations.reload,
      response: {
        type: 'object',
        properties: {
          applied: { type: 'array', items: { type: 'string' }, description: 'Keys applied now.' },
          restartRequired: { type: 'array', items: { type: 'string' }, description: 'Keys whose new values need an agent restart; the running values are kept.' },
        },
      },
      handler: async () => service.reloadConfig(),
    },
    {
      method: 'GET',
      url: '/api/v1/flows',
      summary: 'Top flows from the counters /metrics exports: per workload and peer (view=peer) or protocol (view=protocol), with rates; or the live 5-tuple flow table (view=5tuple)',
      access: operations.flows,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          view: { type: 'string', enum: flowViews, default: 'peer' },
          namespace: name,
          pod: podOrCgroup,
          peer: { type: 'string', minLength: 1, maxLength: 512, pattern: printablePattern, description: 'A peer workload (or pod), namespace/name, or peer class; view=5tuple: a remote address, or its pod as namespace/name.' },
          protocol: { type: 'string', enum: flowProtocols, description: 'view=protocol and view=5tuple only.' },
          direction: { type: 'string', enum: flowDirections },
          sort: { type: 'string', enum: flowSorts, default: 'bytes' },
          limit: limitSchema(flowLimit),
        },
      },
      response: flowsSchema,
      handler: limitedQuery<FlowQuery>(flowLimit.max, async (query, reply, request) => {
        if (query.view === 'peer' && query.protocol !== undefined) {
          return reply.code(400).send({ error: 'bad_request', message: 'querystring/protocol applies to view=protocol only (the peer matrix is not split by protocol)' });
        }
        if (query.view === 'protocol' && query.peer !== undefined) {
          return reply.code(400).send({ error: 'bad_request', message: 'querystring/peer applies to view=peer only' });
        }
        const result = await service.flows(query, scopeOf(principalOf(request)));
        // Up to 10,000 flows are megabytes of JSON: written in slices, not in one JSON.stringify.
        return reply.type('application/json; charset=utf-8').send(Readable.from(jsonInSlices(result, 'flows', flowJson)));
      }),
    },
    {
      method: 'GET',
      url: '/api/v1/workloads',
      summary: 'Per workload: network bytes and packets per second, run-queue latency p99, syscalls and TCP retransmits per second over the last interval, GPU utilization',
      access: operations.workloads,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          namespace: name,
          pod: podOrCgroup,
          sort: { type: 'string', enum: workloadSorts, default: 'rx', description: 'A column, largest first (name: alphabetically).' },
          limit: limitSchema(workloadLimit),
        },
      },
      response: workloadsSchema,
      handler: limitedQuery<WorkloadQuery>(workloadLimit.max, (query, _reply, request) => service.workloads(query, scopeOf(principalOf(request)))),
    },
    {
      method: 'GET',
      url: '/api/v1/events',
      summary:
        'Server-Sent Events: collector state changes, interfaces attached and detached, pods appearing and going away; with types=syscall or network also live traces, filtered in the kernel (namespace, pod, syscall) and attached only while streamed',
      eventStream: true,
      access: operations.events,
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          types: { type: 'string', pattern: commaList, description: `Comma-separated: ${eventTypes.join(', ')}. Default: ${agentEventTypes.join(', ')} (traces only when named).` },
          namespace: { ...name, description: 'Traces: only this namespace.' },
          pod: { ...podOrCgroup, description: 'Traces: only this pod (or cgroup path, with the cgroups below it).' },
          syscalls: { type: 'string', pattern: commaList, description: 'The syscall trace: only these syscalls, comma-separated (e.g. openat,connect).' },
          kinds: { type: 'string', pattern: commaList, description: `The security trace: only these kinds of security events, comma-separated, from: ${securityKinds.join(', ')}.` },
        },
      },
      handler: async (request, reply) => {
        const query = request.query as { types?: string; namespace?: string; pod?: string; syscalls?: string; kinds?: string };
        let streamRequest;
        try {
          streamRequest = eventStreamRequest({
            types: splitList(query.types),
            syscalls: splitList(query.syscalls),
            kinds: splitList(query.kinds),
            ...(query.namespace !== undefined ? { namespace: query.namespace } : {}),
            ...(query.pod !== undefined ? { pod: query.pod } : {}),
          });
        } catch (err) {
          if (err instanceof EventStreamRequestError) return reply.code(400).send({ error: 'bad_request', message: `querystring/${err.message}` });
          throw err;
        }
        const res = reply.raw;
        let corked = false;
        let open = false;
        let ended = false;
        const send = (event: StreamedEvent): boolean => {
          // Before the headers (a second trace kind still opening) and after the client left: not the client's yet, or nobody's.
          if (!open || ended || res.destroyed) return true;
          // A client that does not read is not buffered for without bound: its events are dropped (and counted).
          if (res.writableLength > maxStreamBacklogBytes) return false;
          // Events arrive in batches: one socket write per batch, not one per event.
          if (!corked) {
            corked = true;
            res.cork();
            process.nextTick(() => {
              corked = false;
              res.uncork();
            });
          }
          res.write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
          return true;
        };
        const principal = principalOf(request);
        const release = guard.openStream(principal, remoteOf(request));
        if (!release) return reply.code(429).send({ error: 'too_many_streams', message: 'this identity holds auth.maxStreamsPerIdentity event streams open already' });
        // The trace stopped (its reader failed): the client hears why, and the stream ends rather than going silent.
        let failure: Error | undefined;
        let end: (() => void) | undefined;
        const fail = (err: Error): void => {
          failure ??= err;
          end?.();
        };
        let endStream: () => Promise<void>;
        try {
          endStream = await service.openEventStream(streamRequest, send, fail, scopeOf(principal));
        } catch (err) {
          release();
          if (err instanceof TraceRefusedError) {
            const code = err.reason === 'limit' ? 429 : err.reason === 'filter' ? 400 : 503;
            return reply.code(code).send({ error: err.reason === 'limit' ? 'too_many_traces' : err.reason === 'filter' ? 'bad_request' : 'trace_unavailable', message: err.message });
          }
          throw err;
        }
        if (closing) {
          await endStream();
          return reply.code(503).send({ error: 'shutting_down', message: 'the agent is stopping' });
        }
        reply.hijack();
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
        res.write(': probepilot events\n\n');
        open = true;
        // Proxies close idle streams: a comment now and then keeps it open.
        const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
        const endNow = (): void => {
          if (ended) return;
          ended = true;
          release();
          clearInterval(heartbeat);
          streams.delete(endNow);
          endStream().catch((err: unknown) => request.log.warn({ err }, 'ending an event stream failed'));
          if (failure && !res.destroyed) res.write(`event: error\ndata: ${JSON.stringify({ error: 'trace_failed', message: failure.message })}\n\n`);
          res.end();
        };
        end = endNow;
        streams.add(endNow);
        // The response closes when the client goes, whenever that was (also while the trace was being opened).
        res.on('close', endNow);
        if (res.destroyed || failure) endNow();
      },
    },
  ];

  // The document describes itself too.
  let openapi: JsonSchema = {};
  routes.push({ method: 'GET', url: '/api/v1/openapi.json', summary: 'This document', access: { role: 'viewer', nonResourcePath: '/api/v1/openapi.json', verb: 'get' }, handler: async () => openapi });
  openapi = openApiDocument(routes);

  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.url,
      config: { access: route.access },
      schema: {
        ...(route.querystring ? { querystring: route.querystring } : {}),
        ...(route.params ? { params: route.params } : {}),
        ...(route.body ? { body: route.body } : {}),
      },
      handler: route.handler,
    });
  }

  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: 'not_found', message: `no route ${request.method} ${request.url.split('?')[0]}` }));
  app.setErrorHandler((err: Error & { validation?: ValidationIssue[]; validationContext?: string; statusCode?: number }, request, reply) => {
    if (err instanceof UnknownCollectorError) return reply.code(404).send({ error: 'unknown_collector', message: err.message });
    if (err instanceof ConfigError) return reply.code(400).send({ error: 'invalid_config', message: `${err.message}; the agent keeps running on its current configuration` });
    if (err.validation) return reply.code(400).send({ error: 'bad_request', message: describeValidation(err.validationContext ?? 'request', err.validation) });
    if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return reply.code(err.statusCode).send({ error: 'bad_request', message: err.message });
    request.log.error({ err }, 'request failed');
    return reply.code(500).send({ error: 'internal', message: err.message });
  });
}

/** Bytes per chunk of a large answer: written as UTF-8 buffers, so the socket never measures or flattens one huge string. */
const jsonChunkLength = 1 << 16;

/**
 * JSON.stringify(value), byte for byte, for an object whose last key is a
 * long array: UTF-8 chunks, yielding to the event loop between slices.
 */
export async function* jsonInSlices<K extends string, I, T extends Record<K, readonly I[]>>(
  value: T,
  arrayKey: K,
  /** JSON.stringify of one item, or what gives the same text faster. */
  itemJson: (item: I) => string | undefined = (item) => JSON.stringify(item),
): AsyncGenerator<Buffer> {
  const { [arrayKey]: items, ...head } = value;
  const keys = Object.keys(value);
  if (keys.at(-1) !== arrayKey) throw new Error(`${arrayKey} must be the last key to be written in slices (keys: ${keys.join(', ')})`);
  const slicer = new TimeSlicer();
  const opening = JSON.stringify(head);
  let chunk = `${opening === '{}' ? '{' : `${opening.slice(0, -1)},`}${JSON.stringify(arrayKey)}:[`;
  for (let i = 0; i < items.length; i++) {
    chunk += `${i > 0 ? ',' : ''}${itemJson(items[i]!) ?? 'null'}`;
    if (chunk.length >= jsonChunkLength) {
      yield Buffer.from(chunk);
      chunk = '';
    }
    if (slicer.due()) await slicer.yield();
  }
  yield Buffer.from(`${chunk}]}`);
}

interface ValidationIssue {
  instancePath: string;
  message?: string;
  params: { additionalProperty?: string; allowedValues?: unknown[]; missingProperty?: string };
}

/** "querystring/sort must be equal to one of the allowed values: bytes, packets": the key and what it may be. */
function describeValidation(context: string, issues: readonly ValidationIssue[]): string {
  return issues
    .map(({ instancePath, message, params }) => {
      const where = `${context}${instancePath}`;
      if (params.additionalProperty !== undefined) return `${where}: unknown key "${params.additionalProperty}"`;
      if (params.allowedValues) return `${where} must be one of: ${params.allowedValues.join(', ')}`;
      if (params.missingProperty !== undefined) return `${where}: "${params.missingProperty}" is required`;
      return `${where} ${message ?? 'is invalid'}`;
    })
    .join('; ');
}

function openApiDocument(routes: readonly Route[]): JsonSchema {
  const paths: Record<string, Record<string, JsonSchema>> = {};
  for (const route of routes) {
    const path = route.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const parameters = [
      ...Object.entries((route.params?.properties as Record<string, JsonSchema> | undefined) ?? {}).map(([n, schema]) => ({ name: n, in: 'path', required: true, schema })),
      ...Object.entries((route.querystring?.properties as Record<string, JsonSchema> | undefined) ?? {}).map(([n, schema]) => ({
        name: n,
        in: 'query',
        required: false,
        ...(schema.description ? { description: schema.description } : {}),
        schema,
      })),
    ];
    const ok = route.eventStream
      ? { description: 'An event stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }
      : { description: 'OK', content: { 'application/json': { schema: route.response ?? { type: 'object' } } } };
    const failure = { content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
    paths[path] ??= {};
    paths[path][route.method.toLowerCase()] = {
      summary: route.summary,
      // Who may call it: a role with auth.mode=tokens, these SubjectAccessReview attributes with auth.mode=kubernetes.
      'x-probepilot-access': route.access,
      security: [{ bearer: [] }],
      ...(parameters.length ? { parameters } : {}),
      ...(route.body ? { requestBody: { required: true, content: { 'application/json': { schema: route.body } } } } : {}),
      responses: {
        200: ok,
        400: { description: 'Invalid input', ...failure },
        401: { description: 'No valid bearer token', ...failure },
        403: { description: 'The caller lacks the role (or RBAC grant) this call needs', ...failure },
        404: { description: 'No such route or collector', ...failure },
        429: { description: 'Over the rate limit (see Retry-After) or too many event streams', ...failure },
      },
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'ProbePilot agent API', version: agentVersion },
    paths,
    components: { schemas: { Error: errorSchema }, securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
  };
}
