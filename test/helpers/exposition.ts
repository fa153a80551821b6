// Prometheus text exposition format (0.0.4): a parser for reading values back
// in tests, and a checker for what `promtool check metrics` 2.42 lets through
// but Prometheus or PromQL then get wrong — duplicate series, broken
// histograms, invalid UTF-8 (which makes Prometheus reject the whole scrape),
// bad escaping, misplaced HELP/TYPE, negative or NaN counters.
import { isUtf8 } from 'node:buffer';

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface Sample {
  /** The sample's own name: for histograms x_bucket, x_sum, x_count. */
  name: string;
  labels: Record<string, string>;
  value: number;
  timestamp?: number;
  /** 1-based line in the exposition, for messages. */
  line: number;
}

export interface MetricFamily {
  name: string;
  /** 'untyped' also when no TYPE line was given. */
  type: MetricType;
  help?: string;
  samples: Sample[];
}

interface FamilyState extends MetricFamily {
  helpLine?: number;
  typeLine?: number;
  /** Set once another family's lines followed this one's. */
  closed: boolean;
}

const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const blanks = /^[ \t]*/;
const types = new Set<string>(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/** Go's strconv.ParseFloat, which Prometheus uses, minus hex floats and underscores (never emitted). */
function parseFloatGo(text: string): number | undefined {
  if (/^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(text)) return Number(text);
  if (/^[+-]?inf(?:inity)?$/i.test(text)) return text.startsWith('-') ? -Infinity : Infinity;
  if (/^[+-]?nan$/i.test(text)) return NaN;
  return undefined;
}

function formatSeries(name: string, labels: Record<string, string>): string {
  const inner = Object.entries(labels)
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(',');
  return inner ? `${name}{${inner}}` : name;
}

function seriesKey(name: string, labels: Record<string, string>, omit?: string): string {
  const entries = Object.entries(labels)
    .filter(([k]) => k !== omit)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([name, entries]);
}

/**
 * The input is read as latin1 so that every character is one byte: label
 * values and HELP text are then checked for UTF-8 validity byte for byte and
 * decoded only afterwards.
 */
class Parser {
  readonly families = new Map<string, FamilyState>();
  readonly syntaxProblems: string[] = [];
  readonly semanticProblems: string[] = [];
  #current: FamilyState | undefined;

  constructor(input: Buffer) {
    const lines = input.toString('latin1').split('\n');
    // A final newline ends the last line; it does not start an empty one.
    if (lines.at(-1) === '') lines.pop();
    lines.forEach((text, i) => this.#line(text, i + 1));
  }

  #decode(raw: string, line: number, what: string): string {
    const bytes = Buffer.from(raw, 'latin1');
    if (!isUtf8(bytes)) this.syntaxProblems.push(`line ${line}: invalid UTF-8 in ${what}`);
    return bytes.toString('utf8');
  }

  #family(name: string): FamilyState {
    let family = this.families.get(name);
    if (!family) {
      family = { name, type: 'untyped', samples: [], closed: false };
      this.families.set(name, family);
    }
    return family;
  }

  /** Prometheus expects all lines of a family in one block. */
  #enter(family: FamilyState, line: number): void {
    if (family === this.#current) return;
    if (family.closed) this.semanticProblems.push(`line ${line}: lines of family ${family.name} are not contiguous`);
    if (this.#current) this.#current.closed = true;
    this.#current = family;
  }

  /** Which family a sample belongs to: its own name, or a histogram/summary whose suffixed series it is. */
  #familyOf(sampleName: string): FamilyState {
    const own = this.families.get(sampleName);
    if (own) return own;
    const suffix = /^(.*)_(bucket|sum|count)$/.exec(sampleName);
    if (suffix?.[1] && suffix[2]) {
      const base = this.families.get(suffix[1]);
      if (base?.type === 'histogram' || (base?.type === 'summary' && suffix[2] !== 'bucket')) return base;
    }
    return this.#family(sampleName);
  }

  /** The series names a declaration for `name` of this type would own, to spot samples that came first. */
  #samplesBefore(name: string, type: MetricType): Sample | undefined {
    const owned =
      type === 'histogram' ? [name, `${name}_bucket`, `${name}_sum`, `${name}_count`] : type === 'summary' ? [name, `${name}_sum`, `${name}_count`] : [name];
    for (const n of owned) {
      const sample = this.families.get(n)?.samples[0];
      if (sample) return sample;
    }
    return undefined;
  }

  #line(text: string, line: number): void {
    if (/^[ \t]*$/.test(text)) return;
    const meta = /^#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(text);
    if (meta) return this.#declaration(meta[1] as 'HELP' | 'TYPE', meta[2] ?? '', meta[3] ?? '', line);
    if (text.startsWith('#')) return;
    this.#sample(text, line);
  }

  #declaration(kind: 'HELP' | 'TYPE', name: string, rest: string, line: number): void {
    if (metricName.exec(name)?.[0] !== name) {
      this.syntaxProblems.push(`line ${line}: invalid metric name ${JSON.stringify(name)} in ${kind}`);
      return;
    }
    if (kind === 'TYPE' && !types.has(rest.trim())) {
      this.syntaxProblems.push(`line ${line}: unknown TYPE ${JSON.stringify(rest.trim())} for ${name}`);
      return;
    }
    const type = kind === 'TYPE' ? (rest.trim() as MetricType) : this.families.get(name)?.type ?? 'untyped';
    const early = this.#samplesBefore(name, type);
    if (early) this.semanticProblems.push(`line ${line}: ${kind} for ${name} after its samples (line ${early.line})`);
    const family = this.#family(name);
    this.#enter(family, line);
    if (kind === 'HELP') {
      if (family.helpLine !== undefined) this.semanticProblems.push(`line ${line}: HELP for ${name} declared twice (first at line ${family.helpLine})`);
      family.helpLine = line;
      family.help = this.#decode(rest, line, `HELP of ${name}`).replace(/\\(\\|n)/g, (_, c: string) => (c === 'n' ? '\n' : '\\'));
    } else {
      if (family.typeLine !== undefined) this.semanticProblems.push(`line ${line}: TYPE for ${name} declared twice (first at line ${family.typeLine})`);
      family.typeLine = line;
      family.type = type;
    }
  }

  #sample(text: string, line: number): void {
    const fail = (why: string): void => {
      this.syntaxProblems.push(`line ${line}: ${why}: ${JSON.stringify(text.slice(0, 200))}`);
    };
    let pos = blanks.exec(text)?.[0].length ?? 0;
    const name = metricName.exec(text.slice(pos))?.[0];
    if (!name) return fail('expected a metric name');
    pos += name.length;
    // A Map, so that a label called __proto__ or constructor is data like any other.
    const labels = new Map<string, string>();
    if (text[pos] === '{') {
      pos++;
      for (;;) {
        pos += blanks.exec(text.slice(pos))?.[0].length ?? 0;
        if (text[pos] === '}') break;
        const label = labelName.exec(text.slice(pos))?.[0];
        if (!label) return fail('expected a label name');
        pos += label.length;
        pos += blanks.exec(text.slice(pos))?.[0].length ?? 0;
        if (text[pos] !== '=') return fail(`expected = after label ${label}`);
        pos++;
        pos += blanks.exec(text.slice(pos))?.[0].length ?? 0;
        if (text[pos] !== '"') return fail(`expected " to open the value of label ${label}`);
        pos++;
        let raw = '';
        for (; pos < text.length && text[pos] !== '"'; pos++) {
          if (text[pos] !== '\\') {
            raw += text[pos];
            continue;
          }
          const escaped = text[++pos];
          if (escaped === '\\' || escaped === '"') raw += escaped;
          else if (escaped === 'n') raw += '\n';
          else {
            this.syntaxProblems.push(`line ${line}: bad escape \\${escaped ?? ''} in value of label ${label} (only \\\\, \\" and \\n are allowed)`);
            raw += `\\${escaped ?? ''}`;
          }
        }
        if (text[pos] !== '"') return fail(`unterminated value of label ${label}`);
        pos++;
        if (labels.has(label)) this.syntaxProblems.push(`line ${line}: label ${label} given twice`);
        if (label.startsWith('__')) this.syntaxProblems.push(`line ${line}: label name ${label} is reserved`);
        labels.set(label, this.#decode(raw, line, `value of label ${label}`));
        pos += blanks.exec(text.slice(pos))?.[0].length ?? 0;
        if (text[pos] === ',') pos++;
        else if (text[pos] !== '}') return fail('expected , or } after a label');
      }
      pos++;
    }
    if (!/^[ \t]/.test(text.slice(pos))) return fail('expected a blank before the value');
    const [valueText, timestampText, ...extra] = text.slice(pos).trim().split(/[ \t]+/);
    const value = parseFloatGo(valueText ?? '');
    if (value === undefined) return fail('invalid value');
    if (extra.length || (timestampText !== undefined && !/^-?\d+$/.test(timestampText))) return fail('invalid timestamp or trailing text');
    const sample: Sample = { name, labels: Object.fromEntries(labels), value, line };
    if (timestampText !== undefined) sample.timestamp = Number(timestampText);
    const family = this.#familyOf(name);
    this.#enter(family, line);
    family.samples.push(sample);
  }
}

