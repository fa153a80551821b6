// OTLP/gRPC push of the same snapshots /metrics renders. The snapshots enter
// the OpenTelemetry SDK through a MetricProducer (kernel histograms stay
// histograms, with the kernel's own bucket bounds), a periodic reader pushes
// them, and a retrying exporter sits in front of the SDK's gRPC exporter,
// which gives up on the first error.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { credentials as grpcCredentials, Metadata, type ChannelCredentials } from '@grpc/grpc-js';
import { ExportResultCode, hrTime, type ExportResult } from '@opentelemetry/core';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-grpc';
import { ValueType, type Attributes, type HrTime } from '@opentelemetry/api';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AggregationTemporality,
  DataPointType,
  MeterProvider,
  PeriodicExportingMetricReader,
  type CollectionResult,
  type MetricData,
  type MetricProducer,
  type PushMetricExporter,
  type ResourceMetrics,
} from '@opentelemetry/sdk-metrics';
import type { AgentConfig } from '../config.js';
import type { Logger } from '../log.js';
import { describeError } from '../errors.js';
import type { FamilyDescriptor, HistogramSample, Labels, MetricFamily } from '../metrics/model.js';
import { SerialQueue } from '../collectors/serial.js';
import { TimeSlicer } from '../metrics/slice.js';

export type OtlpConfig = AgentConfig['otlp'];

/** Prometheus unit suffixes and their UCUM units. */
const unitSuffixes: ReadonlyArray<[string, string]> = [
  ['_seconds', 's'],
  ['_bytes', 'By'],
  ['_ratio', '1'],
  ['_celsius', 'Cel'],
  ['_watts', 'W'],
  ['_joules', 'J'],
  ['_hertz', 'Hz'],
];

/**
 * probepilot_network_bytes_total → probepilot.network.bytes (unit By),
 * probepilot_syscall_latency_seconds → probepilot.syscall.latency.seconds
 * (unit s): the words stay, so the OpenTelemetry Collector's Prometheus
 * exporter turns each name back into ours (it adds neither a unit it finds
 * in the name nor a second _total).
 */
export function otlpMetricName(prometheusName: string): { name: string; unit: string } {
  const base = prometheusName.replace(/_total$/, '');
  const unit = unitSuffixes.find(([suffix]) => base.endsWith(suffix))?.[1] ?? '';
  return { name: base.replaceAll('_', '.'), unit };
}

/** Workload kinds with a Kubernetes semantic-convention name attribute. */
const workloadKindAttributes: Readonly<Record<string, string>> = {
  Deployment: 'k8s.deployment.name',
  StatefulSet: 'k8s.statefulset.name',
  DaemonSet: 'k8s.daemonset.name',
  ReplicaSet: 'k8s.replicaset.name',
  Job: 'k8s.job.name',
  CronJob: 'k8s.cronjob.name',
};

/** Identity labels under their semantic-convention names; other labels keep theirs. Empty values are left out, as OpenTelemetry does. */
export function otlpAttributes(labels: Labels): Attributes {
  const attributes: Attributes = {};
  for (const [name, value] of Object.entries(labels)) {
    if (value === '') continue;
    switch (name) {
      case 'namespace':
        attributes['k8s.namespace.name'] = value;
        break;
      case 'pod':
        attributes['k8s.pod.name'] = value;
        break;
      case 'container':
        attributes['k8s.container.name'] = value;
        break;
      case 'cgroup':
        attributes['probepilot.cgroup'] = value;
        break;
      case 'workload_kind':
        attributes['probepilot.workload.kind'] = value;
        break;
      case 'workload':
        attributes[workloadKindAttributes[labels.workload_kind ?? ''] ?? 'probepilot.workload.name'] = value;
        break;
      default:
        attributes[name] = value;
    }
  }
  return attributes;
}

interface PointState {
  startTime: HrTime;
  /** Last cumulative values (delta temporality), scalar or per-bucket then sum. */
  last: number[];
  seen: number;
}

