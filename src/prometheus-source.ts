// The CLI answering from Prometheus (--prometheus URL) instead of asking the
// agents: the same status and flows, for every node Prometheus scrapes,
// through its HTTP query API.
import { AgentRequestError } from './client.js';
import type { FlowEntry, FlowQuery, FlowsResult } from './api/service.js';

export interface VectorSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface MatrixSeries {
  metric: Record<string, string>;
  values: Array<[number, string]>;
}

async function queryApi<T>(baseUrl: string, path: string, params: Record<string, string>, resultType: string): Promise<T> {
  const url = new URL(path, baseUrl);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  } catch (err) {
    throw new AgentRequestError(`cannot reach Prometheus at ${baseUrl}: ${err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err)}`);
  }
  const body = (await res.json().catch(() => ({}))) as { status?: string; error?: string; data?: { resultType: string; result: T } };
  if (body.status !== 'success' || body.data?.resultType !== resultType) throw new AgentRequestError(`Prometheus: ${body.error ?? res.statusText} (${params.query})`);
  return body.data.result;
}

/** An instant query, at `time` (Unix seconds) or now. */
export function instantQuery(baseUrl: string, expr: string, time?: number): Promise<VectorSample[]> {
  return queryApi<VectorSample[]>(baseUrl, '/api/v1/query', { query: expr, ...(time !== undefined ? { time: String(time) } : {}) }, 'vector');
}

/** A range query from start to end (Unix seconds) every step seconds. */
export function rangeQuery(baseUrl: string, expr: string, start: number, end: number, step: number): Promise<MatrixSeries[]> {
  return queryApi<MatrixSeries[]>(baseUrl, '/api/v1/query_range', { query: expr, start: String(start), end: String(end), step: String(step) }, 'matrix');
}

const quote = (value: string) => JSON.stringify(value);

export interface NodeCollectors {
  node: string;
  up: string[];
  down: Array<{ collector: string; reason: string }>;
  /** Switched off (in config or through the API): not down. */
  disabled: string[];
}

/** Collector states per node, from probepilot_collector_up. */
export async function statusFromPrometheus(baseUrl: string): Promise<NodeCollectors[]> {
  const samples = await instantQuery(baseUrl, 'probepilot_collector_up');
  const nodes = new Map<string, NodeCollectors>();
  for (const { metric, value } of samples) {
    const node = metric.node ?? metric.instance ?? '';
    const entry = nodes.get(node) ?? { node, up: [], down: [], disabled: [] };
    const reason = metric.reason ?? '';
    if (Number(value[1]) === 1) entry.up.push(metric.collector ?? '');
    else if (reason.startsWith('disabled ')) entry.disabled.push(metric.collector ?? '');
    else entry.down.push({ collector: metric.collector ?? '', reason });
    nodes.set(node, entry);
  }
  for (const entry of nodes.values()) [entry.up, entry.disabled].forEach((list) => list.sort());
  return [...nodes.values()].sort((a, b) => a.node.localeCompare(b.node));
}

/** Top flows over the last 5 minutes from the agents' series; rates from rate(), counts the counters' current values. */
export async function flowsFromPrometheus(baseUrl: string, query: FlowQuery): Promise<Omit<FlowsResult, 'flows'> & { flows: Array<FlowEntry & { node: string }> }> {
  // The flow table lives in each agent's kernel; Prometheus has only its gauges.
  if (query.view === '5tuple') throw new Error('--view 5tuple reads an agent\'s live flow table: ask the agent (--agent), not Prometheus');
  const peerView = query.view === 'peer';
  const family = peerView ? 'probepilot_network_flow' : 'probepilot_network';
  const matchers = [
    query.namespace !== undefined ? `namespace=${quote(query.namespace)}` : '',
    query.pod !== undefined ? `pod=${quote(query.pod)}` : '',
    query.direction !== undefined ? `direction=${quote(query.direction)}` : '',
    query.protocol !== undefined ? `protocol=${quote(query.protocol)}` : '',
  ].filter(Boolean);
  const selector = `{${matchers.join(', ')}}`;
  const rateExpr = (field: 'bytes' | 'packets') => `rate(${family}_${field}_total${selector}[5m])`;
  const sortField = query.sort;
  const [top, bytesRate, packetsRate, bytes, packets] = await Promise.all([
    instantQuery(baseUrl, `topk(${query.limit * 4}, ${rateExpr(sortField)})`),
    instantQuery(baseUrl, rateExpr('bytes')),
    instantQuery(baseUrl, rateExpr('packets')),
    instantQuery(baseUrl, `${family}_bytes_total${selector}`),
    instantQuery(baseUrl, `${family}_packets_total${selector}`),
  ]);
  const key = (metric: Record<string, string>) => JSON.stringify(Object.entries(metric).filter(([k]) => k !== '__name__').sort());
  const index = (samples: VectorSample[]) => new Map(samples.map((s) => [key(s.metric), Number(s.value[1])]));
  const [bytesRates, packetsRates, bytesNow, packetsNow] = [index(bytesRate), index(packetsRate), index(bytes), index(packets)];
  const scrapeLabels = new Set(['instance', 'job', 'node', '__name__']);
  const flows = top
    .map(({ metric }) => {
      const k = key(metric);
      const workload: Record<string, string> = {};
      const peer: Record<string, string> = {};
      for (const [name, value] of Object.entries(metric)) {
        if (scrapeLabels.has(name) || name === 'direction' || name === 'protocol') continue;
        if (name.startsWith('peer_')) peer[name] = value;
        else workload[name] = value;
      }
      const entry: FlowEntry & { node: string } = {
        node: metric.node ?? metric.instance ?? '',
        workload,
        direction: metric.direction ?? '',
        ...(peerView ? { peer } : { protocol: metric.protocol ?? '' }),
        bytes: bytesNow.get(k) ?? 0,
        packets: packetsNow.get(k) ?? 0,
        bytesPerSecond: bytesRates.get(k) ?? null,
        packetsPerSecond: packetsRates.get(k) ?? null,
      };
      return entry;
    })
    .filter((f) => {
      if (query.peer === undefined) return true;
      const name = f.peer?.peer_workload ?? f.peer?.peer_pod ?? '';
      return [name, f.peer?.peer_class, `${f.peer?.peer_namespace ?? ''}/${name}`].includes(query.peer);
    })
    .sort((a, b) => (b[sortField === 'bytes' ? 'bytesPerSecond' : 'packetsPerSecond'] ?? 0) - (a[sortField === 'bytes' ? 'bytesPerSecond' : 'packetsPerSecond'] ?? 0));
  return { view: query.view, total: bytes.length, intervalSeconds: 300, flows: flows.slice(0, query.limit) };
}
