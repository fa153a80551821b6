// The gRPC transport of the service layer: probepilot.v1.Agent
// (proto/probepilot/v1/agent.proto) on @grpc/grpc-js, off unless grpcListen
// is set; TLS with the HTTP server's files. Answers are the REST API's, field
// for field; every method passes the same guard as its REST route.
import { loadPackageDefinition, Server, status as grpcStatus, type GrpcObject, type Metadata, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream, type ServiceClientConstructor } from '@grpc/grpc-js';
import type { AgentConfig } from '../config.js';
import type { Guard, Denial } from '../auth/guard.js';
import { operations, scopeOf, type GuardedAccess, type Principal } from '../auth/principal.js';
import { grpcCredentials } from '../auth/tls.js';
import { loadSync } from '@grpc/proto-loader';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ListenAddress } from '../config.js';
import type { Logger } from '../log.js';
import type { StreamedEvent } from './events.js';
import { TraceRefusedError } from '../events/pipeline.js';
import { eventStreamRequest, EventStreamRequestError, flowDirections, isPrintable, flowLimit, flowProtocols, flowSorts, flowViews, workloadLimit, workloadSorts, type AgentService, type EventStreamRequest, type FlowQuery, type FlowTuple, type WorkloadQuery } from './service.js';

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
    if (request[field] !== '' && !isPrintable(request[field])) throw new InvalidArgument(`${field} must be printable text of at most 4096 characters`);
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

