// The churn soak, shared by `npm run soak` (10 minutes by default) and the
// short CI test (test/integration/soak.test.ts): pods (netns + veth + cgroup)
// created and deleted continuously, some deleted while the agent is still
// attaching to them, short-lived cgroups with a busy process cycling beside
// them, ping traffic in every pod, a real Prometheus scraping every second,
// and our own scrapes checked between. The report holds what the issue asks
// to be checked; runSoak only measures, soakFailures judges.
//
// Conservation: every bridge port of the soak has flooding off, so a pod's
// host veth carries only its own pod's traffic and its sysfs counters, read
// when it is created and again just before it is deleted, are the oracle for
// everything the agent can count on it. The agent's side is the sum over
// every series of probepilot_network_bytes_total ever seen (pods, overflow,
// and whatever a pod's first instants were attributed to before the network
// collector re-resolved its workload), each at its last value: a deleted
// pod's series keeps its final count until it disappears after the grace
// period, and our checks run far more often than that.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { onlyCollectors, startAgent, type AgentProcess } from '../test/helpers/agent.js';
import { killCgroupTree } from '../test/helpers/cgroups.js';
import { checkExposition, parseExposition, sumSamples } from '../test/helpers/exposition.js';
import { createTestNetwork, type Pod, type TestNetwork, type VethStats } from '../test/helpers/pods.js';
import { startPrometheus } from '../test/helpers/prometheus.js';

export interface SoakOptions {
  durationSeconds: number;
  /** Pods created per second (each lives podLifetimeSeconds). */
  podsPerSecond: number;
  podLifetimeSeconds: number;
  /** Pod set-ups in flight at once, so the rate holds on a loaded machine. */
  podSetupsInFlight: number;
  /** Short-lived cgroups (a busy process each) created per second. */
  cgroupsPerSecond: number;
  /** The agent's series.limit, low enough that the overflow series is used. */
  seriesLimit: number;
  /** The agent's seriesGraceSeconds: short, so that deleted pods' series go within the run. */
  seriesGraceSeconds: number;
  /** Our own scrape-and-check this often (well under seriesGraceSeconds: every series' last value is seen; the longest gap is reported). */
  checkIntervalSeconds: number;
  /** Bounds over the second half of the run (least-squares slope times its length). */
  bounds: { seriesGrowthOfMax: number; rssGrowthMiB: number; fdGrowth: number };
  log?: (line: string) => void;
}

export const defaultSoak: SoakOptions = {
  durationSeconds: 600,
  podsPerSecond: 1,
  podLifetimeSeconds: 6,
  podSetupsInFlight: 8,
  cgroupsPerSecond: 5,
  seriesLimit: 16,
  seriesGraceSeconds: 60,
  checkIntervalSeconds: 2,
  // Series: churn retires them, a leak piles up one per pod (hundreds); RSS: a leak per pod of a few
  // kB per series over hundreds of pods shows, GC sawtooth (a few MiB) does not; fds: a leak of one per pod would be dozens.
  bounds: { seriesGrowthOfMax: 0.25, rssGrowthMiB: 16, fdGrowth: 10 },
};

export interface Slope {
  first: number;
  last: number;
  max: number;
  /** Least-squares slope over the second half of the run (after warm-up), per minute. */
  perMinute: number;
  /** perMinute times the second half's length: the growth a stated bound is checked against. */
  secondHalfGrowth: number;
}

export interface Conservation {
  direction: 'egress' | 'ingress';
  /** Sum over every series ever seen in our scrapes, each at its last value. */
  exported: number;
  /** The same sum as Prometheus stored it: sum(max_over_time(...)) over the run. */
  prometheus: number;
  /** Host veth counters of every pod, from its creation to just before its deletion. */
  veth: number;
  errorPercent: number;
  prometheusErrorPercent: number;
}

