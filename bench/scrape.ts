// /metrics at scale: the syscalls collector's map filled with synthetic
// entries (empty cgroups, one entry per syscall slot, written with bpftool;
// 31 series each) to ~20k and then ~100k series. GET /metrics with gzip, as
// Prometheus asks, is timed against GET /healthz on the same server; while
// the scrapes run, /healthz is polled alongside (what a kubelet probe or an
// API client sees meanwhile), and the agent's own longest event-loop stall
// (perf_hooks.monitorEventLoopDelay, through prom-client) is read from each
// scrape.
import { performance } from 'node:perf_hooks';
import { request } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { startAgent, onlyCollectors, type AgentProcess } from '../test/helpers/agent.js';
import { fillSyscallStats, seriesPerEntry, syntheticSlots, syntheticWorkloads } from '../test/helpers/syscall-table.js';
import { agentGauges, median, medianRow, percentile, processCpuMs, processRssMb, withTarget, type BenchOptions, type BenchRow, type BenchSection } from './common.js';

/** One GET; resolves with the milliseconds to the last byte and the raw body. */
function timedGet(agent: AgentProcess, urlPath: string, headers: Record<string, string> = {}): Promise<{ ms: number; body: Buffer }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: agent.port, path: urlPath, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve({ ms: performance.now() - started, body: Buffer.concat(chunks) }) : reject(new Error(`${urlPath}: ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function healthzSamples(agent: AgentProcess, count: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push((await timedGet(agent, '/healthz')).ms);
  return out;
}

export interface ScaleRun {
  series: number;
  scrapeMs: number[];
  healthzAloneMs: number[];
  healthzDuringMs: number[];
  stallAloneMs: number;
  stallScrapingMs: number;
  /** Agent CPU time per scrape (with the /healthz polls meanwhile). */
  cpuMsPerScrape: number;
  /** Agent CPU time per second with nothing asking (/proc/PID/stat), and its resident set after the scrapes. */
  idleCpuMsPerSecond: number;
  rssMb: number;
}

/** Scrapes (gzip) and /healthz polls, idle CPU and RSS of a running agent: the rows' figures. */
export async function measureScrapes(agent: AgentProcess, scrapes: number, probes: number, idleSeconds: number): Promise<ScaleRun> {
  // Plain once, to count what a scrape carries (and to start the stall window).
  const first = (await timedGet(agent, '/metrics')).body.toString();
  const series = first.split('\n').filter((l) => l && !l.startsWith('#')).length;
  const pid = agent.child.pid!;
  const idleStart = { cpuMs: processCpuMs(pid), at: performance.now() };
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  const idleCpuMsPerSecond = (processCpuMs(pid) - idleStart.cpuMs) / ((performance.now() - idleStart.at) / 1000);
  const healthzAloneMs = await healthzSamples(agent, probes);
  const alone = agentGauges((await timedGet(agent, '/metrics')).body);
  const stallAloneMs = alone.stallMs;
  let lastCpuMs = alone.cpuMs;
  const scrapeMs: number[] = [];
  const healthzDuringMs: number[] = [];
  let stallScrapingMs = 0;
  let firstScraped: Buffer | undefined;
  let scraping = true;
  const poller = (async () => {
    while (scraping) healthzDuringMs.push((await timedGet(agent, '/healthz')).ms);
  })();
  for (let i = 0; i < scrapes; i++) {
    const { ms, body } = await timedGet(agent, '/metrics', { 'accept-encoding': 'gzip', 'x-prometheus-scrape-timeout-seconds': '10' });
    scrapeMs.push(ms);
    if (i === 0) firstScraped = gunzipSync(body);
    const gauges = agentGauges(gunzipSync(body));
    stallScrapingMs = Math.max(stallScrapingMs, gauges.stallMs);
    lastCpuMs = gauges.cpuMs;
  }
  scraping = false;
  await poller;
  // The CPU read in a scrape's exposition covers up to its rendering: the windows between scrapes 1 and N hold N - 1 scrapes.
  const cpuMsPerScrape = (lastCpuMs - agentGauges(firstScraped!).cpuMs) / (scrapes - 1);
  return { series, scrapeMs, healthzAloneMs, healthzDuringMs, stallAloneMs, stallScrapingMs, cpuMsPerScrape, idleCpuMsPerSecond, rssMb: processRssMb(pid) };
}

export function scrapeSamples(run: ScaleRun): Record<string, number[]> {
  return { scrapeMs: run.scrapeMs, healthzAloneMs: run.healthzAloneMs, healthzDuringMs: run.healthzDuringMs, stallMs: [run.stallAloneMs, run.stallScrapingMs], cpuMsPerScrape: [run.cpuMsPerScrape], idleCpuMsPerSecond: [run.idleCpuMsPerSecond], rssMb: [run.rssMb], series: [run.series] };
}

export function scrapeRows(label: string, run: ScaleRun, p99TargetMs: number): BenchRow[] {
  const p99 = { base: percentile(run.healthzAloneMs, 99), value: percentile(run.scrapeMs, 99) };
  const healthz = { base: percentile(run.healthzAloneMs, 99), value: percentile(run.healthzDuringMs, 99) };
  const series = `${run.series.toLocaleString('en-US')} series`;
  return [
    medianRow(`GET /metrics (gzip) p50 (ms), ${label}`, `GET /healthz; ${series}`, run.healthzAloneMs, run.scrapeMs),
    withTarget({ measure: `GET /metrics (gzip) p99 (ms), ${label}`, baseline: `GET /healthz; ${series}`, ...p99, ratio: p99.value / p99.base }, `≤ ${p99TargetMs} ms`, (r) => r.value <= p99TargetMs),
    { measure: `GET /healthz p99 during scrapes (ms), ${label}`, baseline: 'GET /healthz alone', ...healthz, ratio: healthz.value / healthz.base },
    withTarget(
      { measure: `agent event-loop max stall during scrapes (ms), ${label}`, baseline: 'serving /healthz', base: run.stallAloneMs, value: run.stallScrapingMs, ratio: run.stallScrapingMs / run.stallAloneMs },
      '≤ 20 ms',
      (r) => r.value <= 20,
    ),
    { measure: `agent CPU per scrape (ms), ${label}`, baseline: 'scrape p50 (wall clock)', base: median(run.scrapeMs), value: run.cpuMsPerScrape, ratio: run.cpuMsPerScrape / median(run.scrapeMs) },
    // The share of one core, against the 1 % target: 10 ms per second.
    withTarget({ measure: `agent CPU per idle second (ms), ${label}`, baseline: '1 % of a core', base: 10, value: run.idleCpuMsPerSecond, ratio: run.idleCpuMsPerSecond / 10 }, '≤ 10 ms', (r) => r.value <= 10),
    // Issue #9's target is at 1,000 pods; this section has synthetic cgroups and series, not pods.
    withTarget({ measure: `agent RSS after scrapes (MB), ${label}`, baseline: '150 MB', base: 150, value: run.rssMb, ratio: run.rssMb / 150 }, '≤ 150 MB (at 1,000 pods)', (r) => r.value <= 150),
  ];
}

export async function benchScrape(opts: BenchOptions): Promise<BenchSection> {
  const scrapes = opts.quick ? 3 : 50;
  const probes = opts.quick ? 20 : 200;
  // ~20k series from 15 workloads, then ~100k from 72 (44 syscall slots x 31 series each, plus the agent's own).
  const perWorkload = syntheticSlots.length * seriesPerEntry;
  const small = Math.round(20_000 / perWorkload);
  const large = Math.round(100_000 / perWorkload);
  const workloads = syntheticWorkloads(small);
  let agent: AgentProcess | undefined;
  try {
    agent = await startAgent({ env: { ...onlyCollectors('syscalls'), PROBEPILOT_LOG_LEVEL: 'info' } });
    await fillSyscallStats(agent, workloads);
    const idleSeconds = opts.quick ? 1 : 5;
    const twenty = await measureScrapes(agent, scrapes, probes, idleSeconds);
    workloads.grow(large - small);
    // The agent walks the cgroup tree again at most every 2 s (an id it does not know yet triggers the walk).
    await new Promise((r) => setTimeout(r, 2100));
    await fillSyscallStats(agent, workloads, small);
    const hundred = await measureScrapes(agent, scrapes, probes, idleSeconds);
    return {
      rows: [...scrapeRows('~20k series', twenty, 50), ...scrapeRows('~100k series', hundred, 250)],
      samples: { scrape20k: scrapeSamples(twenty), scrape100k: scrapeSamples(hundred) },
    };
  } finally {
    await agent?.stop();
    await workloads.remove();
  }
}