/**
 * Turns collection snapshots into OTLP metric data. Cumulative: each series
 * keeps the time it was first seen as its start. Delta: each point is the
 * difference from the previous collection (a counter that went backwards
 * starts over), starting at that collection's time.
 */
export class SnapshotConverter {
  private readonly points = new Map<string, PointState>();
  private collections = 0;
  private readonly conversions = new SerialQueue();

  constructor(private readonly temporality: 'cumulative' | 'delta') {}

  /**
   * Yields to the event loop between slices: a push of 100k points must not
   * hold it. Conversions run one at a time (a push after a timed-out one, a
   * flush at shutdown): each compares against the previous one's points.
   */
  convert(families: readonly MetricFamily[], now: HrTime = hrTime()): Promise<MetricData[]> {
    return this.conversions.run(() => this.convertNow(families, now));
  }

  private async convertNow(families: readonly MetricFamily[], now: HrTime): Promise<MetricData[]> {
    this.collections++;
    const metrics: MetricData[] = [];
    const slicer = new TimeSlicer();
    const points = async <S, P>(samples: readonly S[], point: (sample: S) => P): Promise<P[]> => {
      const out: P[] = [];
      for (const sample of samples) {
        if (slicer.due()) await slicer.yield();
        out.push(point(sample));
      }
      return out;
    };
    for (const family of families) {
      const { name, unit } = otlpMetricName(family.name);
      const descriptor = { name, unit, description: family.help, valueType: ValueType.DOUBLE };
      if (family.type === 'histogram') {
        const aggregationTemporality = this.temporality === 'delta' ? AggregationTemporality.DELTA : AggregationTemporality.CUMULATIVE;
        metrics.push({
          descriptor,
          aggregationTemporality,
          dataPointType: DataPointType.HISTOGRAM,
          dataPoints: await points(family.samples, (s) => this.histogramPoint(family, s, now)),
        });
      } else if (family.type === 'counter') {
        const aggregationTemporality = this.temporality === 'delta' ? AggregationTemporality.DELTA : AggregationTemporality.CUMULATIVE;
        metrics.push({
          descriptor,
          aggregationTemporality,
          dataPointType: DataPointType.SUM,
          isMonotonic: true,
          dataPoints: await points(family.samples, (s) => {
            const { startTime, values } = this.advance(family, s.labels, [s.value], now);
            return { startTime, endTime: now, attributes: otlpAttributes(s.labels), value: values[0]! };
          }),
        });
      } else {
        metrics.push({
          descriptor,
          aggregationTemporality: AggregationTemporality.CUMULATIVE,
          dataPointType: DataPointType.GAUGE,
          dataPoints: await points(family.samples, (s) => ({ startTime: now, endTime: now, attributes: otlpAttributes(s.labels), value: s.value })),
        });
      }
    }
    // Series not seen in this collection are gone: forget them.
    for (const [key, state] of this.points) if (state.seen !== this.collections) this.points.delete(key);
    return metrics;
  }

  private histogramPoint(family: FamilyDescriptor, sample: HistogramSample, now: HrTime) {
    const { startTime, values } = this.advance(family, sample.labels, [...sample.counts, sample.sum, sample.count], now);
    const counts = values.slice(0, sample.counts.length);
    return {
      startTime,
      endTime: now,
      attributes: otlpAttributes(sample.labels),
      value: { buckets: { boundaries: [...sample.bounds], counts }, sum: values[sample.counts.length]!, count: values[sample.counts.length + 1]! },
    };
  }

  private advance(family: FamilyDescriptor, labels: Labels, cumulative: number[], now: HrTime): { startTime: HrTime; values: number[] } {
    const key = `${family.name}\0${Object.values(labels).join('\0')}`;
    const state = this.points.get(key);
    if (!state) {
      this.points.set(key, { startTime: now, last: cumulative, seen: this.collections });
      return { startTime: now, values: cumulative };
    }
    state.seen = this.collections;
    if (this.temporality === 'cumulative') return { startTime: state.startTime, values: cumulative };
    const reset = cumulative.some((v, i) => v < (state.last[i] ?? 0));
    const values = reset ? cumulative : cumulative.map((v, i) => v - (state.last[i] ?? 0));
    const startTime = state.startTime;
    state.startTime = now;
    state.last = cumulative;
    return { startTime, values };
  }
}