export interface SoakReport {
  seconds: number;
  podsCreated: number;
  /** Of podsCreated: deleted right after creation, while the agent attached to their veth. */
  podsDeletedDuringAttach: number;
  podsAttachTimedOut: number;
  /** Pods the test helper could not build, first few reasons. */
  podSetupFailures: string[];
  podSetupFailureCount: number;
  /** Pod set-up time (addPod), median and max seconds. */
  podSetupSeconds: { median: number; max: number };
  cgroupsCycled: number;
  ownScrapes: number;
  /** Problems our exposition checker found (duplicates, le order, +Inf != _count, UTF-8), first few. */
  expositionProblems: string[];
  /** Counter and histogram series that went down between two of our scrapes, first few. */
  counterDecreases: string[];
  /** Longest time between two of our checks: over seriesGraceSeconds, a series may have gone unseen at its last value. */
  longestCheckGapSeconds: number;
  /** probepilot_series_overflow_total summed at the end: label sets folded into overflow series. */
  overflowFolds: number;
  seriesCount: Slope;
  rssMiB: Slope;
  fds: Slope;
  /** Prometheus: scrapes it made and those that failed (up == 0), over the run. */
  prometheusScrapes: number;
  prometheusFailedScrapes: number;
  prometheusTargetErrors: string[];
  /** Prometheus's counters of samples it dropped from our scrapes as duplicate or out of order. */
  prometheusDuplicateSamples: number;
  /** Most samples one Prometheus scrape took (scrape_samples_scraped). */
  prometheusMaxSamples: number;
  conservation: Conservation[];
  agentErrorLogs: string[];
  agentExitCode: number | null;
}

function slope(points: ReadonlyArray<[number, number]>): Slope {
  const tail = points.slice(Math.floor(points.length / 2));
  const n = tail.length;
  const mx = tail.reduce((a, [x]) => a + x, 0) / n;
  const my = tail.reduce((a, [, y]) => a + y, 0) / n;
  const sxx = tail.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  const sxy = tail.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0);
  const perSecond = sxx > 0 ? sxy / sxx : 0;
  const span = n > 1 ? tail[n - 1]![0] - tail[0]![0] : 0;
  return {
    first: points[0]?.[1] ?? 0,
    last: points.at(-1)?.[1] ?? 0,
    max: Math.max(...points.map(([, y]) => y)),
    perMinute: perSecond * 60,
    secondHalfGrowth: perSecond * span,
  };
}

function procStatus(pid: number): { rssMiB: number; fds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  return { rssMiB: rssKiB / 1024, fds: readdirSync(`/proc/${pid}/fd`).length };
}

function seriesKey(name: string, labels: Readonly<Record<string, string>>): string {
  return `${name}{${Object.entries(labels)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(',')}}`;
}

const trafficFamily = 'probepilot_network_bytes_total';
const directions = ['egress', 'ingress'] as const;

