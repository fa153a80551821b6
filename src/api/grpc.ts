// The gRPC transport of the service layer: probepilot.v1.Agent
// (proto/probepilot/v1/agent.proto) on @grpc/grpc-js, plaintext, off unless
// grpcListen is set. Answers are the REST API's, field for field.
import { loadPackageDefinition, Server, ServerCredentials, status as grpcStatus, type GrpcObject, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ListenAddress } from '../config.js';
import type { Logger } from '../log.js';
import type { StreamedEvent } from './events.js';
import { TraceRefusedError } from '../events/pipeline.js';
import { eventStreamRequest, EventStreamRequestError, flowDirections, flowLimit, flowProtocols, flowSorts, flowViews, workloadLimit, workloadSorts, type AgentService, type EventStreamRequest, type FlowQuery, type WorkloadQuery } from './service.js';

const protoPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../proto/probepilot/v1/agent.proto');

/** probepilot.v1.Agent as grpc-js sees it (the proto loaded with its field names as written). */
export function agentServiceDefinition(): ServiceClientConstructor {
  const definition = loadSync(protoPath, { keepCase: true, longs: Number, defaults: true, oneofs: true });
  return ((loadPackageDefinition(definition).probepilot as GrpcObject).v1 as GrpcObject).Agent as ServiceClientConstructor;
}

interface FlowsRequest {
  view: string;
  namespace: string;
  pod: string;
  peer: string;
  protocol: string;
  direction: string;
  sort: string;
  limit: number;
}

class InvalidArgument extends Error {}

function oneOf<T extends string>(field: string, value: string, allowed: readonly T[], fallback?: T): T | undefined {
  if (value === '') return fallback;
  if (!(allowed as readonly string[]).includes(value)) throw new InvalidArgument(`${field} must be one of: ${allowed.join(', ')}`);
  return value as T;
}

function printable<K extends string>(request: Record<K, string>, fields: readonly K[]): void {
  for (const field of fields) {
    if (/[\u0000-\u001f\u007f]/.test(request[field]) || request[field].length > 4096) throw new InvalidArgument(`${field} must be printable text of at most 4096 characters`);
  }
}

/** 0 is the default; above max is refused. */
function limitOf(limit: number, limits: { default: number; max: number }): number {
  if (limit > limits.max) throw new InvalidArgument(`limit must be from 1 to ${limits.max} (0: ${limits.default})`);
  return limit === 0 ? limits.default : limit;
}

/** Fields the REST API answers as null are left out (proto3 optional). */
function present(fields: Record<string, number | null>): Record<string, number> {
  return Object.fromEntries(Object.entries(fields).filter((entry): entry is [string, number] => entry[1] !== null));
}

interface WorkloadsRequest {
  namespace: string;
  pod: string;
  sort: string;
  limit: number;
}

/** The same rules as the REST querystring schema. */
export function workloadQueryOf(request: WorkloadsRequest): WorkloadQuery {
  printable(request, ['namespace', 'pod']);
  return {
    sort: oneOf('sort', request.sort, workloadSorts, 'rx')!,
    limit: limitOf(request.limit, workloadLimit),
    ...(request.namespace ? { namespace: request.namespace } : {}),
    ...(request.pod ? { pod: request.pod } : {}),
  };
}

/** The same rules as the REST querystring schema. */
export function flowQueryOf(request: FlowsRequest): FlowQuery {
  const view = oneOf('view', request.view, flowViews, 'peer')!;
  const limit = limitOf(request.limit, flowLimit);
  const protocol = oneOf('protocol', request.protocol, flowProtocols);
  if (view === 'peer' && protocol !== undefined) throw new InvalidArgument('protocol applies to view=protocol only');
  if (view === 'protocol' && request.peer !== '') throw new InvalidArgument('peer applies to view=peer only');
  printable(request, ['namespace', 'pod', 'peer']);
  const direction = oneOf('direction', request.direction, flowDirections);
  return {
    view,
    sort: oneOf('sort', request.sort, flowSorts, 'bytes')!,
    limit,
    ...(request.namespace ? { namespace: request.namespace } : {}),
    ...(request.pod ? { pod: request.pod } : {}),
    ...(request.peer ? { peer: request.peer } : {}),
    ...(protocol ? { protocol } : {}),
    ...(direction ? { direction } : {}),
  };
}

/** Attributes are text: nested objects (a trace's workload labels) become dotted keys, lists are space-separated. */
function eventMessage(event: StreamedEvent): { type: string; time: string; attributes: Record<string, string> } {
  const { type, time, ...rest } = event;
  const attributes: Record<string, string> = {};
  for (const [key, value] of Object.entries(rest)) {
    if (Array.isArray(value)) attributes[key] = value.join(' ');
    else if (value !== null && typeof value === 'object') for (const [sub, text] of Object.entries(value)) attributes[`${key}.${sub}`] = String(text);
    else attributes[key] = value === null ? '' : String(value);
  }
  return { type, time, attributes };
}

interface StreamEventsRequest {
  types: string[];
  namespace: string;
  pod: string;
  syscalls: string[];
}

/** Messages a stream may have waiting for a slow client (grpc-js streams count objects) before its events are dropped. */
const maxStreamBacklogMessages = 16_384;

