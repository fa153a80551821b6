// Hours of agent series for a node's workloads, as OpenMetrics with
// timestamps for `promtool tsdb create-blocks-from openmetrics`: every signal
// `probepilot explain` scores, each workload at its own noisy level, and
// incidents that change one workload's levels from a known instant. The
// levels are the oracle: a test knows what each rate and quantile must be.

/** Levels per second of a workload at one instant. */
export interface Levels {
  /** The run-queue wait most of the slowest 3 % of waits take (seconds): p99 lands in its log2 bucket. */
  runqueue: number;
  syscallErrorRatio: number;
  retransmitRatio: number;
  dropsPerSecond: number;
  dnsErrorRatio: number;
  /** Likewise for DNS answers. */
  dnsLatency: number;
  blockLatency: number;
  /** GPU share its processes use; undefined: no GPU. */
  gpuUtilization?: number;
}

export interface ScenarioWorkload {
  namespace: string;
  workload: string;
  /** Levels at `t` seconds from the start, before noise. */
  levels: (t: number) => Levels;
  /** Multiplicative noise (σ of a log-normal factor per 30 s interval); 0.1 is a calm workload. */
  noise: number;
}

export const waitsPerSecond = 200;
export const syscallsPerSecond = 1000;
export const packetsPerSecond = 200;
export const lookupsPerSecond = 20;
export const ioPerSecond = 50;

/** Deterministic: the same scenario gives the same series in every run. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let r = Math.imul(a ^ (a >>> 15), 1 | a);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
}

/** The agent's log2 buckets, 2^k ns for k = 10…35, as `le` in seconds. */
const bounds = Array.from({ length: 26 }, (_, i) => 2 ** (i + 10) / 1e9);
const bucketOf = (seconds: number) => Math.max(0, bounds.findIndex((b) => seconds <= b));

/** The log2 bucket a latency falls into, as (lower, upper] seconds: where histogram_quantile puts p99. */
export function bucketAround(seconds: number): [number, number] {
  const i = bucketOf(seconds);
  return [i === 0 ? 0 : bounds[i - 1]!, bounds[i]!];
}

interface Series {
  name: string;
  labels: Record<string, string>;
  values: number[];
}

interface Family {
  name: string;
  type: 'counter' | 'histogram' | 'gauge';
  series: Map<string, Series>;
}

export interface Scenario {
  openMetrics: string;
  start: number;
  end: number;
}

/**
 * Series every `stepSeconds` from `start` to `end` (Unix seconds) for the
 * workloads, all on `node`.
 */