/** gRPC status codes the OTLP specification calls retryable. */
const retryableCodes = new Set([
  1, // CANCELLED
  4, // DEADLINE_EXCEEDED
  8, // RESOURCE_EXHAUSTED (the collector asks to back off)
  10, // ABORTED
  11, // OUT_OF_RANGE
  14, // UNAVAILABLE
  15, // DATA_LOSS
]);

const deadlineExceeded = 4;

export function isRetryable(error: unknown): boolean {
  return typeof error === 'object' && error !== null && retryableCodes.has((error as { code?: unknown }).code as number);
}

export type ExportOutcome = 'success' | 'retry' | 'failure' | 'dropped';

export interface RetryPolicy {
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxAttempts: number;
  maxInFlight: number;
}

/** Backoff before retry `attempt` (1-based): exponential, capped, with full jitter in its upper half so agents do not retry in step. */
export function backoffMs(policy: RetryPolicy, attempt: number, random = Math.random): number {
  const ceiling = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** (attempt - 1));
  return ceiling * (0.5 + random() / 2);
}

interface PendingExport {
  abandoned: boolean;
  wake: (() => void) | undefined;
}

/**
 * Retries an exporter's retryable failures with backoff. At most
 * `maxInFlight` exports are pending at once: a new one abandons the oldest,
 * whose data a cumulative export repeats anyway (counted as dropped).
 */
export class RetryingExporter implements PushMetricExporter {
  private readonly pending: PendingExport[] = [];
  readonly outcomes: Record<ExportOutcome, number> = { success: 0, retry: 0, failure: 0, dropped: 0 };

  constructor(
    private inner: PushMetricExporter,
    private readonly policy: RetryPolicy,
    private readonly log: Logger,
    /** A fresh exporter (a new gRPC channel) to replace one whose export timed out; without it the same one is kept. */
    private readonly renew?: () => PushMetricExporter,
  ) {}

  export(metrics: ResourceMetrics, resultCallback: (result: ExportResult) => void): void {
    if (this.pending.length >= this.policy.maxInFlight) {
      const oldest = this.pending.shift()!;
      oldest.abandoned = true;
      oldest.wake?.();
    }
    const job: PendingExport = { abandoned: false, wake: undefined };
    this.pending.push(job);
    void this.run(metrics, job).then((result) => {
      const index = this.pending.indexOf(job);
      if (index >= 0) this.pending.splice(index, 1);
      resultCallback(result);
    });
  }

  private async run(metrics: ResourceMetrics, job: PendingExport): Promise<ExportResult> {
    for (let attempt = 1; ; attempt++) {
      const used = this.inner;
      const result = await new Promise<ExportResult>((resolve) => used.export(metrics, resolve));
      if ((result.error as { code?: unknown } | undefined)?.code === deadlineExceeded) this.renewChannel(used);
      if (result.code === ExportResultCode.SUCCESS) {
        this.outcomes.success++;
        return result;
      }
      if (job.abandoned) return this.drop(result);
      if (!isRetryable(result.error) || attempt >= this.policy.maxAttempts) {
        this.outcomes.failure++;
        this.log.warn({ err: describeError(result.error), attempts: attempt }, 'OTLP export failed');
        return result;
      }
      this.outcomes.retry++;
      const delay = backoffMs(this.policy, attempt);
      this.log.debug({ err: describeError(result.error), attempt, retryMs: Math.round(delay) }, 'OTLP export failed; retrying');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        job.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      job.wake = undefined;
      if (job.abandoned) return this.drop(result);
    }
  }