const traceRefusalCodes = { limit: grpcStatus.RESOURCE_EXHAUSTED, filter: grpcStatus.INVALID_ARGUMENT, unavailable: grpcStatus.UNAVAILABLE } as const;

export class GrpcApi {
  private readonly server = new Server();
  private readonly streams = new Set<ServerWritableStream<unknown, unknown>>();

  constructor(service: AgentService, log: Logger) {
    /** A unary query: its request checked (INVALID_ARGUMENT naming the field), then answered. */
    const query =
      <R, Q>(parse: (request: R) => Q, answer: (query: Q) => Promise<unknown>) =>
      (call: ServerUnaryCall<R, unknown>, callback: sendUnaryData<unknown>): void => {
        let parsed: Q;
        try {
          parsed = parse(call.request);
        } catch (err) {
          callback({ code: grpcStatus.INVALID_ARGUMENT, details: (err as Error).message });
          return;
        }
        answer(parsed).then(
          (response) => callback(null, response),
          (err: unknown) => {
            log.error({ err, method: call.getPath() }, 'query failed');
            callback({ code: grpcStatus.INTERNAL, details: err instanceof Error ? err.message : String(err) });
          },
        );
      };
    this.server.addService(agentServiceDefinition().service, {
      GetStatus: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        const status = service.status();
        callback(null, {
          ...status,
          bpf_stats: status.bpfStats,
          uptime_seconds: status.uptimeSeconds,
          collectors: status.collectors.map((c) => ({
            ...c,
            last_collect_seconds: c.lastCollectSeconds,
            collect_errors: c.collectErrors,
            programs: c.programs.map((p) => ({ name: p.name, id: p.id, run_count: p.runCount, run_time_seconds: p.runTimeSeconds })),
          })),
        });
      },
      QueryFlows: query(flowQueryOf, async (q) => {
        const result = await service.flows(q);
        return {
          view: result.view,
          total: result.total,
          ...present({ interval_seconds: result.intervalSeconds }),
          flows: result.flows.map((f) => ({
            workload: f.workload,
            direction: f.direction,
            peer: f.peer ?? {},
            protocol: f.protocol ?? '',
            bytes: f.bytes,
            packets: f.packets,
            ...present({ bytes_per_second: f.bytesPerSecond, packets_per_second: f.packetsPerSecond }),
          })),
        };
      }),
      QueryWorkloads: query(workloadQueryOf, async (q) => {
        const result = await service.workloads(q);
        return {
          total: result.total,
          ...present({ interval_seconds: result.intervalSeconds }),
          collectors_off: result.collectorsOff,
          workloads: result.workloads.map((w) => ({
            workload: w.workload,
            ...present({
              rx_bytes_per_second: w.rxBytesPerSecond,
              tx_bytes_per_second: w.txBytesPerSecond,
              rx_packets_per_second: w.rxPacketsPerSecond,
              tx_packets_per_second: w.txPacketsPerSecond,
              runqueue_latency_p99_seconds: w.runqueueLatencyP99Seconds,
              syscalls_per_second: w.syscallsPerSecond,
              tcp_retransmits_per_second: w.tcpRetransmitsPerSecond,
              gpu_utilization: w.gpuUtilization,
            }),
          })),
        };
      }),
      StreamEvents: (call: ServerWritableStream<StreamEventsRequest, unknown>) => {
        let request: EventStreamRequest;
        try {
          request = eventStreamRequest({
            types: call.request.types,
            syscalls: call.request.syscalls,
            ...(call.request.namespace ? { namespace: call.request.namespace } : {}),
            ...(call.request.pod ? { pod: call.request.pod } : {}),
          });
        } catch (err) {
          if (!(err instanceof EventStreamRequestError)) throw err;
          call.destroy(Object.assign(new Error(err.message), { code: grpcStatus.INVALID_ARGUMENT }));
          return;
        }
        const stream = call as ServerWritableStream<unknown, unknown>;
        const send = (event: StreamedEvent): boolean => {
          // Between the client leaving and the subscription ending: nobody to lose it for.
          if (call.cancelled || call.destroyed || call.writableEnded) return true;
          // A client that does not read is not buffered for without bound: its events are dropped (and counted).
          if (call.writableLength > maxStreamBacklogMessages) return false;
          call.write(eventMessage(event));
          return true;
        };
        service.openEventStream(request, send).then(
          (endStream) => {
            this.streams.add(stream);
            let ended = false;
            const end = (): void => {
              if (ended) return;
              ended = true;
              this.streams.delete(stream);
              endStream().catch((err: unknown) => log.warn({ err }, 'ending an event stream failed'));
            };
            call.on('cancelled', end);
            call.on('close', end);
            if (call.cancelled || call.destroyed) end();
          },
          (err: unknown) => {
            const code = err instanceof TraceRefusedError ? traceRefusalCodes[err.reason] : grpcStatus.INTERNAL;
            call.destroy(Object.assign(new Error(err instanceof Error ? err.message : String(err)), { code }));
          },
        );
      },
    });
  }

  /** Resolves with the bound port. */
  listen(address: ListenAddress): Promise<number> {
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    return new Promise((resolve, reject) =>
      this.server.bindAsync(`${host}:${address.port}`, ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
    );
  }

  /** Ends open event streams, then the server. */
  close(): Promise<void> {
    for (const stream of this.streams) stream.end();
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }
}
