// Prometheus exposition of collector snapshots through prom-client: each
// family is a registry entry whose values come from the snapshot of the
// scrape in progress; concurrent scrapes share one collection.
import { Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { FamilyDescriptor, HistogramSample, MetricFamily } from '../metrics/model.js';

interface PromValue {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

interface PromMetricData {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  values: PromValue[];
  aggregator: 'sum';
}

function histogramValues(name: string, sample: HistogramSample): PromValue[] {
  const values: PromValue[] = [];
  let cumulative = 0;
  sample.bounds.forEach((bound, i) => {
    cumulative += sample.counts[i] ?? 0;
    values.push({ metricName: `${name}_bucket`, labels: { ...sample.labels, le: bound }, value: cumulative });
  });
  values.push({ metricName: `${name}_bucket`, labels: { ...sample.labels, le: '+Inf' }, value: sample.count });
  values.push({ metricName: `${name}_sum`, labels: sample.labels, value: sample.sum });
  values.push({ metricName: `${name}_count`, labels: sample.labels, value: sample.count });
  return values;
}

export function toPromValues(family: MetricFamily): PromValue[] {
  if (family.type === 'histogram') return family.samples.flatMap((s) => histogramValues(family.name, s));
  return family.samples.map((s) => ({ labels: s.labels, value: s.value }));
}

export class PrometheusExporter {
  readonly registry = new Registry();
  private snapshot = new Map<string, MetricFamily>();
  private inflight: Promise<string> | undefined;

  constructor(
    descriptors: readonly FamilyDescriptor[],
    private readonly collect: () => Promise<MetricFamily[]>,
  ) {
    for (const descriptor of descriptors) {
      const entry = {
        name: descriptor.name,
        help: descriptor.help,
        type: descriptor.type,
        get: (): PromMetricData => {
          const family = this.snapshot.get(descriptor.name);
          return { name: descriptor.name, help: descriptor.help, type: descriptor.type, aggregator: 'sum', values: family ? toPromValues(family) : [] };
        },
      };
      // prom-client's registry only needs name/help/type/get(); a full Metric subclass would copy every value again.
      this.registry.registerMetric(entry as unknown as Metric);
    }
    collectDefaultMetrics({ register: this.registry, prefix: 'probepilot_' });
    // Gauges named *_total break Prometheus conventions (promtool flags them); their per-type twins carry the same numbers.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      this.registry.removeSingleMetric(`probepilot_${name}`);
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text; scrapes that arrive while one is being built get the same text. */
  metrics(): Promise<string> {
    this.inflight ??= this.render().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private async render(): Promise<string> {
    const families = await this.collect();
    this.snapshot = new Map(families.map((f) => [f.name, f]));
    return this.registry.metrics();
  }
}
