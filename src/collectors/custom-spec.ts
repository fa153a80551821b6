// Custom probe specs: a user's YAML file that says how the maps of their
// CO-RE object read as metric families. Parsing is strict — every error
// names the probe, the map and the field — and the result is the layout the
// tracepoint collector already reads (cgroup id → identity, u64 fields
// summed over CPUs, struct pp_hist histograms), plus key decoders that turn
// the other key bytes into labels.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { MapInfo } from '../bpf/addon.js';
import { formatIp } from '../ip.js';
import { histogramSize } from '../metrics/histogram.js';
import { sanitizeLabelValue, type Labels } from '../metrics/model.js';
import type { IdentityScope } from '../identity/identity.js';

export const keyDecoders = ['cgroup', 'uint', 'int', 'enum', 'ipv4', 'ipv6', 'ksym', 'string'] as const;
export type KeyDecoder = (typeof keyDecoders)[number];
const valueTypes = ['u64', 'histogram'] as const;
type ValueType = (typeof valueTypes)[number];
const metricTypes = ['counter', 'gauge', 'histogram'] as const;
type MetricType = (typeof metricTypes)[number];
const attachKinds = ['tracepoint', 'rawTracepoint', 'auto'] as const;
const scopes: readonly IdentityScope[] = ['container', 'pod'];

/** Labels the agent sets itself: a key field may not take their names. */
const reservedLabels = ['cgroup', 'namespace', 'pod', 'container', 'workload', 'workload_kind', 'le', 'collector'] as const;

export interface KeyField {
  name: string;
  offset: number;
  size: number;
  decoder: KeyDecoder;
  /** enum: number → name. */
  values?: ReadonlyMap<number, string>;
}

export interface ValueField {
  name: string;
  offset: number;
  type: ValueType;
}

export interface MetricSpec {
  name: string;
  help: string;
  type: MetricType;
  /** A value field: u64 for counters and gauges, histogram for histograms. */
  value: string;
}

export interface CustomMapSpec {
  name: string;
  maxEntries?: number;
  key: readonly KeyField[];
  value: readonly ValueField[];
  metrics: readonly MetricSpec[];
}

export type CustomAttach = { program: string; tracepoint: `${string}:${string}` } | { program: string; rawTracepoint: string } | { program: string; auto: true };

export interface CustomProbeSpec {
  name: string;
  /** Absolute path of the .bpf.o (the spec gives it relative to its own directory). */
  object: string;
  scope: IdentityScope;
  attach: readonly CustomAttach[];
  maps: readonly CustomMapSpec[];
}

/** A spec that cannot be used; the message names the probe, map and field. */
export class ProbeSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProbeSpecError';
  }
}

const probeName = /^[a-z][a-z0-9_]{0,62}$/;
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const symbolName = /^[A-Za-z_][A-Za-z0-9_.]*$/;
const decoderSizes: Record<KeyDecoder, readonly number[] | 'any'> = {
  cgroup: [8],
  uint: [1, 2, 4, 8],
  int: [1, 2, 4, 8],
  enum: [1, 2, 4],
  ipv4: [4],
  ipv6: [16],
  ksym: [8],
  string: 'any',
};
/** A string key field is at most this long: it is a label value. */
const maxStringSize = 256;

type Node = Record<string, unknown>;

