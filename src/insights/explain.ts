// `probepilot explain NAMESPACE/WORKLOAD`: every signal of a workload scored
// against its own last day and against the other workloads of its nodes,
// each deviation's onset found, onsets that fall together correlated, and
// the result ranked and said in plain sentences with the queries behind them.
// Deterministic: the same Prometheus data and --at give the same findings.
import { AgentRequestError, formatBytes } from '../client.js';
import { instantQuery, rangeQuery, type MatrixSeries } from '../prometheus-source.js';
import { formatDuration } from '../top-view.js';
import { isAbnormal, scoreSignal, zThreshold, type Points, type SignalScore } from './score.js';
import { signals as allSignals, type SignalArea, type SignalDefinition } from './signals.js';

export interface Evidence {
  query: string;
  /** The query's value this finding rests on (at the time given). */
  value: number | null;
  /** RFC 3339: the instant, or the end of the range, the value is from. */
  at: string;
  meaning: string;
}

export interface Finding {
  signal: string;
  score: number;
  onset: string;
  summary: string;
  evidence: Evidence[];
}

export interface ExplainResult {
  target: { namespace: string; workload: string; nodes: string[]; at: string; window: string };
  findings: Finding[];
  /** One sentence: the first finding's, or that nothing was abnormal. */
  summary: string;
}

export interface ExplainOptions {
  prometheus: string;
  namespace: string;
  workload: string;
  /** Unix seconds; default now. */
  at?: number;
  /** Seconds before `at` in which a deviation must begin. */
  windowSeconds: number;
  /** Seconds of history before the window that make the baseline (default a day). */
  baselineSeconds?: number;
  signals?: readonly SignalDefinition[];
}

/** Onsets this close together are reported as one event. */
export const correlationSeconds = 300;
/** Scores are capped: against a flat baseline a rise can be thousands of σ, which ranks no better. */
const maxScore = 1000;

const quote = (value: string) => JSON.stringify(value);
const regexEscape = (value: string) => value.replace(/[\\^$*+?.()|[\]{}]/g, '\\$&');
const rfc3339 = (seconds: number) => new Date(Math.round(seconds) * 1000).toISOString().replace('.000Z', 'Z');
const clock = (seconds: number) => `${new Date(seconds * 1000).toISOString().slice(11, 16)} UTC`;
const key = (metric: Record<string, string>) => `${metric.namespace ?? ''}/${metric.workload ?? ''}`;

const durationUnits: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800, y: 31536000 };

