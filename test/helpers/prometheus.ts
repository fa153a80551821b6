// A real Prometheus (the Debian 2.42 binary) on loopback, scraping what a test
// serves, plus promtool's exposition linter. Each instance has its own port,
// config and TSDB directory, all removed by stop().
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execCommand } from './proc.js';
import { onFreePort, ServiceProcess } from './service-process.js';

export interface PrometheusOptions {
  /** host:port scrape targets, e.g. 127.0.0.1:9464. */
  targets: readonly string[];
  /** Default 1 s, so tests see a scrape quickly. */
  scrapeIntervalSeconds?: number;
  /** Default "probepilot". */
  jobName?: string;
  /** Labels added to every scraped series, as a Kubernetes relabeling would (e.g. node). */
  targetLabels?: Record<string, string>;
  /** Rule files to evaluate (every evaluation interval, which is the scrape interval). */
  ruleFiles?: readonly string[];
  /** host:port of an Alertmanager to send alerts to. */
  alertmanager?: string;
  /** History to start with: OpenMetrics text (with timestamps, ending in # EOF) turned into blocks by promtool before Prometheus starts. */
  openMetrics?: string;
  /** Directories of TSDB blocks (e.g. from `promtool tsdb create-blocks-from rules`) copied into the data directory before Prometheus starts. */
  blocks?: readonly string[];
  /** Scrape over https with these files (Prometheus's tls_config). */
  tls?: { caFile: string; certFile?: string; keyFile?: string };
  /** A file holding the bearer token sent with every scrape (authorization.credentials_file). */
  bearerTokenFile?: string;
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
  /** Instant query at the current time (or at `time`, Unix seconds); a scalar result comes back as one sample without labels. */
  query(expr: string, time?: number): Promise<QuerySample[]>;
  /** Values of a label on the series matching a selector, as Grafana's label_values(selector, label) asks for them. */
  labelValues(label: string, match: string): Promise<string[]>;
  targets(): Promise<ScrapeTarget[]>;
  waitFor<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, what?: string): Promise<T>;
  /** Prometheus's own log so far (the tail), for failure messages. */
  log(): string;
  /** Idempotent. */
  stop(): Promise<void>;
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
    scrape_configs: [
      {
        job_name: opts.jobName ?? 'probepilot',
        static_configs: [{ targets: opts.targets, labels: opts.targetLabels ?? {} }],
        ...(opts.tls
          ? { scheme: 'https', tls_config: { ca_file: opts.tls.caFile, ...(opts.tls.certFile ? { cert_file: opts.tls.certFile, key_file: opts.tls.keyFile } : {}) } }
          : {}),
        ...(opts.bearerTokenFile ? { authorization: { type: 'Bearer', credentials_file: opts.bearerTokenFile } } : {}),
      },
    ],
    rule_files: opts.ruleFiles ?? [],
    alerting: { alertmanagers: opts.alertmanager === undefined ? [] : [{ static_configs: [{ targets: [opts.alertmanager] }] }] },
  });
}

class Prometheus implements PrometheusServer {
  readonly url: string;
  #stopped: Promise<void> | undefined;

  constructor(
    private readonly service: ServiceProcess,
    readonly port: number,
    private readonly dir: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
  }

  log(): string {
    return this.service.log();
  }

  async #api<T>(pathAndQuery: string): Promise<T> {
    const res = await fetch(`${this.url}${pathAndQuery}`);
    const body = (await res.json()) as ApiResponse<T>;
    if (body.status !== 'success' || body.data === undefined) throw new Error(`Prometheus ${pathAndQuery}: ${body.error ?? res.statusText}`);
    return body.data;
  }

  async query(expr: string, time?: number): Promise<QuerySample[]> {
    const data = await this.#api<QueryData>(`/api/v1/query?query=${encodeURIComponent(expr)}${time === undefined ? '' : `&time=${time}`}`);
    switch (data.resultType) {
      case 'vector':
        return data.result.map((r) => ({ labels: r.metric, value: parseValue(r.value[1]) }));
      case 'scalar':
        return [{ labels: {}, value: parseValue(data.result[1]) }];
      default:
        throw new Error(`query ${expr} returned a ${data.resultType}, not an instant vector or scalar`);
    }
  }

  labelValues(label: string, match: string): Promise<string[]> {
    return this.#api<string[]>(`/api/v1/label/${encodeURIComponent(label)}/values?match[]=${encodeURIComponent(match)}`);
  }

  async targets(): Promise<ScrapeTarget[]> {
    const data = await this.#api<TargetsData>('/api/v1/targets?state=active');
    return data.activeTargets.map(({ labels, scrapeUrl, health, lastError }) => ({ labels, scrapeUrl, health, lastError }));
  }

  waitFor<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, what?: string): Promise<T> {
    return this.service.waitFor(probe, timeoutMs, what ?? 'a Prometheus condition');
  }

  stop(): Promise<void> {
    this.#stopped ??= this.service.terminate().then(() => rmSync(this.dir, { recursive: true, force: true }));
    return this.#stopped;
  }
}

async function startOnce(dir: string, port: number): Promise<Prometheus> {
  const args = [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`];
  const service = await ServiceProcess.start('Prometheus', 'prometheus', args, `http://127.0.0.1:${port}/-/ready`);
  return new Prometheus(service, port, dir);
}

/** Backfills the data directory: OpenMetrics history through promtool, then copies of ready blocks. */
async function prepareData(dir: string, { openMetrics, blocks = [] }: PrometheusOptions): Promise<void> {
  const data = path.join(dir, 'data');
  mkdirSync(data, { recursive: true });
  if (openMetrics !== undefined) {
    const file = path.join(dir, 'history.om');
    writeFileSync(file, openMetrics);
    const res = await execCommand('promtool', ['tsdb', 'create-blocks-from', 'openmetrics', file, data], { timeoutMs: 120_000 });
    if (res.code !== 0) throw new Error(`promtool tsdb create-blocks-from openmetrics: ${res.stdout}${res.stderr}`);
    rmSync(file);
  }
  for (const blockDir of blocks) cpSync(blockDir, data, { recursive: true });
}

/** Starts Prometheus and waits until it is ready; call stop() in a teardown. */
export async function startPrometheus(opts: PrometheusOptions): Promise<PrometheusServer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'probepilot-prometheus-'));
  writeFileSync(path.join(dir, 'prometheus.yml'), config(opts));
  try {
    await prepareData(dir, opts);
    return await onFreePort((port) => startOnce(dir, port));
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
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
