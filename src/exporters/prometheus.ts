// Prometheus exposition of collection snapshots. A scrape gets a fresh
// collection (shared with the scrapes, OTLP pushes and API queries already
// waiting for one), rendered in time slices into chunks: the text
// prom-client's registry renders in one synchronous pass, byte for byte,
// without holding the event loop for 100k series. prom-client still renders
// its process and Node.js metrics, which are few.
import { promisify } from 'node:util';
import { constants as zlibConstants, gzip } from 'node:zlib';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { FamilyDescriptor, HistogramSample, Labels, MetricFamily, ScalarSample } from '../metrics/model.js';
import { TimeSlicer } from '../metrics/slice.js';

const staleFamily: FamilyDescriptor = {
  name: 'probepilot_scrape_stale_total',
  help: 'Scrapes answered with the previous complete exposition because a fresh one was not ready within 80% of the scraper\'s timeout (X-Prometheus-Scrape-Timeout-Seconds).',
  type: 'counter',
  labelNames: [],
};

/** Share of the scraper's timeout spent waiting for a fresh exposition; the rest is for sending it. */
export const scrapeTimeoutShare = 0.8;

/** One rendered exposition: the text as UTF-8, in chunks of about chunkLength characters or bytes. */
export interface Exposition {
  /** Date.now() when its collection began. */
  at: number;
  chunks: Buffer[];
  /** What it was rendered from, for a caller that may see only part of it (a tenant). */
  families: readonly MetricFamily[];
  /** prom-client's process and Node.js metrics, the last chunk. */
  tail: Buffer;
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

/** A sample's lines as last rendered, with the values they show. */
interface RenderedScalar {
  value: number;
  text: string;
}

interface RenderedHistogram {
  bounds: readonly number[];
  counts: readonly number[];
  sum: number;
  count: number;
  /** Already UTF-8: a reused histogram is copied, never concatenated and encoded again (its text, a deep rope of + pieces, was slower to reuse than to rebuild). */
  bytes: Buffer;
}

/**
 * Rendered lines per family name, by labels object (a series keeps its labels
 * object from one collection to the next): between two scrapes most series
 * have not moved, and comparing their numbers costs far less than formatting
 * them again (at 100k series formatting was most of a scrape's CPU, and its
 * garbage most of the rest).
 */
const renderedScalars = new Map<string, WeakMap<Labels, RenderedScalar>>();
const renderedHistograms = new Map<string, WeakMap<Labels, RenderedHistogram>>();

function cacheOf<T>(caches: Map<string, WeakMap<Labels, T>>, name: string): WeakMap<Labels, T> {
  let cache = caches.get(name);
  if (!cache) caches.set(name, (cache = new WeakMap()));
  return cache;
}

function sameCounts(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function cachedHistogramLines(cache: WeakMap<Labels, RenderedHistogram>, name: string, sample: HistogramSample): Buffer {
  const last = cache.get(sample.labels);
  // Object.is: NaN sums compare equal to themselves.
  if (last && last.count === sample.count && Object.is(last.sum, sample.sum) && last.bounds === sample.bounds && sameCounts(last.counts, sample.counts)) return last.bytes;
  const bytes = Buffer.from(histogramLines(name, sample));
  cache.set(sample.labels, { bounds: sample.bounds, counts: [...sample.counts], sum: sample.sum, count: sample.count, bytes });
  return bytes;
}

function cachedScalarLine(cache: WeakMap<Labels, RenderedScalar>, name: string, sample: ScalarSample): string {
  const last = cache.get(sample.labels);
  if (last && Object.is(last.value, sample.value)) return last.text;
  const labels = formatLabels(sample.labels);
  const text = `\n${name}${labels ? `{${labels}}` : ''} ${formatValue(sample.value)}`;
  cache.set(sample.labels, { value: sample.value, text });
  return text;
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
  // Text not encoded yet, and encoded pieces of the chunk under way.
  let current = '';
  let pieces: Buffer[] = [];
  let piecesLength = 0;
  const endChunk = (): void => {
    chunks.push(pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces, piecesLength));
    pieces = [];
    piecesLength = 0;
  };
  const encodeCurrent = (): void => {
    if (!current) return;
    const bytes = Buffer.from(current);
    current = '';
    pieces.push(bytes);
    piecesLength += bytes.length;
  };
  const emit = (text: string): void => {
    current += text;
    if (current.length >= chunkLength) {
      encodeCurrent();
      endChunk();
    }
  };
  const emitBytes = (bytes: Buffer): void => {
    encodeCurrent();
    pieces.push(bytes);
    piecesLength += bytes.length;
    if (piecesLength >= chunkLength) endChunk();
  };
  for (const [i, descriptor] of descriptors.entries()) {
    const name = escapeText(descriptor.name);
    emit(`${i > 0 ? '\n\n' : ''}# HELP ${name} ${escapeText(descriptor.help)}\n# TYPE ${name} ${descriptor.type}`);
    const family = byName.get(descriptor.name);
    if (!family) continue;
    if (family.type === 'histogram') {
      const cache = cacheOf(renderedHistograms, name);
      for (const sample of family.samples) {
        if (slicer.due()) await slicer.yield();
        emitBytes(cachedHistogramLines(cache, name, sample));
      }
    } else {
      const cache = cacheOf(renderedScalars, name);
      for (const sample of family.samples) {
        if (slicer.due()) await slicer.yield();
        emit(cachedScalarLine(cache, name, sample));
      }
    }
  }
  emit('\n');
  encodeCurrent();
  if (piecesLength) endChunk();
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

  /** The exposition with only the samples whose labels pass keep (families keep their HELP and TYPE), in the same chunked form. */
  async filtered(exposition: Exposition, keep: (labels: Labels) => boolean): Promise<Exposition> {
    const families = exposition.families.map((family) =>
      family.type === 'histogram' ? { ...family, samples: family.samples.filter((s) => keep(s.labels)) } : { ...family, samples: family.samples.filter((s) => keep(s.labels)) },
    );
    const chunks = await renderExposition(this.descriptors, families, new TimeSlicer());
    chunks.push(exposition.tail);
    return { at: exposition.at, chunks, families, tail: exposition.tail };
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
    const all = [...families, stale];
    const chunks = await renderExposition(this.descriptors, all, new TimeSlicer());
    // registry.metrics() separates families by a blank line and ends with a newline, as ours do.
    const tail = Buffer.from(`\n${await this.registry.metrics()}`);
    chunks.push(tail);
    const exposition = { at, chunks, families: all, tail };
    this.latest = exposition;
    return exposition;
  }
}