function describe(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

/** Walks one YAML mapping, every error prefixed with where it is. */
class Reader {
  constructor(
    private readonly node: Node,
    readonly where: string,
    allowed: readonly string[],
  ) {
    for (const key of Object.keys(node)) {
      if (!allowed.includes(key)) this.fail(`unknown key "${key}"; allowed: ${allowed.join(', ')}`);
    }
  }

  /** checkKeys false: only to read the name the checking reader's messages start with. */
  static of(value: unknown, where: string, allowed: readonly string[], checkKeys = true): Reader {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new ProbeSpecError(`${where}: got ${describe(value)}, expected a mapping with keys: ${allowed.join(', ')}`);
    }
    return new Reader(value as Node, where, checkKeys ? allowed : Object.keys(value));
  }

  fail(message: string): never {
    throw new ProbeSpecError(`${this.where}: ${message}`);
  }

  has(key: string): boolean {
    return this.node[key] !== undefined;
  }

  string(key: string, pattern?: RegExp, what = 'a string'): string {
    const value = this.node[key];
    if (typeof value !== 'string' || value === '' || (pattern && !pattern.test(value))) this.fail(`"${key}": got ${describe(value)}, expected ${what}`);
    return value;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], fallback?: T): T {
    const value = this.node[key] ?? fallback;
    if (typeof value !== 'string' || !allowed.includes(value as T)) {
      this.fail(value === undefined ? `"${key}" is missing; allowed: ${allowed.join(', ')}` : `unknown ${key} ${describe(value)}; allowed: ${allowed.join(', ')}`);
    }
    return value as T;
  }

  integer(key: string, min: number, max: number): number {
    const value = this.node[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) this.fail(`"${key}": got ${describe(value)}, expected an integer from ${min} to ${max}`);
    return value;
  }

  list(key: string): unknown[] {
    const value = this.node[key];
    if (!Array.isArray(value) || value.length === 0) this.fail(`"${key}": got ${describe(value)}, expected a non-empty list`);
    return value;
  }

  raw(key: string): unknown {
    return this.node[key];
  }
}

function parseEnumValues(field: Reader): ReadonlyMap<number, string> {
  const raw = field.raw('values');
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || Object.keys(raw).length === 0) {
    field.fail(`"values": got ${describe(raw)}, expected a mapping of numbers to names (e.g. {0: read, 1: write})`);
  }
  const values = new Map<number, string>();
  for (const [number, name] of Object.entries(raw as Node)) {
    if (!/^(0|[1-9]\d*)$/.test(number) || Number(number) > 0xffff_ffff) field.fail(`"values": key ${describe(number)} is no integer from 0 to 4294967295`);
    if (typeof name !== 'string' || name === '') field.fail(`"values": ${number} names ${describe(name)}, expected a non-empty string`);
    values.set(Number(number), sanitizeLabelValue(name));
  }
  return values;
}

function parseKeyField(value: unknown, where: string): KeyField {
  const base = Reader.of(value, where, ['name', 'offset', 'size', 'decoder', 'values'], false);
  const name = base.string('name', labelName, 'a label name (letters, digits and _, not starting with a digit)');
  const field = Reader.of(value, `${where.replace(/ key field #\d+$/, '')} key field "${name}"`, ['name', 'offset', 'size', 'decoder', 'values']);
  const decoder = field.oneOf('decoder', keyDecoders);
  const sizes = decoderSizes[decoder];
  const size = field.has('size') ? field.integer('size', 1, sizes === 'any' ? maxStringSize : 16) : sizes === 'any' ? field.fail('"size" is missing: a string field needs its byte length') : sizes[0]!;
  if (sizes !== 'any' && !sizes.includes(size)) field.fail(`"size": decoder ${decoder} reads ${sizes.join(', ')} bytes, got ${size}`);
  if (decoder === 'cgroup' ? false : (reservedLabels as readonly string[]).includes(name)) {
    field.fail(`the label name is the agent's own (${reservedLabels.join(', ')}); rename the field`);
  }
  if (decoder !== 'enum' && field.has('values')) field.fail('"values" is only for decoder enum');
  return {
    name,
    offset: field.integer('offset', 0, 1 << 16),
    size,
    decoder,
    ...(decoder === 'enum' ? { values: parseEnumValues(field) } : {}),
  };
}

function parseValueField(value: unknown, where: string): ValueField {
  const base = Reader.of(value, where, ['name', 'offset', 'type'], false);
  const name = base.string('name', labelName, 'a name (letters, digits and _)');
  const field = Reader.of(value, `${where.replace(/ value field #\d+$/, '')} value field "${name}"`, ['name', 'offset', 'type']);
  const type = field.oneOf('type', valueTypes, 'u64');
  return { name, type, offset: field.integer('offset', 0, 1 << 20) };
}

