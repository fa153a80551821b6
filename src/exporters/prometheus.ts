// Prometheus exposition of collection snapshots. A scrape gets a fresh
// collection (shared with the scrapes, OTLP pushes and API queries already
// waiting for one), rendered in time slices into chunks: the text
// prom-client's registry renders in one synchronous pass, byte for byte,
// without holding the event loop for 100k series. prom-client still renders
// its process and Node.js metrics, which are few.
import { promisify } from 'node:util';
import { constants as zlibConstants, gzip } from 'node:zlib';
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

/** One rendered exposition: the text as UTF-8, in chunks of about chunkLength characters. */
export interface Exposition {
  /** Date.now() when its collection began. */
  at: number;
  chunks: Buffer[];
  /** The same bytes gzip-compressed, made on the first scrape that asks (off the event loop) and shared. */
  gzipped?: Promise<Buffer>;
}

export interface ScrapeAnswer {
  exposition: Exposition;
  /** The previous exposition, because the fresh one was not ready in time. */
  stale: boolean;
}

const chunkLength = 1 << 16;
const gzipAsync = promisify(gzip);

/** prom-client's escaping: HELP text and names escape backslash and newline; label values also the double quote. */
function escapeText(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** Formatted label sets by object: a series keeps its labels object from one collection to the next. */
const formattedLabels = new WeakMap<Labels, string>();

function formatLabels(labels: Labels): string {
  let out = formattedLabels.get(labels);
  if (out === undefined) {
    out = '';
    for (const name in labels) out += `${out ? ',' : ''}${name}="${escapeText(labels[name]!).replace(/"/g, '\\"')}"`;
    formattedLabels.set(labels, out);
  }
  return out;
}

/** `le="BOUND"} ` per bound, by bounds array (one per histogram range). */
const bucketSuffixes = new WeakMap<readonly number[], string[]>();

function bucketSuffixesOf(bounds: readonly number[]): string[] {
  let suffixes = bucketSuffixes.get(bounds);
  if (!suffixes) {
    suffixes = bounds.map((bound) => `le="${bound}"} `);
    bucketSuffixes.set(bounds, suffixes);
  }
  return suffixes;
}

/** prom-client's value format (NaN is written "Nan", which Prometheus reads as NaN). */
function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'Nan';
  if (!Number.isFinite(value)) return value < 0 ? '-Inf' : '+Inf';
  return `${value}`;
}

function histogramLines(name: string, sample: HistogramSample): string {
  const labels = formatLabels(sample.labels);
  const bucket = `\n${name}_bucket{${labels ? `${labels},` : ''}`;
  const plain = labels ? `{${labels}}` : '';
  const suffixes = bucketSuffixesOf(sample.bounds);
  let out = '';
  let cumulative = 0;
  for (let i = 0; i < suffixes.length; i++) {
    cumulative += sample.counts[i] ?? 0;
    out += bucket + suffixes[i]! + formatValue(cumulative);
  }
  out += `${bucket}le="+Inf"} ${formatValue(sample.count)}`;
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
export async function renderExposition(descriptors: readonly FamilyDescriptor[], families: readonly MetricFamily[], slicer: TimeSlicer): Promise<Buffer[]> {
  const byName = new Map(families.map((f) => [f.name, f]));
  // Encoded chunk by chunk: short-lived strings, and the exposition kept off the JS heap until the next one.
  const chunks: Buffer[] = [];
  let current = '';
  const emit = (text: string): void => {
    current += text;
    if (current.length >= chunkLength) {
      chunks.push(Buffer.from(current));
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
  if (current) chunks.push(Buffer.from(current));
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

  /**
   * The exposition gzip-compressed: once per exposition, on the thread pool,
   * at the fastest level (as Prometheus's own client, promhttp, does). Each
   * chunk is its own gzip member, so nothing copies the whole text on the
   * event loop; a gzip stream of several members is one body to every
   * reader (RFC 1952; Go's gzip.Reader, which Prometheus uses, reads them all).
   */
  static gzipped(exposition: Exposition): Promise<Buffer> {
    exposition.gzipped ??= Promise.all(exposition.chunks.map((chunk) => gzipAsync(chunk, { level: zlibConstants.Z_BEST_SPEED }))).then((members) => Buffer.concat(members));
    return exposition.gzipped;
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
    chunks.push(Buffer.from(`\n${await this.registry.metrics()}`));
    const exposition = { at, chunks };
    this.latest = exposition;
    return exposition;
  }
}