  /**
   * An endpoint that accepts the connection and never answers (a black hole,
   * a hung collector) leaves gRPC's connection attempt waiting for the HTTP/2
   * handshake with no timeout, and the channel opens another beside it: one
   * more socket every couple of seconds, for as long as the outage lasts.
   * Closing the channel closes them; the next attempt gets a new one.
   */
  private renewChannel(used: PushMetricExporter): void {
    if (!this.renew || this.inner !== used) return;
    this.inner = this.renew();
    void used.shutdown().catch(() => undefined);
    this.log.debug('OTLP export timed out: its gRPC channel closed, the next attempt opens a new one');
  }

  private drop(result: ExportResult): ExportResult {
    this.outcomes.dropped++;
    this.log.warn({ err: describeError(result.error) }, 'OTLP export abandoned: too many exports in flight (a newer one carries the counts)');
    return { code: ExportResultCode.FAILED, error: result.error };
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush();
  }

  shutdown(): Promise<void> {
    for (const job of this.pending) {
      job.abandoned = true;
      job.wake?.();
    }
    return this.inner.shutdown();
  }
}

const exportsFamily: FamilyDescriptor = {
  name: 'probepilot_otlp_exports_total',
  help: 'OTLP export attempts by result: success, retry (a retryable error, tried again after a backoff), failure (given up), dropped (abandoned for a newer export).',
  type: 'counter',
  labelNames: ['result'],
};

export interface OtlpResource {
  version: string;
  /** Kubernetes mode: this node's name. */
  nodeName: string | undefined;
}

function channelCredentials(config: OtlpConfig): ChannelCredentials {
  if (config.endpoint.startsWith('http://')) return grpcCredentials.createInsecure();
  const read = (file: string) => (file ? readFileSync(file) : null);
  return grpcCredentials.createSsl(read(config.tls.caFile), read(config.tls.keyFile), read(config.tls.certFile));
}

/** The OTLP pipeline: collect → SnapshotConverter → periodic reader → RetryingExporter → gRPC. */
export class OtlpExporter {
  readonly families: readonly FamilyDescriptor[] = [exportsFamily];
  private readonly provider: MeterProvider;
  private readonly exporter: RetryingExporter;

  constructor(config: OtlpConfig, collect: () => Promise<MetricFamily[]>, resource: OtlpResource, log: Logger) {
    const metadata = new Metadata();
    for (const { name, value } of config.headers) metadata.set(name, value);
    const grpc = () =>
      new OTLPMetricExporter({
        url: config.endpoint,
        credentials: channelCredentials(config),
        metadata,
        timeoutMillis: config.timeoutSeconds * 1000,
      });
    this.exporter = new RetryingExporter(grpc(), { ...config.retry, maxInFlight: config.maxInFlight }, log, grpc);
    const converter = new SnapshotConverter(config.temporality);
    const producer: MetricProducer = {
      async collect(): Promise<CollectionResult> {
        const metrics = await converter.convert(await collect());
        return { resourceMetrics: { resource: otlpResource, scopeMetrics: [{ scope: { name: 'probepilot', version: resource.version }, metrics }] }, errors: [] };
      },
    };
    const otlpResource = resourceFromAttributes({
      'service.name': 'probepilot',
      'service.version': resource.version,
      'host.name': os.hostname(),
      ...(resource.nodeName ? { 'k8s.node.name': resource.nodeName } : {}),
    });
    const reader = new PeriodicExportingMetricReader({
      exporter: this.exporter,
      exportIntervalMillis: config.intervalSeconds * 1000,
      // A push waiting out retries must not hold back the next interval's.
      exportTimeoutMillis: Math.min(config.intervalSeconds, config.timeoutSeconds) * 1000,
      metricProducers: [producer],
    });
    this.provider = new MeterProvider({ resource: otlpResource, readers: [reader] });
    log.info({ endpoint: config.endpoint, intervalSeconds: config.intervalSeconds, temporality: config.temporality }, 'pushing metrics over OTLP');
  }

  metrics(): MetricFamily[] {
    return [{ ...exportsFamily, type: 'counter', samples: Object.entries(this.exporter.outcomes).map(([result, value]) => ({ labels: { result }, value })) }];
  }

  /** One last push, then the gRPC channel closes. */
  async stop(): Promise<void> {
    await this.provider.shutdown().catch(() => undefined);
  }
}