export function buildScenario(workloads: readonly ScenarioWorkload[], { start, end, node, stepSeconds = 30, seed = 13 }: { start: number; end: number; node: string; stepSeconds?: number; seed?: number }): Scenario {
  const families = new Map<string, Family>();
  const steps = Math.floor((end - start) / stepSeconds);
  const add = (family: string, type: Family['type'], name: string, labels: Record<string, string>, step: number, value: number, cumulative: boolean) => {
    const f = families.get(family) ?? { name: family, type, series: new Map<string, Series>() };
    families.set(family, f);
    const id = `${name}${JSON.stringify(labels)}`;
    const s = f.series.get(id) ?? { name, labels, values: new Array<number>(steps + 1).fill(0) };
    f.series.set(id, s);
    const previous = step === 0 ? 0 : s.values[step - 1]!;
    s.values[step] = cumulative ? previous + value : value;
  };
  const rand = random(seed);
  // A log-normal factor: many calm intervals, a few bursts.
  const jitter = (sigma: number) => Math.exp(sigma * Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand()));
  const histogram = (family: string, labels: Record<string, string>, step: number, count: number, tail: number) => {
    // 97 % of observations at an eighth of the tail, 3 % at the tail: p99 falls in the tail's bucket.
    const fast = bucketOf(tail / 8);
    const slow = bucketOf(tail);
    const perBucket = bounds.map((_, i) => (i === fast ? count * 0.97 : 0) + (i === slow ? count * 0.03 : 0));
    let running = 0;
    bounds.forEach((b, i) => {
      running += perBucket[i]!;
      add(family, 'histogram', `${family}_bucket`, { ...labels, le: String(b) }, step, running, true);
    });
    add(family, 'histogram', `${family}_bucket`, { ...labels, le: '+Inf' }, step, count, true);
    add(family, 'histogram', `${family}_count`, labels, step, count, true);
    add(family, 'histogram', `${family}_sum`, labels, step, count * (0.97 * tail / 8 + 0.03 * tail), true);
  };
  for (let step = 0; step <= steps; step++) {
    const dt = step === 0 ? 0 : stepSeconds;
    for (const w of workloads) {
      const id = { namespace: w.namespace, pod: `${w.workload}-0`, container: 'app', workload: w.workload, workload_kind: 'Deployment' };
      const scrape = { job: 'probepilot', instance: '10.0.0.1:9742', node };
      const labels = { ...scrape, ...id };
      const l = w.levels(step * stepSeconds);
      const n = () => jitter(w.noise);
      histogram('probepilot_runqueue_latency_seconds', labels, step, Math.round(waitsPerSecond * dt), l.runqueue * n());
      const syscalls = Math.round(syscallsPerSecond * dt);
      add('probepilot_syscalls', 'counter', 'probepilot_syscalls_total', { ...labels, syscall: 'read' }, step, syscalls, true);
      add('probepilot_syscall_errors', 'counter', 'probepilot_syscall_errors_total', { ...labels, syscall: 'read' }, step, Math.round(syscalls * Math.min(1, l.syscallErrorRatio * n())), true);
      const packets = Math.round(packetsPerSecond * dt);
      add('probepilot_network_packets', 'counter', 'probepilot_network_packets_total', { ...labels, direction: 'egress', protocol: 'tcp' }, step, packets, true);
      add('probepilot_tcp_retransmits', 'counter', 'probepilot_tcp_retransmits_total', labels, step, Math.round(packets * Math.min(1, l.retransmitRatio * n())), true);
      add('probepilot_packet_drops', 'counter', 'probepilot_packet_drops_total', { ...labels, reason: 'NETFILTER_DROP' }, step, Math.round(l.dropsPerSecond * dt * n()), true);
      const lookups = Math.round(lookupsPerSecond * dt);
      const failed = Math.round(lookups * Math.min(1, l.dnsErrorRatio * n()));
      add('probepilot_dns_requests', 'counter', 'probepilot_dns_requests_total', { ...labels, qtype: 'A' }, step, lookups, true);
      add('probepilot_dns_responses', 'counter', 'probepilot_dns_responses_total', { ...labels, rcode: 'NOERROR' }, step, lookups - failed, true);
      add('probepilot_dns_responses', 'counter', 'probepilot_dns_responses_total', { ...labels, rcode: 'SERVFAIL' }, step, failed, true);
      add('probepilot_dns_timeouts', 'counter', 'probepilot_dns_timeouts_total', labels, step, 0, true);
      histogram('probepilot_dns_latency_seconds', labels, step, lookups, l.dnsLatency * n());
      const io = Math.round(ioPerSecond * dt);
      add('probepilot_block_io_requests', 'counter', 'probepilot_block_io_requests_total', { ...labels, device: 'vda', op: 'write' }, step, io, true);
      histogram('probepilot_block_io_latency_seconds', { ...labels, device: 'vda', op: 'write' }, step, io, l.blockLatency * n());
      add('probepilot_oom_kills', 'counter', 'probepilot_oom_kills_total', labels, step, 0, true);
      if (l.gpuUtilization !== undefined) {
        const gpu = { gpu: '0', uuid: 'GPU-5f3c1a2e', model: 'NVIDIA-A100-SXM4-40GB' };
        add('probepilot_gpu_process_utilization_ratio', 'gauge', 'probepilot_gpu_process_utilization_ratio', { ...labels, ...gpu }, step, Math.min(1, l.gpuUtilization * n()), false);
        add('probepilot_gpu_process_memory_used_bytes', 'gauge', 'probepilot_gpu_process_memory_used_bytes', { ...labels, ...gpu }, step, 8 * 2 ** 30 + step * 2 ** 20, false);
        add('probepilot_gpu_memory_used_bytes', 'gauge', 'probepilot_gpu_memory_used_bytes', { ...scrape, ...gpu }, step, 10 * 2 ** 30 + step * 2 ** 20, false);
        add('probepilot_gpu_memory_total_bytes', 'gauge', 'probepilot_gpu_memory_total_bytes', { ...scrape, ...gpu }, step, 40 * 2 ** 30, false);
      }
      add('probepilot_tcp_connections_active', 'gauge', 'probepilot_tcp_connections_active', labels, step, 100 + step, false);
    }
  }
  const lines: string[] = [];
  const labelText = (labels: Record<string, string>) => Object.entries(labels).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(',');
  for (const f of families.values()) {
    // OpenMetrics names a counter family without _total.
    lines.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.series.values()) {
      s.values.forEach((v, step) => lines.push(`${s.name}{${labelText(s.labels)}} ${v} ${start + step * stepSeconds}`));
    }
  }
  lines.push('# EOF');
  return { openMetrics: `${lines.join('\n')}\n`, start, end: start + steps * stepSeconds };
}