function checkDuplicates(families: Iterable<MetricFamily>, problems: string[]): void {
  const seen = new Map<string, number>();
  for (const family of families) {
    for (const s of family.samples) {
      const key = seriesKey(s.name, s.labels);
      const first = seen.get(key);
      if (first !== undefined) problems.push(`line ${s.line}: duplicate series ${formatSeries(s.name, s.labels)} (first at line ${first})`);
      else seen.set(key, s.line);
    }
  }
}

function checkCounter(family: MetricFamily, problems: string[]): void {
  for (const s of family.samples) {
    if (Number.isNaN(s.value)) problems.push(`line ${s.line}: counter ${formatSeries(s.name, s.labels)} is NaN`);
    else if (s.value < 0) problems.push(`line ${s.line}: counter ${formatSeries(s.name, s.labels)} is negative (${s.value})`);
  }
}

function checkCount(s: Sample, kind: string, problems: string[]): void {
  if (Number.isNaN(s.value) || s.value < 0) problems.push(`line ${s.line}: ${kind} ${formatSeries(s.name, s.labels)} must be a non-negative number, is ${s.value}`);
}

interface HistogramSeries {
  buckets: Array<{ le: number; sample: Sample }>;
  count?: Sample;
  sum?: Sample;
  labels: Record<string, string>;
  line: number;
}