function parseMetric(value: unknown, where: string, fields: readonly ValueField[]): MetricSpec {
  const base = Reader.of(value, where, ['name', 'help', 'type', 'value'], false);
  const name = base.string('name', metricName, 'a Prometheus metric name');
  const metric = Reader.of(value, `${where.replace(/ metric #\d+$/, '')} metric "${name}"`, ['name', 'help', 'type', 'value']);
  // The agent's own families are probepilot_* but never probepilot_custom_*: a probe cannot shadow one.
  if (name.startsWith('probepilot_') && !name.startsWith('probepilot_custom_')) metric.fail('probepilot_* names are the agent\'s own; name it probepilot_custom_* or outside probepilot_');
  const type = metric.oneOf('type', metricTypes);
  if (type === 'counter' && !name.endsWith('_total')) metric.fail('a counter\'s name ends in _total');
  if (type === 'histogram' && !name.endsWith('_seconds')) metric.fail('a histogram\'s name ends in _seconds (its struct pp_hist slots are nanoseconds)');
  if (type !== 'counter' && name.endsWith('_total')) metric.fail('only counters end in _total');
  const fieldName = metric.string('value');
  const field = fields.find((f) => f.name === fieldName);
  if (!field) return metric.fail(`"value": no value field "${fieldName}"; the map's value fields: ${fields.map((f) => f.name).join(', ')}`);
  const wanted: ValueType = type === 'histogram' ? 'histogram' : 'u64';
  if (field.type !== wanted) metric.fail(`"value": a ${type} reads a ${wanted} field; "${fieldName}" is ${field.type}`);
  return { name, help: metric.has('help') ? metric.string('help') : `${name} (custom probe)`, type, value: fieldName };
}

function checkOverlaps(fields: ReadonlyArray<{ name: string; offset: number; size: number }>, where: string, what: string): void {
  const sorted = [...fields].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const [prev, next] = [sorted[i - 1]!, sorted[i]!];
    if (next.offset < prev.offset + prev.size) throw new ProbeSpecError(`${where}: ${what} "${next.name}" at byte ${next.offset} overlaps "${prev.name}" (bytes ${prev.offset}..${prev.offset + prev.size - 1})`);
  }
}

function parseMap(value: unknown, where: string): CustomMapSpec {
  const base = Reader.of(value, where, ['name', 'maxEntries', 'key', 'value', 'metrics'], false);
  const name = base.string('name', symbolName, 'a map name as in the object');
  const at = `${where.replace(/ map #\d+$/, '')} map "${name}"`;
  const map = Reader.of(value, at, ['name', 'maxEntries', 'key', 'value', 'metrics']);
  const key = map.list('key').map((f, i) => parseKeyField(f, `${at}: key field #${i + 1}`));
  const valueFields = map.list('value').map((f, i) => parseValueField(f, `${at}: value field #${i + 1}`));
  for (const [list, what] of [[key, 'key field'], [valueFields, 'value field']] as const) {
    const seen = new Set<string>();
    for (const f of list) {
      if (seen.has(f.name)) throw new ProbeSpecError(`${at}: ${what} "${f.name}" is declared twice`);
      seen.add(f.name);
    }
  }
  if (key.filter((f) => f.decoder === 'cgroup').length > 1) throw new ProbeSpecError(`${at}: more than one key field has decoder cgroup; one names the workload`);
  checkOverlaps(key, at, 'key field');
  checkOverlaps(valueFields.map((f) => ({ ...f, size: f.type === 'histogram' ? histogramSize : 8 })), at, 'value field');
  const metrics = map.list('metrics').map((m, i) => parseMetric(m, `${at}: metric #${i + 1}`, valueFields));
  return { name, key, value: valueFields, metrics, ...(map.has('maxEntries') ? { maxEntries: map.integer('maxEntries', 1, 1 << 24) } : {}) };
}

