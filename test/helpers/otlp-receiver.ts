// A real OTLP/gRPC metrics receiver on loopback: a @grpc/grpc-js server that
// decodes ExportMetricsServiceRequest with the OTLP protos and keeps every
// request, flattened to Prometheus-like samples. It can be stopped and
// started again on the same port to make an outage.
import path from 'node:path';
import { Server, ServerCredentials, loadPackageDefinition, type GrpcObject, type ServiceClientConstructor, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { projectRoot } from './helm.js';

interface AnyValue {
  stringValue?: string;
  intValue?: number;
  doubleValue?: number;
  boolValue?: boolean;
}
interface KeyValue {
  key: string;
  value?: AnyValue;
}
interface NumberPoint {
  attributes: KeyValue[];
  startTimeUnixNano: number;
  timeUnixNano: number;
  asDouble?: number;
  asInt?: number;
}
interface HistogramPoint {
  attributes: KeyValue[];
  startTimeUnixNano: number;
  count: number;
  sum?: number;
  bucketCounts: number[];
  explicitBounds: number[];
}
interface Metric {
  name: string;
  unit: string;
  gauge?: { dataPoints: NumberPoint[] };
  sum?: { dataPoints: NumberPoint[]; aggregationTemporality: string; isMonotonic: boolean };
  histogram?: { dataPoints: HistogramPoint[]; aggregationTemporality: string };
}
interface ExportRequest {
  resourceMetrics: Array<{ resource?: { attributes: KeyValue[] }; scopeMetrics: Array<{ metrics: Metric[] }> }>;
}

/** One data point of an export, its attributes as plain strings. */
export interface OtlpPoint {
  metric: string;
  unit: string;
  kind: 'sum' | 'gauge' | 'histogram';
  temporality: string;
  attributes: Record<string, string>;
  startTimeUnixNano: number;
  value?: number;
  histogram?: { count: number; sum: number; bucketCounts: number[]; explicitBounds: number[] };
}

export interface OtlpExport {
  receivedAt: number;
  resource: Record<string, string>;
  points: OtlpPoint[];
}

function attributes(list: readonly KeyValue[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const { key, value } of list ?? []) out[key] = String(value?.stringValue ?? value?.intValue ?? value?.doubleValue ?? value?.boolValue ?? '');
  return out;
}

function flatten(request: ExportRequest): OtlpExport {
  const points: OtlpPoint[] = [];
  let resource: Record<string, string> = {};
  for (const rm of request.resourceMetrics) {
    resource = { ...resource, ...attributes(rm.resource?.attributes) };
    for (const sm of rm.scopeMetrics) {
      for (const m of sm.metrics) {
        const base = { metric: m.name, unit: m.unit };
        for (const p of m.sum?.dataPoints ?? []) points.push({ ...base, kind: 'sum', temporality: m.sum!.aggregationTemporality, attributes: attributes(p.attributes), startTimeUnixNano: p.startTimeUnixNano, value: p.asDouble ?? p.asInt });
        for (const p of m.gauge?.dataPoints ?? []) points.push({ ...base, kind: 'gauge', temporality: '', attributes: attributes(p.attributes), startTimeUnixNano: p.startTimeUnixNano, value: p.asDouble ?? p.asInt });
        for (const p of m.histogram?.dataPoints ?? []) {
          points.push({
            ...base,
            kind: 'histogram',
            temporality: m.histogram!.aggregationTemporality,
            attributes: attributes(p.attributes),
            startTimeUnixNano: p.startTimeUnixNano,
            histogram: { count: p.count, sum: p.sum ?? 0, bucketCounts: p.bucketCounts, explicitBounds: p.explicitBounds },
          });
        }
      }
    }
  }
  return { receivedAt: Date.now(), resource, points };
}

const definition = loadSync(path.join(projectRoot, 'test/fixtures/otlp/metrics_service.proto'), { longs: Number, enums: String, defaults: true, oneofs: false });
const service = ((loadPackageDefinition(definition).opentelemetry as GrpcObject).proto as GrpcObject) as unknown as {
  collector: { metrics: { v1: { MetricsService: ServiceClientConstructor } } };
};

export class OtlpReceiver {
  readonly exports: OtlpExport[] = [];
  /** Metadata of the last request (e.g. an authorization header). */
  lastMetadata: Record<string, string> = {};
  private server: Server | undefined;
  port = 0;

  /** maxMessageBytes: the largest request accepted (gRPC's default, as the OpenTelemetry Collector's, is 4 MiB). */
  constructor(private readonly options: { maxMessageBytes?: number } = {}) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const server = new Server(this.options.maxMessageBytes ? { 'grpc.max_receive_message_length': this.options.maxMessageBytes } : {});
    server.addService(service.collector.metrics.v1.MetricsService.service, {
      Export: (call: ServerUnaryCall<ExportRequest, unknown>, callback: sendUnaryData<unknown>) => {
        this.lastMetadata = Object.fromEntries(Object.entries(call.metadata.getMap()).map(([k, v]) => [k, String(v)]));
        this.exports.push(flatten(call.request));
        callback(null, {});
      },
    });
    this.port = await new Promise<number>((resolve, reject) => server.bindAsync(`127.0.0.1:${this.port}`, ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))));
    this.server = server;
  }

  /** Drops every connection at once: an outage the exporter sees as UNAVAILABLE. */
  stop(): void {
    this.server?.forceShutdown();
    this.server = undefined;
  }

  /** The first export received after `since` (ms since the epoch). */
  exportAfter(since: number): OtlpExport | undefined {
    return this.exports.find((e) => e.receivedAt > since);
  }
}