function flowTupleMessage(tuple: FlowTuple): Record<string, unknown> {
  return {
    family: tuple.family,
    local_address: tuple.localAddress,
    local_port: tuple.localPort,
    remote_address: tuple.remoteAddress,
    remote_port: tuple.remotePort,
    remote_pod: tuple.remotePod,
    bytes_sent: tuple.bytesSent,
    bytes_received: tuple.bytesReceived,
    packets_sent: tuple.packetsSent,
    packets_received: tuple.packetsReceived,
    tcp_flags_sent: tuple.tcpFlagsSent,
    tcp_flags_received: tuple.tcpFlagsReceived,
    first_seen: tuple.firstSeen,
    last_seen: tuple.lastSeen,
    active: tuple.active,
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
  kinds: string[];
}

/**
 * Ends a server stream with an error status. grpc-js sends the status from
 * the stream's final step, which a destroyed stream never runs: destroy(err)
 * left the client waiting for a status that never came. An 'error' event is
 * grpc-js's way: it records the status and ends the stream.
 */
function endWithStatus(call: ServerWritableStream<unknown, unknown>, err: Error & { code: grpcStatus }): void {
  call.emit('error', err);
}

/** Messages a stream may have waiting for a slow client (grpc-js streams count objects) before its events are dropped. */
const maxStreamBacklogMessages = 16_384;

const denialCodes: Record<Denial['status'], grpcStatus> = { 401: grpcStatus.UNAUTHENTICATED, 403: grpcStatus.PERMISSION_DENIED, 429: grpcStatus.RESOURCE_EXHAUSTED, 503: grpcStatus.UNAVAILABLE };

/** The peer's address without its port ("127.0.0.1:5000", "[::1]:5000"): the key of the unauthenticated rate limit. */
export function peerAddress(peer: string): string {
  const match = /^\[?(.*?)\]?:\d+$/.exec(peer);
  return match?.[1] ?? peer;
}

const traceRefusalCodes = { limit: grpcStatus.RESOURCE_EXHAUSTED, filter: grpcStatus.INVALID_ARGUMENT, unavailable: grpcStatus.UNAVAILABLE } as const;

export class GrpcApi {
  private readonly server = new Server();
  private readonly streams = new Set<ServerWritableStream<unknown, unknown>>();
  /** Streams that finish opening after close() are ended at once. */
  private closing = false;

  constructor(
    service: AgentService,
    log: Logger,
    private readonly guard: Guard,
    private readonly tls: AgentConfig['tls'],
  ) {
    /** The caller, when the guard lets it make this call; otherwise the error to end the call with. */
    const admit = async (call: { metadata: Metadata; getPeer(): string; getPath(): string }, access: GuardedAccess): Promise<Principal | { code: grpcStatus; details: string }> => {
      const authorization = call.metadata.get('authorization')[0];
      const decision = await guard.check(
        { transport: 'grpc', method: 'POST', path: call.getPath(), remote: peerAddress(call.getPeer()), authorization: typeof authorization === 'string' ? authorization : undefined },
        access,
      );
      return decision.allowed ? decision.principal : { code: denialCodes[decision.status], details: decision.message };
    };
    /** A unary query: the caller admitted, its request checked (INVALID_ARGUMENT naming the field), then answered. */
    const query =
      <R, Q>(access: GuardedAccess, parse: (request: R) => Q, answer: (query: Q, principal: Principal) => Promise<unknown>) =>
      (call: ServerUnaryCall<R, unknown>, callback: sendUnaryData<unknown>): void => {
        const answerCall = async (): Promise<unknown> => {
          const principal = await admit(call, access);
          if ('code' in principal) return callback(principal);
          let parsed: Q;
          try {
            parsed = parse(call.request);
          } catch (err) {
            return callback({ code: grpcStatus.INVALID_ARGUMENT, details: (err as Error).message });
          }
          return callback(null, await answer(parsed, principal));
        };
        answerCall().catch((err: unknown) => {
          log.error({ err, method: call.getPath() }, 'query failed');
          callback({ code: grpcStatus.INTERNAL, details: err instanceof Error ? err.message : String(err) });
        });
      };
    const noRequest = (request: unknown): unknown => request;
    this.server.addService(agentServiceDefinition().service, {
      GetStatus: query(operations.status, noRequest, async (_request, principal) => {
        const status = service.status(scopeOf(principal));
        return {
          ...status,
          bpf_stats: status.bpfStats,
          uptime_seconds: status.uptimeSeconds,
          collectors: status.collectors.map((c) => ({
            ...c,
            last_collect_seconds: c.lastCollectSeconds,
            collect_errors: c.collectErrors,
            programs: c.programs.map((p) => ({ name: p.name, id: p.id, run_count: p.runCount, run_time_seconds: p.runTimeSeconds })),
          })),
        };
      }),
      QueryFlows: query(operations.flows, flowQueryOf, async (q, principal) => {
        const result = await service.flows(q, scopeOf(principal));
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
            ...(f.tuple ? { tuple: flowTupleMessage(f.tuple) } : {}),
          })),
        };
      }),
      QueryWorkloads: query(operations.workloads, workloadQueryOf, async (q, principal) => {
        const result = await service.workloads(q, scopeOf(principal));
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
        void admit(call, operations.events).then((principal) => {
          if ('code' in principal) endWithStatus(call, Object.assign(new Error(principal.details), principal));
          else this.streamEvents(service, log, call, principal);
        });
      },
    });
  }

  private streamEvents(service: AgentService, log: Logger, call: ServerWritableStream<StreamEventsRequest, unknown>, principal: Principal): void {
        let request: EventStreamRequest;
        try {
          request = eventStreamRequest({
            types: call.request.types,
            syscalls: call.request.syscalls,
            kinds: call.request.kinds,
            ...(call.request.namespace ? { namespace: call.request.namespace } : {}),
            ...(call.request.pod ? { pod: call.request.pod } : {}),
          });
        } catch (err) {
          if (!(err instanceof EventStreamRequestError)) throw err;
          endWithStatus(call, Object.assign(new Error(err.message), { code: grpcStatus.INVALID_ARGUMENT }));
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
        const release = this.guard.openStream(principal, peerAddress(call.getPeer()));
        if (!release) {
          endWithStatus(call, Object.assign(new Error('this identity holds auth.maxStreamsPerIdentity event streams open already'), { code: grpcStatus.RESOURCE_EXHAUSTED }));
          return;
        }
        // The trace stopped (its reader failed): the stream ends with UNAVAILABLE rather than going silent.
        let failure: Error | undefined;
        const fail = (err: Error): void => {
          if (failure) return;
          failure = err;
          if (!call.destroyed && !call.writableEnded) endWithStatus(call, Object.assign(new Error(err.message), { code: grpcStatus.UNAVAILABLE }));
        };
        service.openEventStream(request, send, fail, scopeOf(principal)).then(
          (endStream) => {
            this.streams.add(stream);
            let ended = false;
            const end = (): void => {
              if (ended) return;
              ended = true;
              release();
              this.streams.delete(stream);
              endStream().catch((err: unknown) => log.warn({ err }, 'ending an event stream failed'));
            };
            call.on('cancelled', end);
            call.on('close', end);
            if (call.cancelled || call.destroyed) end();
            // Opened while the server was closing: close() has ended the others already.
            else if (this.closing) stream.end();
          },
          (err: unknown) => {
            release();
            const code = err instanceof TraceRefusedError ? traceRefusalCodes[err.reason] : grpcStatus.INTERNAL;
            endWithStatus(call, Object.assign(new Error(err instanceof Error ? err.message : String(err)), { code }));
          },
        );
  }

  /** Resolves with the bound port. */
  listen(address: ListenAddress): Promise<number> {
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    return new Promise((resolve, reject) =>
      this.server.bindAsync(`${host}:${address.port}`, grpcCredentials(this.tls), (err, port) => (err ? reject(err) : resolve(port))),
    );
  }

  /** Ends open event streams, then the server. */
  close(): Promise<void> {
    this.closing = true;
    for (const stream of this.streams) stream.end();
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }
}