function errorPercent(measured: number, oracle: number): number {
  return oracle === 0 ? (measured === 0 ? 0 : 100) : (Math.abs(measured - oracle) / oracle) * 100;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const log = opts.log ?? (() => undefined);
  const maxPodsPerNetwork = 240;
  const podsWanted = Math.ceil(opts.durationSeconds * opts.podsPerSecond) + 1;
  const networks: TestNetwork[] = [];
  const cleanups: Array<() => Promise<unknown>> = [];
  try {
    // Networks made up front: the agent's interface globs name each run id (never another engineer's veths).
    for (let made = 0; made < podsWanted; made += maxPodsPerNetwork) networks.push(await createTestNetwork());
    cleanups.push(() => Promise.all(networks.map((n) => n.destroy())));
    const cgroupBase = path.join(networks[0]!.cgroupDir, 'churn');
    mkdirSync(cgroupBase, { recursive: true });
    const agent: AgentProcess = await startAgent({
      env: {
        ...onlyCollectors('network', 'sched'),
        PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: networks.map((n) => `pp${n.runId}h*`).join(','),
        PROBEPILOT_COLLECTORS_NETWORK_RESCAN_INTERVAL_SECONDS: '0.5',
        PROBEPILOT_SERIES_LIMIT: String(opts.seriesLimit),
        PROBEPILOT_SERIES_GRACE_SECONDS: String(opts.seriesGraceSeconds),
        PROBEPILOT_LOG_LEVEL: 'info',
      },
    });
    cleanups.unshift(() => agent.stop());
    const prometheus = await startPrometheus({ targets: [`127.0.0.1:${agent.port}`], scrapeIntervalSeconds: 1 });
    cleanups.unshift(() => prometheus.stop());
    const agentPid = agent.child.pid!;

    // A loaded machine shows here first: this process starved of CPU sets up pods and checks late.
    const loopDelay = monitorEventLoopDelay({ resolution: 20 });
    loopDelay.enable();
    cleanups.unshift(async () => loopDelay.disable());
    const startMs = Date.now();
    const endMs = startMs + opts.durationSeconds * 1000;
    const report = {
      podsCreated: 0,
      podsDeletedDuringAttach: 0,
      podsAttachTimedOut: 0,
      podSetupFailures: [] as string[],
      podSetupFailureCount: 0,
      cgroupsCycled: 0,
      ownScrapes: 0,
      expositionProblems: [] as string[],
      counterDecreases: [] as string[],
    };
    const setupSeconds: number[] = [];
    const oracle = { egress: 0, ingress: 0 };

    // One pod's life: veth counters read, attached, ping traffic to the gateway, final counters, deleted.
    // The counters are read around everything the agent can see: the port is isolated, so nothing but the pod crosses it.
    const podLife = async (pod: Pod, gateway: string, deleteDuringAttach: boolean): Promise<void> => {
      const before: VethStats = pod.vethStats();
      try {
        if (deleteDuringAttach) {
          // Its veth goes while the agent lists or attaches it.
          report.podsDeletedDuringAttach++;
          return;
        }
        const attached = await agent
          .waitForLog((l) => l.msg === 'attached to interface' && l.interface === pod.hostVeth, `attach to ${pod.hostVeth}`, 20_000)
          .then(() => true, () => false);
        if (!attached) {
          report.podsAttachTimedOut++;
          return;
        }
        const count = Math.max(1, Math.round((opts.podLifetimeSeconds - 1) / 0.05));
        await pod.exec('ping', ['-c', String(count), '-i', '0.05', '-s', '600', '-q', gateway], { timeoutMs: opts.podLifetimeSeconds * 4000 });
      } finally {
        const after = pod.vethStats();
        // Host veth rx is what the pod sent (egress at our program), tx what it received.
        oracle.egress += after.rxBytes - before.rxBytes;
        oracle.ingress += after.txBytes - before.txBytes;
        await pod.destroy();
      }
    };

    const podLoop = (async () => {
      const lives: Array<Promise<void>> = [];
      const setups = new Set<Promise<void>>();
      for (let i = 0; Date.now() < endMs; i++) {
        const due = startMs + (i * 1000) / opts.podsPerSecond;
        if (due > Date.now()) await sleep(due - Date.now());
        const network = networks[Math.floor(i / maxPodsPerNetwork)];
        if (!network) break;
        while (setups.size >= opts.podSetupsInFlight) await Promise.race(setups);
        const began = Date.now();
        const setup = network.addPod({ layout: i % 2 ? 'systemd' : 'cgroupfs', isolated: true }).then(
          (pod) => {
            setupSeconds.push((Date.now() - began) / 1000);
            report.podsCreated++;
            lives.push(podLife(pod, network.gatewayIpv4, i % 5 === 4));
          },
          (err: unknown) => {
            report.podSetupFailureCount++;
            if (report.podSetupFailures.length < 10) report.podSetupFailures.push(err instanceof Error ? err.message : String(err));
          },
        );
        setups.add(setup);
        void setup.finally(() => setups.delete(setup));
      }
      await Promise.all(setups);
      await Promise.all(lives);
    })();

    // Short bursts of CPU, each in a cgroup of its own: run-queue series that appear and go. One shell runs
    // the whole churn (a spawn per cgroup from here would cost this process's event loop more than the soak can spare).
    const cgroupChurn = spawn(
      'sh',
      [
        '-c',
        `i=0; while [ "$(date +%s%N)" -lt "$1" ]; do d="$0/c$i"; mkdir "$d" && (sh -c 'echo $$ > "$0/cgroup.procs" && j=0 && while [ $j -lt 3000 ]; do j=$((j+1)); done' "$d"; rmdir "$d" && echo "$d") & i=$((i+1)); sleep "$2"; done; wait`,
        cgroupBase,
        String(BigInt(endMs) * 1_000_000n),
        String(1 / opts.cgroupsPerSecond),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    cleanups.unshift(async () => {
      cgroupChurn.kill('SIGKILL');
      await killCgroupTree(cgroupBase);
    });
    cgroupChurn.stdout.setEncoding('utf8').on('data', (chunk: string) => (report.cgroupsCycled += chunk.split('\n').filter(Boolean).length));
    const cgroupLoop = once(cgroupChurn, 'exit');

    const series: Array<[number, number]> = [];
    const rss: Array<[number, number]> = [];
    const fds: Array<[number, number]> = [];
    const lastCounters = new Map<string, number>();
    /** Every traffic series ever seen, at its last value: deleted pods' series go after the grace period. */
    const traffic = new Map<string, { direction: string; value: number }>();
    let overflowFolds = 0;
    let lastCheckAt = 0;
    let longestCheckGap = 0;
    const checkOnce = async (): Promise<void> => {
      const began = Date.now();
      const text = Buffer.from(await (await fetch(`${agent.url}/metrics`)).arrayBuffer());
      const scrapeMs = Date.now() - began;
      const at = (Date.now() - startMs) / 1000;
      longestCheckGap = Math.max(longestCheckGap, at - lastCheckAt);
      lastCheckAt = at;
      report.ownScrapes++;
      for (const problem of checkExposition(text)) if (report.expositionProblems.length < 20) report.expositionProblems.push(`t=${at.toFixed(0)}s ${problem}`);
      const families = parseExposition(text);
      let count = 0;
      for (const family of families) {
        count += family.samples.length;
        if (family.type !== 'counter' && family.type !== 'histogram') continue;
        for (const sample of family.samples) {
          const key = seriesKey(sample.name, sample.labels);
          const previous = lastCounters.get(key);
          if (previous !== undefined && sample.value < previous && report.counterDecreases.length < 20) report.counterDecreases.push(`t=${at.toFixed(0)}s ${key}: ${previous} → ${sample.value}`);
          lastCounters.set(key, sample.value);
          if (sample.name === trafficFamily) traffic.set(key, { direction: sample.labels.direction ?? '', value: sample.value });
        }
      }
      overflowFolds = sumSamples(families, 'probepilot_series_overflow_total');
      const proc = procStatus(agentPid);
      series.push([at, count]);
      rss.push([at, proc.rssMiB]);
      fds.push([at, proc.fds]);
      log(`t=${at.toFixed(0)}s pods ${report.podsCreated} cgroups ${report.cgroupsCycled} series ${count} rss ${proc.rssMiB.toFixed(1)} MiB fds ${proc.fds}; scrape ${scrapeMs} ms, soak's own event-loop stall ${(loopDelay.max / 1e6).toFixed(0)} ms`);
      loopDelay.reset();
    };
    const checkLoop = (async () => {
      while (Date.now() < endMs) {
        await checkOnce();
        await sleep(opts.checkIntervalSeconds * 1000);
      }
    })();

    await Promise.all([podLoop, cgroupLoop, checkLoop]);
    // Rescans and a collection after the last pod went: its retired counts are in the totals, then Prometheus scrapes them.
    await sleep(1500);
    await checkOnce();
    await sleep(2500);
    const seconds = (Date.now() - startMs) / 1000;
    const window = `${Math.ceil(seconds + 5)}s`;
    const scalar = async (expr: string): Promise<number> => (await prometheus.query(expr))[0]?.value ?? 0;
    const prometheusScrapes = await scalar(`sum(count_over_time(up[${window}]))`);
    const prometheusFailedScrapes = await scalar(`sum(count_over_time((up == 0)[${window}:1s]))`);
    const prometheusDuplicateSamples =
      (await scalar('sum(prometheus_target_scrapes_sample_duplicate_timestamp_total)')) + (await scalar('sum(prometheus_target_scrapes_sample_out_of_order_total)'));
    const prometheusMaxSamples = await scalar(`max(max_over_time(scrape_samples_scraped[${window}]))`);
    const prometheusTargetErrors = (await prometheus.targets()).map((target) => target.lastError).filter(Boolean);
    const conservation: Conservation[] = [];
    for (const direction of directions) {
      const exported = [...traffic.values()].filter((s) => s.direction === direction).reduce((a, s) => a + s.value, 0);
      const stored = await scalar(`sum(max_over_time(${trafficFamily}{direction="${direction}"}[${window}]))`);
      const veth = oracle[direction];
      conservation.push({ direction, exported, prometheus: stored, veth, errorPercent: errorPercent(exported, veth), prometheusErrorPercent: errorPercent(stored, veth) });
    }
    const agentErrorLogs = agent.logs.filter((l) => l.level === 'error' || l.level === 'fatal' || Number(l.level) >= 50).map((l) => `${l.msg} ${JSON.stringify(l)}`.slice(0, 400));
    const agentExitCode = await agent.stop();
    return {
      seconds,
      ...report,
      podSetupSeconds: { median: median(setupSeconds), max: Math.max(0, ...setupSeconds) },
      overflowFolds,
      longestCheckGapSeconds: longestCheckGap,
      seriesCount: slope(series),
      rssMiB: slope(rss),
      fds: slope(fds),
      prometheusScrapes,
      prometheusFailedScrapes,
      prometheusTargetErrors,
      prometheusDuplicateSamples,
      prometheusMaxSamples,
      conservation,
      agentErrorLogs,
      agentExitCode,
    };
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => undefined);
  }
}

/** What the soak must show; empty when it passed. */
export function soakFailures(report: SoakReport, opts: SoakOptions): string[] {
  const failures: string[] = [];
  if (report.prometheusScrapes < report.seconds * 0.8) failures.push(`Prometheus scraped only ${report.prometheusScrapes} times in ${report.seconds.toFixed(0)} s (every second wanted)`);
  if (report.prometheusFailedScrapes > 0) failures.push(`${report.prometheusFailedScrapes} failed Prometheus scrapes`);
  if (report.prometheusTargetErrors.length) failures.push(`Prometheus target errors: ${report.prometheusTargetErrors.join('; ')}`);
  if (report.prometheusDuplicateSamples > 0) failures.push(`${report.prometheusDuplicateSamples} samples Prometheus dropped as duplicate or out of order`);
  if (report.expositionProblems.length) failures.push(`invalid exposition: ${report.expositionProblems.join('; ')}`);
  if (report.counterDecreases.length) failures.push(`counters went down: ${report.counterDecreases.join('; ')}`);
  for (const c of report.conservation) {
    if (c.errorPercent > 1) failures.push(`conservation ${c.direction}: exported ${c.exported} bytes, veths ${c.veth} (${c.errorPercent.toFixed(2)} % off, tolerance 1 %)`);
    if (c.prometheusErrorPercent > 1) failures.push(`conservation ${c.direction} in Prometheus: ${c.prometheus} bytes, veths ${c.veth} (${c.prometheusErrorPercent.toFixed(2)} % off, tolerance 1 %)`);
  }
  if (report.longestCheckGapSeconds >= opts.seriesGraceSeconds) failures.push(`our checks were ${report.longestCheckGapSeconds.toFixed(0)} s apart, not under the ${opts.seriesGraceSeconds} s grace period: the exported sum may miss series`);
  if (report.overflowFolds === 0) failures.push(`no label set was folded into an overflow series (series.limit ${opts.seriesLimit}): the governor was not exercised`);
  if (report.podsCreated < opts.durationSeconds * opts.podsPerSecond * 0.95) failures.push(`only ${report.podsCreated} pods created in ${opts.durationSeconds} s (${opts.podsPerSecond}/s wanted)`);
  if (report.podSetupFailureCount) failures.push(`${report.podSetupFailureCount} pod set-ups failed: ${report.podSetupFailures.join('; ')}`);
  if (report.podsAttachTimedOut) failures.push(`${report.podsAttachTimedOut} pods never attached`);
  const { bounds } = opts;
  if (report.seriesCount.secondHalfGrowth > bounds.seriesGrowthOfMax * report.seriesCount.max)
    failures.push(`series grew by ${report.seriesCount.secondHalfGrowth.toFixed(0)} over the second half (bound ${bounds.seriesGrowthOfMax * 100} % of the max, ${report.seriesCount.max})`);
  if (report.rssMiB.secondHalfGrowth > bounds.rssGrowthMiB) failures.push(`RSS grew by ${report.rssMiB.secondHalfGrowth.toFixed(1)} MiB over the second half (bound ${bounds.rssGrowthMiB} MiB)`);
  if (report.fds.secondHalfGrowth > bounds.fdGrowth) failures.push(`fds grew by ${report.fds.secondHalfGrowth.toFixed(1)} over the second half (bound ${bounds.fdGrowth})`);
  if (report.agentErrorLogs.length) failures.push(`agent logged errors: ${report.agentErrorLogs.slice(0, 5).join('; ')}`);
  if (report.agentExitCode !== 0) failures.push(`agent exited ${report.agentExitCode}`);
  return failures;
}

export function formatSoakReport(report: SoakReport): string {
  const s = (name: string, v: Slope, unit: string) =>
    `${name}: first ${v.first.toFixed(1)}, last ${v.last.toFixed(1)}, max ${v.max.toFixed(1)} ${unit}; slope over the second half ${v.perMinute.toFixed(2)} ${unit}/min (${v.secondHalfGrowth.toFixed(1)} ${unit} over it)`;
  return [
    `soak: ${report.seconds.toFixed(0)} s, ${report.podsCreated} pods (${report.podsDeletedDuringAttach} deleted while attaching, ${report.podSetupFailureCount} set-ups failed, ${report.podsAttachTimedOut} never attached; set-up median ${report.podSetupSeconds.median.toFixed(2)} s, max ${report.podSetupSeconds.max.toFixed(2)} s), ${report.cgroupsCycled} cgroups cycled`,
    `Prometheus: ${report.prometheusScrapes} scrapes, ${report.prometheusFailedScrapes} failed, ${report.prometheusDuplicateSamples} duplicate/out-of-order samples, target errors ${report.prometheusTargetErrors.length}, at most ${report.prometheusMaxSamples} samples a scrape`,
    `own checks: ${report.ownScrapes} scrapes, ${report.expositionProblems.length} exposition problems, ${report.counterDecreases.length} counter decreases, ${report.overflowFolds} label sets folded into overflow, longest gap between checks ${report.longestCheckGapSeconds.toFixed(1)} s`,
    s('series', report.seriesCount, 'series'),
    s('RSS', report.rssMiB, 'MiB'),
    s('fds', report.fds, 'fds'),
    ...report.conservation.map(
      (c) => `conservation ${c.direction}: veths ${c.veth} B, exported ${c.exported} B (${c.errorPercent.toFixed(3)} % off), in Prometheus ${c.prometheus} B (${c.prometheusErrorPercent.toFixed(3)} % off)`,
    ),
    `agent error logs: ${report.agentErrorLogs.length}, exit ${report.agentExitCode}`,
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { values } = parseArgs({ options: { minutes: { type: 'string' }, seconds: { type: 'string' }, 'pods-per-second': { type: 'string' }, 'cgroups-per-second': { type: 'string' } } });
  const number = (flag: string, value: string | undefined, fallback: number, max: number): number => {
    if (value === undefined) return fallback;
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0 || n > max) throw new Error(`--${flag} must be a number above 0 and at most ${max}, got ${JSON.stringify(value)}`);
    return n;
  };
  if (values.minutes !== undefined && values.seconds !== undefined) throw new Error('give --minutes or --seconds, not both');
  // Bounded: at most an hour.
  const durationSeconds = values.seconds !== undefined ? number('seconds', values.seconds, 0, 3600) : number('minutes', values.minutes, defaultSoak.durationSeconds / 60, 60) * 60;
  const opts: SoakOptions = {
    ...defaultSoak,
    durationSeconds,
    podsPerSecond: number('pods-per-second', values['pods-per-second'], defaultSoak.podsPerSecond, 20),
    cgroupsPerSecond: number('cgroups-per-second', values['cgroups-per-second'], defaultSoak.cgroupsPerSecond, 100),
    log: (line) => console.log(line),
  };
  if (process.getuid?.() !== 0) throw new Error('the soak creates network namespaces and loads BPF programs: run it as root');
  const report = await runSoak(opts);
  console.log(formatSoakReport(report));
  const failures = soakFailures(report, opts);
  for (const failure of failures) console.log(`FAIL ${failure}`);
  process.exitCode = failures.length ? 1 : 0;
}
