// Detection rules over security events (README "Detection rules"): a YAML
// file of named rules, each a condition over the event's fields and its
// workload's identity. The file is checked whole before it is used, and an
// error names the rule (index and name), the field and what is allowed, so a
// typo cannot silently turn a rule off.
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../config.js';
import { globToRegExp } from '../glob.js';
import { parseIp, parsePrefix, prefixContains, type IpPrefix } from '../ip.js';
import { parseKubeletCgroup } from '../identity/kubelet.js';
import type { SecurityTraceEvent } from '../api/events.js';
import { securityOps } from './records.js';

export const severities = ['low', 'medium', 'high', 'critical'] as const;
export type Severity = (typeof severities)[number];

export interface SecurityRule {
  name: string;
  severity: Severity;
  description: string;
  matches(event: SecurityTraceEvent, peers: PeerClassifier): boolean;
}

/** Names the class of a connect's peer as the flows do: pod, host, node, a configured CIDR name, or world. */
export type PeerClassifier = (address: string) => string;

type Condition = (event: SecurityTraceEvent, peers: PeerClassifier) => boolean;
type Value = string | number | boolean | readonly string[] | undefined;

const kinds: readonly string[] = Object.values(securityOps);
/** Rule names become label values: short, lower-case, no spaces. */
const namePattern = /^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$/;
const maxRules = 512;

const execKinds = new Set(['exec', 'setuid_exec']);

/** What a field holds and how to read it from an event; an absent value matches nothing (and so every not:). */
const fields: Record<string, { type: 'string' | 'number' | 'boolean' | 'address' | 'kind'; get: (event: SecurityTraceEvent, peers: PeerClassifier) => Value; doc: string }> = {
  kind: { type: 'kind', get: (e) => e.kind, doc: 'the event kind' },
  path: { type: 'string', get: (e) => e.path, doc: 'exec: the binary; file ops: the path; mount: the target' },
  binary: { type: 'string', get: (e) => (execKinds.has(e.kind) ? e.path : undefined), doc: 'exec and setuid_exec: the binary run' },
  args: { type: 'string', get: (e) => e.args, doc: 'any one argv element (rename: the new name; mount: the source)' },
  comm: { type: 'string', get: (e) => e.comm, doc: 'the task name' },
  parentComm: { type: 'string', get: (e) => e.parentComm, doc: "the parent's task name" },
  uid: { type: 'number', get: (e) => e.uid, doc: 'real uid' },
  euid: { type: 'number', get: (e) => e.euid, doc: 'effective uid' },
  arg: { type: 'number', get: (e) => e.arg, doc: 'open flags, chmod mode, ptrace target, mount flags' },
  exitCode: { type: 'number', get: (e) => e.exitCode, doc: 'exit: the code' },
  address: { type: 'address', get: (e) => e.address, doc: 'connect: the peer; listen: the local address' },
  port: { type: 'number', get: (e) => e.port, doc: 'connect: the peer port; listen: the local port' },
  peerClass: { type: 'string', get: (e, peers) => (e.kind === 'connect' && e.address ? peers(e.address) : undefined), doc: 'connect: pod, host, node, a collectors.network.flows.peerCidrs name, or world' },
  namespace: { type: 'string', get: (e) => e.workload.namespace, doc: 'identity (Kubernetes mode)' },
  pod: { type: 'string', get: (e) => e.workload.pod, doc: 'identity (Kubernetes mode)' },
  container: { type: 'string', get: (e) => e.workload.container, doc: 'identity (Kubernetes mode)' },
  workload: { type: 'string', get: (e) => e.workload.workload, doc: 'identity (Kubernetes mode)' },
  workloadKind: { type: 'string', get: (e) => e.workload.workload_kind, doc: 'identity (Kubernetes mode; "node" off pods)' },
  cgroup: { type: 'string', get: (e) => e.workload.cgroup, doc: 'identity (standalone mode)' },
  inPod: { type: 'boolean', get: (e) => inPod(e), doc: 'true for a task of a pod, false for the node' },
};
const combinators = ['all', 'any', 'not'] as const;
const allowedKeys = [...Object.keys(fields), ...combinators].join(', ');

/**
 * Kubernetes mode names the pod ("unknown" for a pod the API server has not
 * told of, "" off pods); standalone mode has the cgroup path, which is a
 * pod's when it lies in the kubelet's tree.
 */
function inPod(event: SecurityTraceEvent): boolean {
  const { pod, cgroup } = event.workload;
  if (pod !== undefined) return pod !== '';
  return cgroup !== undefined && parseKubeletCgroup(cgroup) !== undefined;
}

