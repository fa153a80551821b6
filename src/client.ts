// The CLI's side of the REST API: a small client and the text renderings of
// its answers (tables for people, JSON for scripts).
import { workloadName, type AgentStatus, type CollectorStatus, type FlowEntry, type FlowsResult } from './api/service.js';

export const defaultAgentUrl = 'http://127.0.0.1:9742';

/** An answer the agent gave with an error, or no answer at all. */
export class AgentRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AgentRequestError';
  }
}

export class AgentClient {
  constructor(
    readonly baseUrl: string,
    private readonly timeoutMs = 10_000,
  ) {}

  async request<T>(method: 'GET' | 'PUT' | 'POST', path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(new URL(path, this.baseUrl), {
        method,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
        body: body === undefined ? null : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new AgentRequestError(`cannot reach the agent at ${this.baseUrl}: ${err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err)}`);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new AgentRequestError(`${method} ${path}: the agent answered ${res.status} with no JSON`);
    }
    if (!res.ok) throw new AgentRequestError(`${method} ${path}: ${(parsed as { message?: string }).message ?? res.statusText} (${res.status})`);
    return parsed as T;
  }
}

/** Columns padded to their widest cell; the last one is not padded. */
export function renderTable(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function rate(value: number | null, format: (n: number) => string): string {
  return value === null ? '-' : `${format(value)}/s`;
}

function peerName(peer: Record<string, string> | undefined): string {
  if (!peer) return '';
  const name = peer.peer_workload ?? peer.peer_pod ?? '';
  return name ? `${peer.peer_namespace}/${name}` : (peer.peer_class ?? '');
}

export function renderStatus(status: AgentStatus, wide: boolean): string {
  const header = [
    `agent     ${status.version} on ${status.node} (${status.mode} mode), up ${status.uptimeSeconds} s`,
    `kernel    ${status.kernel}, BTF ${status.btf ? 'yes' : 'no'}, bpfStats ${status.bpfStats ? 'on' : 'off'}`,
    `identity  ${Object.entries(status.identity).map(([k, v]) => `${k} ${v}`).join(', ')}`,
    '',
  ].join('\n');
  const table = renderCollectors(status.collectors);
  const network = status.collectors.find((c) => c.name === 'network')?.details?.interfaces as Array<{ name: string; mode: string | null; workload: string | null }> | undefined;
  const interfaces =
    wide && network?.length
      ? `\n${renderTable(
          ['INTERFACE', 'MODE', 'WORKLOAD'],
          network.map((i) => [i.name, i.mode ?? '', i.workload ?? '']),
        )}`
      : '';
  return `${header}\n${table}${interfaces}`;
}

export function renderCollectors(collectors: readonly CollectorStatus[]): string {
  return renderTable(
    ['COLLECTOR', 'ENABLED', 'UP', 'SERIES', 'PROGRAMS', 'REASON'],
    collectors.map((c) => [c.name, c.enabled ? 'yes' : 'no', c.up ? 'yes' : 'no', String(c.series), String(c.programs.length), c.reason]),
  );
}

export function renderFlows(result: FlowsResult, wide: boolean): string {
  const peerView = result.view === 'peer';
  const headers = ['WORKLOAD', 'DIRECTION', peerView ? 'PEER' : 'PROTOCOL', 'BYTES', 'PACKETS', 'BYTES/S', 'PACKETS/S', ...(wide ? [peerView ? 'PEER CLASS' : '', 'KIND'].filter(Boolean) : [])];
  const rows = result.flows.map((f: FlowEntry) => [
    workloadName(f.workload),
    f.direction,
    peerView ? peerName(f.peer) : (f.protocol ?? ''),
    formatBytes(f.bytes),
    String(f.packets),
    rate(f.bytesPerSecond, formatBytes),
    rate(f.packetsPerSecond, (n) => n.toFixed(1)),
    ...(wide ? [...(peerView ? [f.peer?.peer_class ?? ''] : []), f.workload.workload_kind ?? ''] : []),
  ]);
  const footer = `${result.flows.length} of ${result.total} flows${result.intervalSeconds === null ? '; rates need a second query' : `; rates over ${result.intervalSeconds.toFixed(1)} s`}\n`;
  return renderTable(headers, rows) + footer;
}

export interface ClusterStatusRow {
  node: string;
  url: string;
  status: AgentStatus;
}

export function renderClusterStatus(rows: readonly ClusterStatusRow[], unreachable: ReadonlyArray<{ node: string; url: string; error: string }>): string {
  const table = renderTable(
    ['NODE', 'AGENT', 'VERSION', 'MODE', 'COLLECTORS UP', 'DOWN'],
    rows.map(({ node, url, status }) => {
      const enabled = status.collectors.filter((c) => c.enabled);
      const down = enabled.filter((c) => !c.up).map((c) => c.name);
      return [node, url, status.version, status.mode, `${enabled.length - down.length}/${enabled.length}`, down.join(',')];
    }),
  );
  return table + renderUnreachable(unreachable);
}

export function renderUnreachable(unreachable: ReadonlyArray<{ node: string; url: string; error: string }>): string {
  return unreachable.map((u) => `unreachable: ${u.node} (${u.url}): ${u.error}\n`).join('');
}

/** Flows of several agents: each row names its node. */
export function renderClusterFlows(result: Omit<FlowsResult, 'flows'> & { flows: Array<FlowEntry & { node: string }> }, wide: boolean, unreachable: ReadonlyArray<{ node: string; url: string; error: string }>): string {
  const lines = renderFlows(result, wide).split('\n');
  const nodes = ['NODE', ...result.flows.map((f) => f.node)];
  const width = Math.max(...nodes.map((n) => n.length));
  const table = lines.map((line, i) => (i < nodes.length && line ? `${nodes[i]!.padEnd(width)}  ${line}` : line)).join('\n');
  return table + renderUnreachable(unreachable);
}
