import t from 'tap';
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { AggregationTemporality, DataPointType, type PushMetricExporter, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { RetryingExporter, SnapshotConverter, backoffMs, isRetryable, otlpAttributes, otlpMetricName } from '../../src/exporters/otlp.js';
import { createLogger } from '../../src/log.js';
import type { MetricFamily } from '../../src/metrics/model.js';

const silent = createLogger('silent');

t.test('names keep their words and gain a UCUM unit', async (t) => {
  t.same(otlpMetricName('probepilot_network_bytes_total'), { name: 'probepilot.network.bytes', unit: 'By' });
  t.same(otlpMetricName('probepilot_syscall_latency_seconds'), { name: 'probepilot.syscall.latency.seconds', unit: 's' });
  t.same(otlpMetricName('probepilot_gpu_utilization_ratio'), { name: 'probepilot.gpu.utilization.ratio', unit: '1' });
  t.same(otlpMetricName('probepilot_tcp_connections_active'), { name: 'probepilot.tcp.connections.active', unit: '' });
});

t.test('identity labels map to Kubernetes semantic conventions', async (t) => {
  t.same(otlpAttributes({ namespace: 'shop', pod: 'web-1', container: 'app', workload: 'web', workload_kind: 'Deployment', direction: 'egress' }), {
    'k8s.namespace.name': 'shop',
    'k8s.pod.name': 'web-1',
    'k8s.container.name': 'app',
    'k8s.deployment.name': 'web',
    'probepilot.workload.kind': 'Deployment',
    direction: 'egress',
  });
  t.same(otlpAttributes({ namespace: '', pod: '', workload: '/system.slice/sshd.service', workload_kind: 'node' }), {
    'probepilot.workload.name': '/system.slice/sshd.service',
    'probepilot.workload.kind': 'node',
  }, 'a kind without a convention keeps a probepilot name; empty labels are left out');
  t.same(otlpAttributes({ cgroup: '/a.slice' }), { 'probepilot.cgroup': '/a.slice' });
});

const histogram = (counts: number[], sum: number): MetricFamily => ({
  name: 'probepilot_runqueue_latency_seconds',
  help: 'h',
  type: 'histogram',
  labelNames: ['cgroup'],
  samples: [{ labels: { cgroup: '/a' }, bounds: [0.001, 0.002], counts, sum, count: counts.reduce((a, b) => a + b, 0) }],
});
const counter = (value: number): MetricFamily => ({ name: 'probepilot_syscalls_total', help: 'h', type: 'counter', labelNames: ['cgroup'], samples: [{ labels: { cgroup: '/a' }, value }] });

t.test('cumulative: values as they are, a stable start time per series', async (t) => {
  const converter = new SnapshotConverter('cumulative');
  const [h1, c1] = await converter.convert([histogram([1, 2, 0], 0.004), counter(10)], [100, 0]);
  const [h2, c2] = await converter.convert([histogram([1, 5, 1], 0.02), counter(15)], [101, 0]);
  t.equal(h2!.dataPointType, DataPointType.HISTOGRAM);
  t.equal(h2!.aggregationTemporality, AggregationTemporality.CUMULATIVE);
  t.same(h2!.dataPoints[0]!.value, { buckets: { boundaries: [0.001, 0.002], counts: [1, 5, 1] }, sum: 0.02, count: 7 });
  t.same(h2!.dataPoints[0]!.startTime, h1!.dataPoints[0]!.startTime, 'start time stays');
  t.equal(c2!.dataPointType, DataPointType.SUM);
  t.same([c1!.dataPoints[0]!.value, c2!.dataPoints[0]!.value], [10, 15]);
  t.same(c2!.dataPoints[0]!.attributes, { 'probepilot.cgroup': '/a' });
});

t.test('delta: the change since the last push; a reset starts over', async (t) => {
  const converter = new SnapshotConverter('delta');
  await converter.convert([histogram([1, 2, 0], 0.004), counter(10)], [100, 0]);
  const [h, c] = await converter.convert([histogram([1, 5, 1], 0.02), counter(15)], [101, 0]);
  t.equal(c!.aggregationTemporality, AggregationTemporality.DELTA);
  t.equal(c!.dataPoints[0]!.value, 5);
  t.same(c!.dataPoints[0]!.startTime, [100, 0], 'starts where the previous push ended');
  t.same(h!.dataPoints[0]!.value, { buckets: { boundaries: [0.001, 0.002], counts: [0, 3, 1] }, sum: 0.016, count: 4 });
  const [, reset] = await converter.convert([histogram([1, 5, 1], 0.02), counter(3)], [102, 0]);
  t.equal(reset!.dataPoints[0]!.value, 3, 'a counter that went backwards (a restarted source) counts from zero');
});

/** An exporter that answers from a script of results. */
class ScriptedExporter implements PushMetricExporter {
  calls = 0;
  shutdowns = 0;
  constructor(private readonly script: ExportResult[]) {}
  export(_metrics: ResourceMetrics, done: (result: ExportResult) => void): void {
    const result = this.script[Math.min(this.calls++, this.script.length - 1)]!;
    setImmediate(() => done(result));
  }
  forceFlush(): Promise<void> {
    return Promise.resolve();
  }
  shutdown(): Promise<void> {
    this.shutdowns++;
    return Promise.resolve();
  }
}

const unavailable: ExportResult = { code: ExportResultCode.FAILED, error: Object.assign(new Error('14 UNAVAILABLE'), { code: 14 }) };
const invalid: ExportResult = { code: ExportResultCode.FAILED, error: Object.assign(new Error('3 INVALID_ARGUMENT'), { code: 3 }) };
const ok: ExportResult = { code: ExportResultCode.SUCCESS };
const policy = { initialBackoffMs: 10, maxBackoffMs: 40, maxAttempts: 4, maxInFlight: 2 };
const metrics = {} as ResourceMetrics;
const exportOnce = (exporter: RetryingExporter) => new Promise<ExportResult>((resolve) => exporter.export(metrics, resolve));

t.test('retryable gRPC codes are retried, others are not', async (t) => {
  t.ok(isRetryable({ code: 14 }) && isRetryable({ code: 4 }) && isRetryable({ code: 8 }), 'UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED');
  t.notOk(isRetryable({ code: 3 }) || isRetryable({ code: 16 }) || isRetryable(new Error('x')), 'INVALID_ARGUMENT, UNAUTHENTICATED, no code');

  const flaky = new RetryingExporter(new ScriptedExporter([unavailable, unavailable, ok]), policy, silent);
  t.equal((await exportOnce(flaky)).code, ExportResultCode.SUCCESS, 'succeeds on the third attempt');
  t.same(flaky.outcomes, { success: 1, retry: 2, failure: 0, dropped: 0 });

  const down = new RetryingExporter(new ScriptedExporter([unavailable]), policy, silent);
  t.equal((await exportOnce(down)).code, ExportResultCode.FAILED);
  t.same(down.outcomes, { success: 0, retry: 3, failure: 1, dropped: 0 }, `gives up after ${policy.maxAttempts} attempts`);

  const rejected = new RetryingExporter(new ScriptedExporter([invalid]), policy, silent);
  await exportOnce(rejected);
  t.same(rejected.outcomes, { success: 0, retry: 0, failure: 1, dropped: 0 }, 'a non-retryable error fails at once');
});

t.test('an export that timed out (an endpoint that never answers) gets a fresh channel for its retry, the old one is closed', async (t) => {
  const timedOut: ExportResult = { code: ExportResultCode.FAILED, error: Object.assign(new Error('4 DEADLINE_EXCEEDED'), { code: 4 }) };
  const first = new ScriptedExporter([timedOut]);
  const made: ScriptedExporter[] = [];
  const renew = () => {
    const next = new ScriptedExporter(made.length === 0 ? [timedOut] : [ok]);
    made.push(next);
    return next;
  };
  const exporter = new RetryingExporter(first, policy, silent, renew);
  t.equal((await exportOnce(exporter)).code, ExportResultCode.SUCCESS, 'succeeds on the third channel');
  t.same([first.calls, ...made.map((e) => e.calls)], [1, 1, 1], 'each attempt on its own channel');
  t.same([first.shutdowns, made[0]!.shutdowns, made[1]!.shutdowns], [1, 1, 0], 'the timed-out channels are closed, the working one kept');
  const unanswered = new ScriptedExporter([unavailable, ok]);
  const kept = new RetryingExporter(unanswered, policy, silent, () => t.fail('UNAVAILABLE (refused, reset) needs no new channel') as never);
  await exportOnce(kept);
  t.equal(unanswered.calls, 2, 'an UNAVAILABLE retry reuses the channel');
});

t.test('backoff doubles up to its cap, with jitter in the upper half', async (t) => {
  const p = { initialBackoffMs: 100, maxBackoffMs: 1000, maxAttempts: 10, maxInFlight: 1 };
  t.same([1, 2, 3, 4, 5].map((a) => backoffMs(p, a, () => 1)), [100, 200, 400, 800, 1000]);
  t.same([1, 5].map((a) => backoffMs(p, a, () => 0)), [50, 500]);
});

t.test('a bounded number of exports in flight: the oldest is abandoned', async (t) => {
  const exporter = new RetryingExporter(new ScriptedExporter([unavailable]), { ...policy, maxAttempts: 100, maxBackoffMs: 10_000, initialBackoffMs: 5_000 }, silent);
  const results = [exportOnce(exporter), exportOnce(exporter), exportOnce(exporter)];
  const first = await results[0]!;
  t.equal(first.code, ExportResultCode.FAILED, 'the oldest gives way to the third');
  t.equal(exporter.outcomes.dropped, 1);
  await exporter.shutdown();
  await Promise.all(results);
  t.equal(exporter.outcomes.dropped, 3, 'shutdown abandons the rest');
});