function parseAttach(value: unknown, where: string): CustomAttach {
  const point = Reader.of(value, where, ['program', ...attachKinds]);
  const program = point.string('program', symbolName, 'a program (function) name as in the object');
  const kinds = attachKinds.filter((k) => point.has(k));
  if (kinds.length !== 1) point.fail(`program ${program}: give exactly one of ${attachKinds.join(', ')}`);
  if (point.has('tracepoint')) return { program, tracepoint: point.string('tracepoint', /^[a-z0-9_]+:[a-z0-9_]+$/i, 'CATEGORY:NAME (e.g. sock:inet_sock_set_state)') as `${string}:${string}` };
  if (point.has('rawTracepoint')) return { program, rawTracepoint: point.string('rawTracepoint', symbolName, 'a raw tracepoint name (e.g. sched_switch)') };
  if (point.raw('auto') !== true) point.fail(`program ${program}: "auto": got ${describe(point.raw('auto'))}, expected true (attach as its SEC() name says)`);
  return { program, auto: true };
}

/** Parses a spec document; `file` places the object path and names the probe in errors before its name is known. */
export function parseProbeSpec(doc: unknown, file: string): CustomProbeSpec {
  const fileWhere = `probe spec ${file}`;
  const top = Reader.of(doc, fileWhere, ['name', 'object', 'scope', 'attach', 'maps'], false);
  const name = top.string('name', probeName, 'a lower-case name (letters, digits and _, up to 63): the collector is custom_<name>');
  const where = `probe ${name}`;
  const spec = Reader.of(doc, where, ['name', 'object', 'scope', 'attach', 'maps']);
  const object = path.resolve(path.dirname(file), spec.string('object', /\.o$/, 'the path of a .bpf.o, relative to the spec file'));
  const attach = spec.list('attach').map((p, i) => parseAttach(p, `${where}: attach #${i + 1}`));
  const maps = spec.list('maps').map((m, i) => parseMap(m, `${where}: map #${i + 1}`));
  const names = new Set<string>();
  for (const metric of maps.flatMap((m) => m.metrics)) {
    if (names.has(metric.name)) throw new ProbeSpecError(`${where}: metric "${metric.name}" is declared twice`);
    names.add(metric.name);
  }
  return { name, object, scope: spec.oneOf('scope', scopes, 'container'), attach, maps };
}

export function readProbeSpec(file: string): CustomProbeSpec {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ProbeSpecError(`probe spec ${file}: cannot read: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ProbeSpecError(`probe spec ${file}: not valid YAML: ${(err as Error).message}`);
  }
  return parseProbeSpec(doc, file);
}

/** BPF_MAP_TYPE_HASH, ARRAY, PERCPU_HASH, PERCPU_ARRAY, LRU_HASH, LRU_PERCPU_HASH: maps of keys and values a batch read dumps. */
const readableMapTypes: ReadonlySet<number> = new Set([1, 2, 5, 6, 9, 10]);

/** The layout checks only the loaded object can answer: the maps exist and every field fits in its key or value. */
export function checkMapLayout(probe: string, spec: CustomMapSpec, info: MapInfo | undefined, objectMaps: readonly string[]): void {
  const where = `probe ${probe}: map "${spec.name}"`;
  if (!info) throw new ProbeSpecError(`${where}: not in the object; its maps: ${objectMaps.join(', ')}`);
  if (!readableMapTypes.has(info.type)) {
    throw new ProbeSpecError(`${where}: map type ${info.type} is not read as metrics; use a hash, an array or an LRU hash (per-CPU or not)`);
  }
  for (const field of spec.key) {
    if (field.offset + field.size > info.keySize) {
      throw new ProbeSpecError(`${where}: key field "${field.name}": bytes ${field.offset}..${field.offset + field.size - 1} end beyond the map's ${info.keySize}-byte key`);
    }
  }
  for (const field of spec.value) {
    const size = field.type === 'histogram' ? histogramSize : 8;
    if (field.offset + size > info.valueSize) {
      throw new ProbeSpecError(`${where}: value field "${field.name}": ${field.type} at byte ${field.offset} needs ${size} bytes, beyond the map's ${info.valueSize}-byte value`);
    }
  }
}