/** A Prometheus duration (90s, 30m, 1h30m, 2d); throws naming the flag otherwise. */
export function parseDuration(text: string, flag: string): number {
  const parts = [...text.matchAll(/(\d+)(ms|s|m|h|d|w|y)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) throw new AgentRequestError(`${flag}: expected a duration such as 30m, 1h or 1h30m (units ms, s, m, h, d, w, y), not ${quote(text)}`);
  const seconds = parts.reduce((sum, p) => sum + Number(p[1]) * durationUnits[p[2]!]!, 0);
  if (seconds <= 0) throw new AgentRequestError(`${flag}: must be longer than 0`);
  return seconds;
}

/** An RFC 3339 time or Unix seconds; throws naming the flag otherwise. */
export function parseTime(text: string, flag: string): number {
  const seconds = /^\d+(\.\d+)?$/.test(text) ? Number(text) : Date.parse(text) / 1000;
  if (!Number.isFinite(seconds) || !/^\d+(\.\d+)?$|^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(text)) {
    throw new AgentRequestError(`${flag}: expected an RFC 3339 time (2026-12-01T14:05:00Z) or Unix seconds, not ${quote(text)}`);
  }
  return seconds;
}

/** NAMESPACE/WORKLOAD, as the namespace and workload labels of Kubernetes mode say; a node service is its cgroup path with no namespace. */
export function parseTarget(text: string): { namespace: string; workload: string } {
  if (text.startsWith('/') && text.length > 1) return { namespace: '', workload: text };
  const slash = text.indexOf('/');
  const namespace = text.slice(0, slash);
  const workload = text.slice(slash + 1);
  if (slash <= 0 || workload === '' || workload.includes('/')) throw new AgentRequestError(`target: expected NAMESPACE/WORKLOAD (e.g. shop/checkout), not ${quote(text)}`);
  return { namespace, workload };
}

function formatValue(value: number, unit: SignalDefinition['unit']): string {
  if (!Number.isFinite(value)) return String(value);
  switch (unit) {
    case 'seconds':
      return formatDuration(value);
    case 'ratio':
      return `${(value * 100).toFixed(value < 0.01 ? 2 : 1)} %`;
    case 'per_second':
      return `${value < 10 ? value.toFixed(2) : value.toFixed(0)}/s`;
    case 'bytes':
      return formatBytes(value);
  }
}

function formatChange(score: SignalScore, unit: SignalDefinition['unit']): string {
  const from = formatValue(score.baselineMean, unit);
  const to = formatValue(score.present, unit);
  if (score.present < score.baselineMean) return `fell to ${(score.change).toFixed(2)}× its usual (${from} → ${to})`;
  if (!Number.isFinite(score.change)) return `rose from ${from} to ${to}`;
  return `rose ${score.change >= 10 ? score.change.toFixed(0) : score.change.toFixed(1)}× (${from} → ${to})`;
}

function listWords(words: readonly string[]): string {
  return words.length <= 1 ? (words[0] ?? '') : `${words.slice(0, -1).join(', ')} and ${words[words.length - 1]}`;
}

interface Scored {
  signal: SignalDefinition;
  query: string;
  guardQuery: string | undefined;
  guardValue: number | null;
  score: SignalScore;
  /** The other workloads of the nodes: how many have this signal, how many deviated with the target. */
  peers: number;
  peersAbnormal: string[];
}

async function nodesOf(prometheus: string, namespace: string, workload: string, at: number, windowSeconds: number): Promise<{ label: 'node' | 'instance'; values: string[] }> {
  const selector = `{__name__=~"probepilot_.+", namespace=${quote(namespace)}, workload=${quote(workload)}}`;
  const samples = await instantQuery(prometheus, `count by (node, instance) (last_over_time(${selector}[${Math.round(windowSeconds)}s]))`, at);
  if (samples.length === 0) throw new AgentRequestError(`Prometheus has no series of ${namespace}/${workload} in the ${formatWindow(windowSeconds)} before ${rfc3339(at)}: check the name (namespace/workload, as the workload label says)`);
  // Scraped by our ServiceMonitor/PodMonitor every series has node; a plain scrape config may only have instance.
  const label = samples.every((s) => s.metric.node) ? 'node' : 'instance';
  return { label, values: [...new Set(samples.map((s) => s.metric[label] ?? ''))].sort() };
}

function formatWindow(seconds: number): string {
  if (seconds % 3600 === 0) return seconds === 3600 ? 'hour' : `${seconds / 3600} hours`;
  if (seconds % 60 === 0) return `${seconds / 60} minutes`;
  return `${seconds} seconds`;
}

const toPoints = (series: MatrixSeries): Points => series.values.map(([t, v]) => [t, Number(v)] as const);

export async function explain(options: ExplainOptions): Promise<ExplainResult> {
  const { prometheus, namespace, workload, windowSeconds } = options;
  const at = options.at ?? Date.now() / 1000;
  const baselineSeconds = options.baselineSeconds ?? 86400;
  const windowStart = at - windowSeconds;
  const target = `${namespace}/${workload}`;
  const nodes = await nodesOf(prometheus, namespace, workload, at, windowSeconds);
  const nodeSelector = `${nodes.label}=~${quote(nodes.values.map(regexEscape).join('|'))}`;
  const targetSelector = `namespace=${quote(namespace)}, workload=${quote(workload)}`;
  // A day at one point a minute stays far below Prometheus' 11,000 points per series; longer baselines step wider.
  const step = Math.max(60, Math.ceil((windowSeconds + baselineSeconds) / 10_000));

  const scored = await Promise.all(
    (options.signals ?? allSignals).map(async (signal): Promise<Scored | undefined> => {
      const [series, guards] = await Promise.all([
        rangeQuery(prometheus, signal.expr(nodeSelector), windowStart - baselineSeconds, at, step),
        signal.guard ? instantQuery(prometheus, signal.guard.expr(nodeSelector), at) : Promise.resolve([]),
      ]);
      const guardOf = new Map(guards.map((g) => [key(g.metric), Number(g.value[1])]));
      const passes = (name: string) => !signal.guard || (guardOf.get(name) ?? 0) >= signal.guard.minimum;
      let mine: SignalScore | undefined;
      let peers = 0;
      const peerScores: Array<{ name: string; score: SignalScore }> = [];
      for (const s of series) {
        const name = key(s.metric);
        const score = scoreSignal(toPoints(s), windowStart, at, signal);
        if (name === target) mine = score;
        else if (score) {
          peers++;
          if (passes(name) && isAbnormal(score)) peerScores.push({ name, score });
        }
      }
      if (!mine) return undefined;
      const onset = mine.onset;
      const peersAbnormal = peerScores.filter((p) => onset !== null && p.score.onset !== null && Math.abs(p.score.onset - onset) <= correlationSeconds).map((p) => p.name).sort();
      return {
        signal,
        query: signal.expr(targetSelector),
        guardQuery: signal.guard?.expr(targetSelector),
        guardValue: signal.guard ? (guardOf.get(target) ?? 0) : null,
        score: mine,
        peers,
        peersAbnormal,
      };
    }),
  );
  const evaluated = scored.filter((s): s is Scored => s !== undefined);
  const abnormal = evaluated.filter((s) => isAbnormal(s.score) && (!s.signal.guard || (s.guardValue ?? 0) >= s.signal.guard.minimum));
  const abnormalAreas = new Set(abnormal.map((s) => s.signal.area));
  const normalAreas = [...new Set(evaluated.map((s) => s.signal.area))].filter((a) => !abnormalAreas.has(a));
  const nodeWords = nodes.values.length === 1 ? `node ${nodes.values[0]}` : `nodes ${nodes.values.join(', ')}`;

  const findings = abnormal
    .map((s) => ({ s, score: Math.round(Math.min(s.score.z, maxScore) * 10) / 10 }))
    .sort((a, b) => b.score - a.score || a.s.score.onset! - b.s.score.onset!)
    .map(({ s, score }): Finding => {
      const onset = s.score.onset!;
      const together = abnormal.filter((o) => o !== s && Math.abs(o.score.onset! - onset) <= correlationSeconds).sort((a, b) => a.score.onset! - b.score.onset!);
      const first = together.every((o) => o.score.onset! >= onset);
      const parts = [
        `${s.signal.label} ${formatChange(s.score, s.signal.unit)} at ${clock(onset)}, ${score}σ from its usual`,
        together.length ? `together with ${listWords(together.map((o) => `${o.signal.label} (${clock(o.score.onset!)})`))}${first ? ', which followed it' : ''}` : '',
      ].filter(Boolean);
      const peerSentence =
        s.peers === 0 ? '' : s.peersAbnormal.length === 0 ? `the other ${s.peers} workload${s.peers > 1 ? 's' : ''} on ${nodeWords} stayed normal` : `${s.peersAbnormal.length} of ${s.peers} other workloads on ${nodeWords} changed with it (${s.peersAbnormal.join(', ')})`;
      const normal = normalAreas.length ? `${listWords(normalAreas)} stayed normal` : '';
      const summary = `${[parts.join(', '), peerSentence, normal].filter(Boolean).join('; ')}.`;
      const { baselineMean, baselineStddev, present } = s.score;
      const baselineRange = `[${Math.round(baselineSeconds)}s] offset ${Math.round(windowSeconds)}s`;
      const evidence: Evidence[] = [
        { query: s.query, value: present, at: rfc3339(at), meaning: `now (median of the last 5 minutes): ${formatValue(present, s.signal.unit)}` },
        { query: `avg_over_time((${s.query})${baselineRange.replace(']', `:${step}s]`)})`, value: baselineMean, at: rfc3339(at), meaning: `its mean over the ${formatWindow(baselineSeconds)} before the window: ${formatValue(baselineMean, s.signal.unit)}` },
        { query: `stddev_over_time((${s.query})${baselineRange.replace(']', `:${step}s]`)})`, value: baselineStddev, at: rfc3339(at), meaning: `its standard deviation then (the score divides by at least ${formatValue(s.signal.noiseFloor, s.signal.unit)})` },
        { query: s.query, value: s.score.onsetValue, at: rfc3339(onset), meaning: `first beyond ${zThreshold}σ at ${rfc3339(onset)}, and beyond since` },
      ];
      if (s.guardQuery !== undefined && s.signal.guard) {
        evidence.push({ query: s.guardQuery, value: s.guardValue, at: rfc3339(at), meaning: `traffic: ${s.guardValue?.toFixed(1)} ${s.signal.guard.what} (at least ${s.signal.guard.minimum} needed)` });
      }
      if (s.peers > 0) {
        evidence.push({ query: s.signal.expr(nodeSelector), value: s.peersAbnormal.length, at: rfc3339(at), meaning: `other workloads on ${nodeWords} beyond ${zThreshold}σ within ${correlationSeconds / 60} minutes of this onset: ${s.peersAbnormal.length} of ${s.peers}` });
      }
      return { signal: s.signal.family, score, onset: rfc3339(onset), summary, evidence };
    });
  const summary =
    findings[0]?.summary ??
    (evaluated.length
      ? `Nothing abnormal for ${target} in the ${formatWindow(windowSeconds)} before ${clock(at)}: ${listWords(normalAreas)} stayed within ${zThreshold}σ of their usual.`
      : `Nothing to score for ${target}: none of its signals has a day's baseline before ${rfc3339(windowStart)} and values since.`);
  return { target: { namespace, workload, nodes: nodes.values, at: rfc3339(at), window: `${Math.round(windowSeconds)}s` }, findings, summary };
}

/** Text output: the findings, most likely cause first, each with its evidence. */
export function renderExplain(result: ExplainResult): string {
  const { namespace, workload, nodes, at, window } = result.target;
  const lines = [`${namespace}/${workload} on ${nodes.join(', ')}, ${window} before ${at}:`];
  if (result.findings.length === 0) return `${lines[0]}\n  ${result.summary}\n`;
  result.findings.forEach((f, i) => {
    lines.push(`${i + 1}. [score ${f.score}] ${f.summary}`);
    for (const e of f.evidence) lines.push(`     ${e.meaning}\n       ${e.query}`);
  });
  return `${lines.join('\n')}\n`;
}
