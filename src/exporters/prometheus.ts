// Prometheus exposition of collection snapshots. A scrape gets a fresh
// collection (shared with the scrapes, OTLP pushes and API queries already
// waiting for one), rendered in time slices into chunks: the text
// prom-client's registry renders in one synchronous pass, byte for byte,
// without holding the event loop for 100k series. prom-client still renders
// its process and Node.js metrics, which are few.
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { FamilyDescriptor, HistogramSample, Labels, MetricFamily } from '../metrics/model.js';
import { TimeSlicer } from '../metrics/slice.js';

const staleFamily: FamilyDescriptor = {
  name: 'probepilot_scrape_stale_total',
  help: 'Scrapes answered with the previous complete exposition because a fresh one was not ready within 80% of the scraper\'s timeout (X-Prometheus-Scrape-Timeout-Seconds).',
  type: 'counter',
  labelNames: [],
};

/** Share of the scraper's timeout spent waiting for a fresh exposition; the rest is for sending it. */
export const scrapeTimeoutShare = 0.8;

/** One rendered exposition: the text, in chunks of about chunkLength characters. */
export interface Exposition {
  /** Date.now() when its collection began. */
  at: number;
  chunks: string[];
}

export interface ScrapeAnswer {
  exposition: Exposition;
  /** The previous exposition, because the fresh one was not ready in time. */
  stale: boolean;
}

const chunkLength = 1 << 16;

/** prom-client's escaping: HELP text and names escape backslash and newline; label values also the double quote. */
function escapeText(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function formatLabels(labels: Labels): string {
  let out = '';
  for (const name in labels) out += `${out ? ',' : ''}${name}="${escapeText(labels[name]!).replace(/"/g, '\\"')}"`;
  return out;
}

/** prom-client's value format (NaN is written "Nan", which Prometheus reads as NaN). */
function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'Nan';
  if (!Number.isFinite(value)) return value < 0 ? '-Inf' : '+Inf';
  return `${value}`;
}

function histogramLines(name: string, sample: HistogramSample): string {
  const labels = formatLabels(sample.labels);
  const bucket = `${name}_bucket{${labels ? `${labels},` : ''}le="`;
  const plain = labels ? `{${labels}}` : '';
  let out = '';
  let cumulative = 0;
  sample.bounds.forEach((bound, i) => {
    cumulative += sample.counts[i] ?? 0;
    out += `\n${bucket}${bound}"} ${formatValue(cumulative)}`;
  });
  out += `\n${bucket}+Inf"} ${formatValue(sample.count)}`;
  out += `\n${name}_sum${plain} ${formatValue(sample.sum)}`;
  out += `\n${name}_count${plain} ${formatValue(sample.count)}`;
  return out;
}

/**
 * The exposition of these families in the descriptors' order (a descriptor
 * without a family gets its HELP and TYPE only), as prom-client's
 * registry.metrics() would write it, in chunks; yields to the event loop
 * between slices.
 */
export async function renderExposition(descriptors: readonly FamilyDescriptor[], families: readonly MetricFamily[], slicer: TimeSlicer): Promise<string[]> {
  const byName = new Map(families.map((f) => [f.name, f]));
  const chunks: string[] = [];
  let current = '';
  const emit = (text: string): void => {
    current += text;
    if (current.length >= chunkLength) {
      chunks.push(current);
      current = '';
    }
  };
  for (const [i, descriptor] of descriptors.entries()) {
    const name = escapeText(descriptor.name);
    emit(`${i > 0 ? '\n\n' : ''}# HELP ${name} ${escapeText(descriptor.help)}\n# TYPE ${name} ${descriptor.type}`);
    const family = byName.get(descriptor.name);
    if (!family) continue;
    if (family.type === 'histogram') {
      for (const sample of family.samples) {
        if (slicer.due()) await slicer.yield();
        emit(histogramLines(name, sample));
      }
    } else {
      for (const sample of family.samples) {
        if (slicer.due()) await slicer.yield();
        const labels = formatLabels(sample.labels);
        emit(`\n${name}${labels ? `{${labels}}` : ''} ${formatValue(sample.value)}`);
      }
    }
  }
  emit('\n');
  if (current) chunks.push(current);
  return chunks;
}

export class PrometheusExporter {
  /** prom-client's process and Node.js metrics. */
  private readonly registry = new Registry();
  private readonly descriptors: readonly FamilyDescriptor[];
  private latest: Exposition | undefined;
  private inflight: Promise<Exposition> | undefined;
  private staleAnswers = 0;

  constructor(
    descriptors: readonly FamilyDescriptor[],
    private readonly collect: () => Promise<MetricFamily[]>,
  ) {
    this.descriptors = [...descriptors, staleFamily];
    collectDefaultMetrics({ register: this.registry, prefix: 'probepilot_' });
    // Gauges named *_total break Prometheus conventions (promtool flags them); their per-type twins carry the same numbers.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
      this.registry.removeSingleMetric(`probepilot_${name}`);
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * The exposition for one scrape: a fresh one, shared with the scrapes that
   * arrive while it is being built. With the scraper's timeout, waits for it
   * at most scrapeTimeoutShare of that time, then answers with the previous
   * complete exposition (counted in probepilot_scrape_stale_total), or
   * undefined when there is none yet; the fresh one is still finished for
   * the scrapes after.
   */
  async scrape(timeoutSeconds?: number): Promise<ScrapeAnswer | undefined> {
    const fresh = this.fresh();
    if (timeoutSeconds === undefined) return { exposition: await fresh, stale: false };
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), timeoutSeconds * 1000 * scrapeTimeoutShare);
    });
    const exposition = await Promise.race([fresh, late]).finally(() => clearTimeout(timer));
    if (exposition) return { exposition, stale: false };
    if (!this.latest) return undefined;
    this.staleAnswers++;
    return { exposition: this.latest, stale: true };
  }

  private fresh(): Promise<Exposition> {
    this.inflight ??= this.build().finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private async build(): Promise<Exposition> {
    const at = Date.now();
    const families = await this.collect();
    const stale: MetricFamily = { ...staleFamily, type: 'counter', samples: [{ labels: {}, value: this.staleAnswers }] };
    const chunks = await renderExposition(this.descriptors, [...families, stale], new TimeSlicer());
    // registry.metrics() separates families by a blank line and ends with a newline, as ours do.
    chunks.push(`\n${await this.registry.metrics()}`);
    const exposition = { at, chunks };
    this.latest = exposition;
    return exposition;
  }
}