/** Kernel symbols by address, from /proc/kallsyms: a key holding a code address names its function. */
export class KernelSymbols {
  private readonly addresses: bigint[];
  private readonly names: string[];

  constructor(kallsyms: string) {
    const entries: Array<[bigint, string]> = [];
    for (const line of kallsyms.split('\n')) {
      const [address, type, name] = line.split(/\s+/);
      // Text symbols only (t/T, w/W): a probe's addresses are functions.
      if (!address || !name || !type || !/^[tTwW]$/.test(type)) continue;
      const value = BigInt(`0x${address}`);
      if (value !== 0n) entries.push([value, name]);
    }
    entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    this.addresses = entries.map((e) => e[0]);
    this.names = entries.map((e) => e[1]);
  }

  /** No symbol has an address: kptr_restrict hides them from this process. */
  get empty(): boolean {
    return this.addresses.length === 0;
  }

  /** The function containing address (the nearest symbol at or below it); undefined below the first. */
  resolve(address: bigint): string | undefined {
    let lo = 0;
    let hi = this.addresses.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.addresses[mid]! <= address) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found < 0 ? undefined : this.names[found];
  }
}

function readUint(key: Buffer, offset: number, size: number): bigint {
  switch (size) {
    case 1:
      return BigInt(key.readUInt8(offset));
    case 2:
      return BigInt(key.readUInt16LE(offset));
    case 4:
      return BigInt(key.readUInt32LE(offset));
    default:
      return key.readBigUInt64LE(offset);
  }
}

function readInt(key: Buffer, offset: number, size: number): bigint {
  switch (size) {
    case 1:
      return BigInt(key.readInt8(offset));
    case 2:
      return BigInt(key.readInt16LE(offset));
    case 4:
      return BigInt(key.readInt32LE(offset));
    default:
      return key.readBigInt64LE(offset);
  }
}

const v4MappedPrefix = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

/** One key field's label value. Numbers are in host (little-endian) order, addresses in network order, as the kernel keeps them. */
export function decodeKeyField(field: KeyField, key: Buffer, symbols?: KernelSymbols): string {
  const { offset, size } = field;
  switch (field.decoder) {
    case 'cgroup':
    case 'uint':
      return readUint(key, offset, size).toString();
    case 'int':
      return readInt(key, offset, size).toString();
    case 'enum': {
      const number = Number(readUint(key, offset, size));
      return field.values?.get(number) ?? String(number);
    }
    case 'ipv4':
      return formatIp(4, key.subarray(offset, offset + 4));
    case 'ipv6': {
      const bytes = key.subarray(offset, offset + 16);
      // An IPv4 peer of a dual-stack socket is stored v4-mapped: shown as the IPv4 address it is.
      return bytes.subarray(0, 12).equals(v4MappedPrefix) ? formatIp(4, bytes.subarray(12)) : formatIp(6, bytes);
    }
    case 'ksym': {
      const address = key.readBigUInt64LE(offset);
      return symbols?.resolve(address) ?? `0x${address.toString(16)}`;
    }
    case 'string': {
      const bytes = key.subarray(offset, offset + size);
      const end = bytes.indexOf(0);
      return sanitizeLabelValue(bytes.subarray(0, end < 0 ? size : end).toString('utf8'));
    }
  }
}

/** The labels of a key: every key field but the cgroup id, by its name. */
export function keyLabeler(fields: readonly KeyField[], symbols?: KernelSymbols): (key: Buffer) => Labels {
  const labelled = fields.filter((f) => f.decoder !== 'cgroup');
  return (key) => Object.fromEntries(labelled.map((f) => [f.name, decodeKeyField(f, key, symbols)]));
}