function checkHistogram(family: MetricFamily, problems: string[]): void {
  const series = new Map<string, HistogramSeries>();
  for (const s of family.samples) {
    const labels = { ...s.labels };
    delete labels.le;
    const key = seriesKey(family.name, labels);
    let h = series.get(key);
    if (!h) series.set(key, (h = { buckets: [], labels, line: s.line }));
    if (s.name === `${family.name}_bucket`) {
      const le = s.labels.le === undefined ? undefined : parseFloatGo(s.labels.le);
      if (le === undefined || Number.isNaN(le)) problems.push(`line ${s.line}: bucket ${formatSeries(s.name, s.labels)} has no valid le label`);
      else h.buckets.push({ le, sample: s });
      checkCount(s, 'histogram bucket', problems);
    } else if (s.name === `${family.name}_count`) {
      h.count = s;
      checkCount(s, 'histogram count', problems);
    } else if (s.name === `${family.name}_sum`) {
      h.sum = s;
    } else {
      problems.push(`line ${s.line}: sample ${s.name} in histogram ${family.name} is not a _bucket, _sum or _count`);
    }
  }
  for (const h of series.values()) {
    const id = formatSeries(family.name, h.labels);
    for (let i = 1; i < h.buckets.length; i++) {
      const prev = h.buckets[i - 1];
      const cur = h.buckets[i];
      if (!prev || !cur) continue;
      const [at, le, prevLe] = [`line ${cur.sample.line}: histogram ${id}`, cur.sample.labels.le, prev.sample.labels.le];
      if (cur.le <= prev.le) problems.push(`${at}: le ${le} does not increase after le ${prevLe}`);
      else if (cur.sample.value < prev.sample.value) {
        problems.push(`${at}: buckets are not cumulative (le ${le} = ${cur.sample.value} < le ${prevLe} = ${prev.sample.value})`);
      }
    }
    const inf = h.buckets.find((b) => b.le === Infinity);
    if (!inf) problems.push(`line ${h.line}: histogram ${id} has no +Inf bucket`);
    if (!h.count) problems.push(`line ${h.line}: histogram ${id} has no _count`);
    if (!h.sum) problems.push(`line ${h.line}: histogram ${id} has no _sum`);
    if (inf && h.count && inf.sample.value !== h.count.value) problems.push(`line ${h.count.line}: histogram ${id}: +Inf bucket (${inf.sample.value}) != _count (${h.count.value})`);
  }
}

