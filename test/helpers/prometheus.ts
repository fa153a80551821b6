// A real Prometheus (the Debian 2.42 binary) on loopback, scraping what a test
// serves, plus promtool's exposition linter. Each instance has its own port,
// config and TSDB directory, all removed by stop().
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execCommand } from './proc.js';
import { StopWaiting, waitFor } from './wait.js';

export interface PrometheusOptions {
  /** host:port scrape targets, e.g. 127.0.0.1:9464. */
  targets: readonly string[];
  /** Default 1 s, so tests see a scrape quickly. */
  scrapeIntervalSeconds?: number;
  /** Default "probepilot". */
  jobName?: string;
}

export interface QuerySample {
  labels: Record<string, string>;
  value: number;
}

export interface ScrapeTarget {
  labels: Record<string, string>;
  scrapeUrl: string;
  health: 'up' | 'down' | 'unknown';
  /** Empty when the last scrape succeeded. */
  lastError: string;
}

export interface PrometheusServer {
  readonly url: string;
  readonly port: number;
  /** Instant query at the current time; a scalar result comes back as one sample without labels. */
  query(expr: string): Promise<QuerySample[]>;
  targets(): Promise<ScrapeTarget[]>;
  waitFor<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, what?: string): Promise<T>;
  /** Prometheus's own log so far (the tail), for failure messages. */
  log(): string;
  /** Idempotent. */
  stop(): Promise<void>;
}

const LOG_LIMIT = 64 * 1024;

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  if (address === null || typeof address === 'string') throw new Error('no TCP address for a probe socket');
  return address.port;
}

/** Prometheus spells infinities and NaN its own way; Number() would read them all as NaN. */
function parseValue(text: string): number {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

interface ApiResponse<T> {
  status: 'success' | 'error';
  error?: string;
  data?: T;
}

type QueryData =
  | { resultType: 'vector'; result: Array<{ metric: Record<string, string>; value: [number, string] }> }
  | { resultType: 'scalar'; result: [number, string] }
  | { resultType: 'matrix' | 'string'; result: unknown };

interface TargetsData {
  activeTargets: Array<{ labels: Record<string, string>; scrapeUrl: string; health: ScrapeTarget['health']; lastError: string }>;
}

function config(opts: PrometheusOptions): string {
  const interval = `${opts.scrapeIntervalSeconds ?? 1}s`;
  // JSON is YAML: no YAML library needed to write a config Prometheus reads.
  return JSON.stringify({
    global: { scrape_interval: interval, scrape_timeout: interval, evaluation_interval: interval },
    scrape_configs: [{ job_name: opts.jobName ?? 'probepilot', static_configs: [{ targets: opts.targets }] }],
  });
}

class Prometheus implements PrometheusServer {
  readonly url: string;
  readonly port: number;
  readonly #child: ChildProcess;
  readonly #dir: string;
  readonly #exited: Promise<unknown>;
  #log = '';
  #stopped: Promise<void> | undefined;

  constructor(child: ChildProcess, port: number, dir: string) {
    this.#child = child;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.#dir = dir;
    this.#exited = once(child, 'exit');
    const keep = (chunk: Buffer) => {
      this.#log = (this.#log + chunk.toString('utf8')).slice(-LOG_LIMIT);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  get exited(): boolean {
    return this.#child.exitCode !== null || this.#child.signalCode !== null;
  }

  log(): string {
    return this.#log;
  }

  async #api<T>(pathAndQuery: string): Promise<T> {
    const res = await fetch(`${this.url}${pathAndQuery}`);
    const body = (await res.json()) as ApiResponse<T>;
    if (body.status !== 'success' || body.data === undefined) throw new Error(`Prometheus ${pathAndQuery}: ${body.error ?? res.statusText}`);
    return body.data;
  }

  async query(expr: string): Promise<QuerySample[]> {
    const data = await this.#api<QueryData>(`/api/v1/query?query=${encodeURIComponent(expr)}`);
    switch (data.resultType) {
      case 'vector':
        return data.result.map((r) => ({ labels: r.metric, value: parseValue(r.value[1]) }));
      case 'scalar':
        return [{ labels: {}, value: parseValue(data.result[1]) }];
      default:
        throw new Error(`query ${expr} returned a ${data.resultType}, not an instant vector or scalar`);
    }
  }

  async targets(): Promise<ScrapeTarget[]> {
    const data = await this.#api<TargetsData>('/api/v1/targets?state=active');
    return data.activeTargets.map(({ labels, scrapeUrl, health, lastError }) => ({ labels, scrapeUrl, health, lastError }));
  }

  waitFor<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, what?: string): Promise<T> {
    return waitFor(
      () => {
        if (this.exited) throw new StopWaiting(`Prometheus exited: ${this.#log.slice(-2000)}`);
        return probe();
      },
      { timeoutMs, intervalMs: 250, what: what ?? 'a Prometheus condition' },
    );
  }

  /** Ends the process, leaving its directory (startPrometheus retries in it). */
  async terminate(): Promise<void> {
    if (this.exited) return;
    this.#child.kill('SIGTERM');
    const killer = setTimeout(() => this.#child.kill('SIGKILL'), 10_000);
    await this.#exited;
    clearTimeout(killer);
  }

  stop(): Promise<void> {
    this.#stopped ??= this.terminate().then(() => rmSync(this.#dir, { recursive: true, force: true }));
    return this.#stopped;
  }
}

async function startOnce(dir: string): Promise<Prometheus> {
  const port = await freePort();
  const child = spawn(
    'prometheus',
    [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // A missing binary is an 'error' event, never an exit.
  await Promise.race([once(child, 'spawn'), once(child, 'error').then(([err]) => Promise.reject(err as Error))]);
  const prometheus = new Prometheus(child, port, dir);
  try {
    await prometheus.waitFor(async () => (await fetch(`${prometheus.url}/-/ready`)).ok, 30_000, 'Prometheus to be ready');
  } catch (err) {
    await prometheus.terminate();
    throw err;
  }
  return prometheus;
}

/** Starts Prometheus and waits until it is ready; call stop() in a teardown. */
export async function startPrometheus(opts: PrometheusOptions): Promise<PrometheusServer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'probepilot-prometheus-'));
  writeFileSync(path.join(dir, 'prometheus.yml'), config(opts));
  let lastError: unknown;
  // The probed port can be taken again before Prometheus binds it: retry on a fresh one.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(dir);
    } catch (err) {
      lastError = err;
    }
  }
  rmSync(dir, { recursive: true, force: true });
  throw lastError;
}

export interface PromtoolResult {
  /** promtool exited 0: no lint findings. */
  ok: boolean;
  /** Its findings (stdout and stderr). */
  output: string;
}

/** `promtool check metrics` on the given exposition; findings are returned, not thrown. */
export async function promtoolCheckMetrics(text: string | Buffer): Promise<PromtoolResult> {
  const res = await execCommand('promtool', ['check', 'metrics'], { input: text, timeoutMs: 30_000 });
  return { ok: res.code === 0, output: `${res.stdout}${res.stderr}`.trim() };
}