class RuleError extends Error {}

function describe(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function onlyKey(at: string, value: Record<string, unknown>, allowed: readonly string[]): [string, unknown] {
  const entries = Object.entries(value);
  if (entries.length !== 1 || !allowed.includes(entries[0]![0])) throw new RuleError(`${at}: got ${describe(value)}, expected one of the keys ${allowed.join(', ')}`);
  return entries[0]!;
}

function listOf<T>(at: string, value: unknown, check: (item: unknown) => item is T, expected: string): T[] {
  const list = Array.isArray(value) ? value : [value];
  if (list.length === 0 || !list.every(check)) throw new RuleError(`${at}: got ${describe(value)}, expected ${expected} or a non-empty list of them`);
  return list;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** A string test: "exact", [any, of, these], {in: [...]}, {prefix: ... }, {glob: ...} (* and ? match / too). */
function stringTest(at: string, spec: unknown, allowed?: readonly string[]): (value: string) => boolean {
  const expected = 'a string, a list of strings, {in: [...]}, {prefix: ...} or {glob: ...}';
  let op = 'in';
  let operand = spec;
  if (isMapping(spec)) [op, operand] = onlyKey(at, spec, ['in', 'prefix', 'glob']);
  else if (!isString(spec) && !Array.isArray(spec)) throw new RuleError(`${at}: got ${describe(spec)}, expected ${expected}`);
  const list = listOf(`${at}${isMapping(spec) ? `.${op}` : ''}`, operand, isString, 'a string');
  if (allowed) {
    const bad = list.find((item) => !allowed.includes(item));
    if (op !== 'in' || bad !== undefined) throw new RuleError(`${at}: got ${describe(op === 'in' ? bad : spec)}, allowed values: ${allowed.join(', ')}`);
  }
  if (op === 'prefix') return (value) => list.some((prefix) => value.startsWith(prefix));
  if (op === 'glob') {
    const patterns = list.map(globToRegExp);
    return (value) => patterns.some((re) => re.test(value));
  }
  const set = new Set(list);
  return (value) => set.has(value);
}

/** A number test: 0, [0, 1], {in: [...]}, {gte: n, lte: m} (either bound alone). */
function numberTest(at: string, spec: unknown): (value: number) => boolean {
  if (isMapping(spec) && !('in' in spec)) {
    const { gte, lte, ...rest } = spec;
    const extra = Object.keys(rest)[0];
    if (extra !== undefined || (gte === undefined && lte === undefined)) throw new RuleError(`${at}: got ${describe(spec)}, expected {gte: N}, {lte: N} or both`);
    if (gte !== undefined && !isNumber(gte)) throw new RuleError(`${at}.gte: got ${describe(gte)}, expected a number`);
    if (lte !== undefined && !isNumber(lte)) throw new RuleError(`${at}.lte: got ${describe(lte)}, expected a number`);
    return (value) => (gte === undefined || value >= gte) && (lte === undefined || value <= lte);
  }
  const [, operand] = isMapping(spec) ? onlyKey(at, spec, ['in']) : ['in', spec];
  const set = new Set(listOf(isMapping(spec) ? `${at}.in` : at, operand, isNumber, 'a number, {gte: N}, {lte: N}'));
  return (value) => set.has(value);
}

/** An address test: "10.0.0.1", a list, {cidr: "10.0.0.0/8"} or {cidr: [...]}. */
function addressTest(at: string, spec: unknown): (value: string) => boolean {
  const [op, operand] = isMapping(spec) ? onlyKey(at, spec, ['cidr', 'in']) : ['in', spec];
  const where = isMapping(spec) ? `${at}.${op}` : at;
  const prefixes: IpPrefix[] = listOf(where, operand, isString, op === 'cidr' ? 'a CIDR prefix (10.0.0.0/8, fc00::/7)' : 'an IP address').map((text) => {
    const prefix = op === 'cidr' ? parsePrefix(text) : parseIp(text) && parsePrefix(text);
    if (!prefix) throw new RuleError(`${where}: got ${describe(text)}, expected ${op === 'cidr' ? 'an IPv4 or IPv6 CIDR prefix (10.0.0.0/8, fc00::/7)' : 'an IPv4 or IPv6 address'}`);
    return prefix;
  });
  return (value) => {
    const ip = parseIp(value);
    return ip !== undefined && prefixes.some((prefix) => prefixContains(prefix, ip));
  };
}

function fieldCondition(at: string, name: string, spec: unknown): Condition {
  const field = fields[name]!;
  switch (field.type) {
    case 'boolean': {
      if (typeof spec !== 'boolean') throw new RuleError(`${at}: got ${describe(spec)}, expected true or false`);
      return (e, p) => field.get(e, p) === spec;
    }
    case 'number': {
      const test = numberTest(at, spec);
      return (e, p) => {
        const value = field.get(e, p);
        return typeof value === 'number' && test(value);
      };
    }
    case 'address': {
      const test = addressTest(at, spec);
      return (e, p) => {
        const value = field.get(e, p);
        return typeof value === 'string' && test(value);
      };
    }
    case 'kind':
    case 'string': {
      const test = stringTest(at, spec, field.type === 'kind' ? kinds : undefined);
      return (e, p) => {
        const value = field.get(e, p);
        if (typeof value === 'string') return test(value);
        return Array.isArray(value) && value.some(test);
      };
    }
  }
}

/** A mapping of fields and combinators, all of which must hold. */
function condition(at: string, spec: unknown): Condition {
  if (!isMapping(spec) || Object.keys(spec).length === 0) throw new RuleError(`${at}: got ${describe(spec)}, expected a mapping of conditions (keys: ${allowedKeys})`);
  const parts = Object.entries(spec).map(([key, value]): Condition => {
    const where = `${at}.${key}`;
    if (key === 'not') {
      const inner = condition(where, value);
      return (e, p) => !inner(e, p);
    }
    if (key === 'any' || key === 'all') {
      if (!Array.isArray(value) || value.length === 0) throw new RuleError(`${where}: got ${describe(value)}, expected a non-empty list of conditions`);
      const inner = value.map((item, i) => condition(`${where}[${i}]`, item));
      return key === 'any' ? (e, p) => inner.some((c) => c(e, p)) : (e, p) => inner.every((c) => c(e, p));
    }
    if (!(key in fields)) throw new RuleError(`${where}: unknown field; allowed keys: ${allowedKeys}`);
    return fieldCondition(where, key, value);
  });
  return parts.length === 1 ? parts[0]! : (e, p) => parts.every((c) => c(e, p));
}

function parseRule(entry: unknown, i: number, names: Set<string>): SecurityRule {
  const named = isMapping(entry) && typeof entry.name === 'string' ? ` "${entry.name}"` : '';
  const at = `rules[${i}]${named}`;
  try {
    if (!isMapping(entry)) throw new RuleError(`got ${describe(entry)}, expected a mapping with name, severity, description and match`);
    const { name, severity, description, match, ...rest } = entry;
    const extra = Object.keys(rest)[0];
    if (extra !== undefined) throw new RuleError(`${extra}: unknown key; allowed keys: name, severity, description, match`);
    if (typeof name !== 'string' || !namePattern.test(name)) throw new RuleError(`name: got ${describe(name)}, expected 1 to 64 lower-case letters, digits, - and _ (it is a label value)`);
    if (names.has(name)) throw new RuleError('name: another rule has the same name');
    names.add(name);
    if (typeof severity !== 'string' || !(severities as readonly string[]).includes(severity)) throw new RuleError(`severity: got ${describe(severity)}, allowed values: ${severities.join(', ')}`);
    if (typeof description !== 'string' || !description.trim()) throw new RuleError(`description: got ${describe(description)}, expected a non-empty text (what the match means and what to do)`);
    return { name, severity: severity as Severity, description: description.trim(), matches: condition('match', match) };
  } catch (err) {
    if (err instanceof RuleError) throw new RuleError(`${at} ${err.message}`);
    throw err;
  }
}

/** The rules of a rule file; throws ConfigError naming the file, the rule and the field. */
export function parseRuleFile(file: string, text: string, key = 'security.rules.path'): SecurityRule[] {
  const where = `${key} (${file})`;
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError(where, `not valid YAML: ${(err as Error).message}`);
  }
  const entries = isMapping(doc) ? doc.rules : undefined;
  if (!isMapping(doc) || Object.keys(doc).some((k) => k !== 'rules') || !Array.isArray(entries)) {
    throw new ConfigError(where, 'expected a mapping with one key, "rules": a list of {name, severity, description, match}');
  }
  if (entries.length > maxRules) throw new ConfigError(where, `${entries.length} rules, at most ${maxRules} are allowed`);
  const names = new Set<string>();
  try {
    return entries.map((entry, i) => parseRule(entry, i, names));
  } catch (err) {
    if (err instanceof RuleError) throw new ConfigError(where, err.message);
    throw err;
  }
}

/** Fields a condition may name, with what they hold (the README's table). */
export function ruleFields(): Array<{ field: string; doc: string }> {
  return Object.entries(fields).map(([field, { doc }]) => ({ field, doc }));
}