function checkSummary(family: MetricFamily, problems: string[]): void {
  for (const s of family.samples) {
    if (s.name === `${family.name}_count`) checkCount(s, 'summary count', problems);
    else if (s.name === family.name) {
      const q = s.labels.quantile === undefined ? undefined : parseFloatGo(s.labels.quantile);
      if (q === undefined || !(q >= 0 && q <= 1)) problems.push(`line ${s.line}: summary ${formatSeries(s.name, s.labels)} needs a quantile label in [0, 1]`);
    }
  }
}

/** Every problem found, as "line N: what"; empty when the exposition is clean. */
export function checkExposition(input: Buffer | string): string[] {
  const parser = new Parser(typeof input === 'string' ? Buffer.from(input, 'utf8') : input);
  const problems = [...parser.syntaxProblems, ...parser.semanticProblems];
  checkDuplicates(parser.families.values(), problems);
  for (const family of parser.families.values()) {
    if (family.type === 'counter') checkCounter(family, problems);
    else if (family.type === 'histogram') checkHistogram(family, problems);
    else if (family.type === 'summary') checkSummary(family, problems);
  }
  return problems;
}

/** Families in exposition order. Throws when the text is not syntactically valid exposition format. */
export function parseExposition(input: Buffer | string): MetricFamily[] {
  const parser = new Parser(typeof input === 'string' ? Buffer.from(input, 'utf8') : input);
  if (parser.syntaxProblems.length) throw new Error(`invalid exposition:\n${parser.syntaxProblems.join('\n')}`);
  return [...parser.families.values()].map(({ name, type, help, samples }) => (help === undefined ? { name, type, samples } : { name, type, help, samples }));
}

/** A string must equal the label's value; a RegExp must match it (anchor it yourself). */
export type LabelFilter = Record<string, string | RegExp>;

/** Every sample named `name` whose labels match the filter. */
export function findSamples(families: readonly MetricFamily[], name: string, filter: LabelFilter = {}): Sample[] {
  return families.flatMap((f) =>
    f.samples.filter(
      (s) =>
        s.name === name &&
        Object.entries(filter).every(([k, want]) => {
          const got = s.labels[k];
          return got !== undefined && (typeof want === 'string' ? got === want : want.test(got));
        }),
    ),
  );
}

/**
 * The value of the one sample named `name` whose labels include `labels`;
 * undefined when none does. More than one match is an error: a test should
 * never read an arbitrary one of several series.
 */
export function sampleValue(families: readonly MetricFamily[], name: string, labels: LabelFilter = {}): number | undefined {
  const found = findSamples(families, name, labels);
  if (found.length > 1) throw new Error(`${found.length} series match ${name} ${JSON.stringify(labels)}; narrow the labels`);
  return found[0]?.value;
}

/** Sum over all samples named `name` whose labels match the filter (0 when none). */
export function sumSamples(families: readonly MetricFamily[], name: string, filter: LabelFilter = {}): number {
  return findSamples(families, name, filter).reduce((sum, s) => sum + s.value, 0);
}
