// The CLI's side of the REST API: a small client and the text renderings of
// its answers (tables for people, JSON for scripts).
import { workloadName, type AgentStatus, type CollectorStatus, type FlowEntry, type FlowsResult } from './api/service.js';
import type { StreamedEvent, TraceEvent } from './api/events.js';

export const defaultAgentUrl = 'http://127.0.0.1:9742';

/** Authorization: Bearer $PROBEPILOT_TOKEN, for an agent with auth.mode tokens or kubernetes; nothing when unset. */
export function authHeaders(): Record<string, string> {
  const token = process.env.PROBEPILOT_TOKEN;
  return token ? { authorization: `Bearer ${token}` } : {};
}

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
        headers: { ...authHeaders(), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
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
    peerView ? peerName(f.peer) : f.tuple ? `${f.protocol ?? ''} ${f.tuple.localAddress}:${f.tuple.localPort} ${f.tuple.remoteAddress}:${f.tuple.remotePort}` : (f.protocol ?? ''),
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

/**
 * Reads an event stream (Server-Sent Events) until signal aborts or the agent
 * ends it; resolves then. Rejects with AgentRequestError when the agent refuses
 * the stream (its message) or cannot be reached. onOpen runs once the stream is open.
 */
export async function streamEvents(baseUrl: string, path: string, onEvent: (event: StreamedEvent) => void, options: { signal: AbortSignal; onOpen?: () => void }): Promise<void> {
  let res: Response;
  try {
    res = await fetch(new URL(path, baseUrl), { headers: { ...authHeaders(), accept: 'text/event-stream' }, signal: options.signal });
  } catch (err) {
    if (options.signal.aborted) return;
    throw new AgentRequestError(`cannot reach the agent at ${baseUrl}: ${err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err)}`);
  }
  if (!res.ok || !res.body) {
    const text = await res.text();
    let message = res.statusText;
    try {
      message = (JSON.parse(text) as { message?: string }).message ?? message;
    } catch {
      // not JSON: the status text says it
    }
    throw new AgentRequestError(`GET ${path}: ${message} (${res.status})`);
  }
  options.onOpen?.();
  const decoder = new TextDecoder();
  let pending = '';
  try {
    for await (const chunk of res.body) {
      const messages = (pending + decoder.decode(chunk as Uint8Array, { stream: true })).split('\n\n');
      pending = messages.pop() ?? '';
      for (const message of messages) {
        const lines = message.split('\n');
        const data = lines
          .filter((line) => line.startsWith('data: '))
          .map((line) => line.slice(6))
          .join('\n');
        if (!data) continue;
        // The agent ends a trace it can no longer serve with an error event: say why rather than ending silently.
        if (lines.includes('event: error')) throw new AgentRequestError(`the event stream ended: ${(JSON.parse(data) as { message?: string }).message ?? data}`);
        onEvent(JSON.parse(data) as StreamedEvent);
      }
    }
  } catch (err) {
    if (err instanceof AgentRequestError) throw err;
    if (!options.signal.aborted) throw new AgentRequestError(`the event stream broke: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function traceWorkload(event: TraceEvent): string {
  return workloadName(event.workload) || '/';
}

/** One line per trace event: time, workload, task, then what happened. */
export function renderTraceEvent(event: StreamedEvent): string {
  const time = event.time.slice(11, 23);
  if (event.type === 'syscall') {
    // Decoded, as strace prints the call; otherwise the first raw registers.
    const args = event.decodedArgs?.join(', ') ?? `${event.args.slice(0, 3).join(', ')}, …`;
    return `${time}  ${traceWorkload(event)}  ${event.comm}[${event.pid}/${event.tid}]  ${event.syscall}(${args}) = ${event.ret}  ${(event.durationSeconds * 1e6).toFixed(1)}µs\n`;
  }
  if (event.type === 'network') {
    const task = event.pid ? `${event.comm}[${event.pid}]` : '-';
    const what = event.event === 'state' ? `${event.oldState} → ${event.newState}` : `${event.event} (${event.newState})`;
    const address = (host: string, port: number) => (event.family === 'ipv6' ? `[${host}]:${port}` : `${host}:${port}`);
    return `${time}  ${traceWorkload(event)}  ${task}  tcp ${what}  ${address(event.source, event.sourcePort)} → ${address(event.destination, event.destinationPort)}\n`;
  }
  if (event.type === 'security') {
    const task = `${event.comm}[${event.pid}] uid ${event.uid}${event.euid !== event.uid ? ` euid ${event.euid}` : ''}`;
    const peer = event.address !== undefined ? (event.family === 'ipv6' ? ` [${event.address}]:${event.port}` : ` ${event.address}:${event.port}`) : '';
    const what = [event.path, ...(event.kind === 'exec' ? [] : event.args ?? [])].filter(Boolean).join(' ');
    const args = event.kind === 'exec' && event.args ? `  ${event.args.join(' ')}` : '';
    const exit = event.exitCode !== undefined ? ` code ${event.exitCode}` : '';
    return `${time}  ${traceWorkload(event)}  ${task}  ${event.kind}${exit}${what ? ` ${what}` : ''}${peer}${args}\n`;
  }
  const { type, time: _time, ...rest } = event;
  return `${time}  ${type}  ${JSON.stringify(rest)}\n`;
}
