// The per-workload signals `probepilot explain` scores. Each is the PromQL of
// a recording rule of the probepilot-insights and probepilot-workloads groups
// (charts/probepilot/files/prometheus-rules.yaml), written out here over the
// raw series so explain also works on a Prometheus that does not load our rules.

export type SignalUnit = 'seconds' | 'ratio' | 'per_second' | 'bytes';

/** What a finding's sentence calls "stayed normal": one word per area. */
export type SignalArea = 'CPU' | 'syscalls' | 'network' | 'DNS' | 'disk' | 'memory' | 'GPU';

export interface SignalDefinition {
  /** The metric family the signal is built from: a finding's `signal`. */
  family: string;
  /** In a sentence: "run-queue latency p99 rose …". */
  label: string;
  area: SignalArea;
  unit: SignalUnit;
  /** 'up': only a rise is abnormal; 'both': a fall is too (a GPU job that stalls). */
  direction: 'up' | 'both';
  /** Per (namespace, workload), over the series that match `selector` (matchers without braces). */
  expr: (selector: string) => string;
  /** The traffic the signal needs to mean something, per (namespace, workload), and its minimum. */
  guard?: { expr: (selector: string) => string; minimum: number; what: string };
  /**
   * The smallest spread a baseline is given: a signal flat for a day (0 % errors)
   * would otherwise make any blip infinitely unusual. In the signal's unit.
   */
  noiseFloor: number;
}

const by = 'sum by (namespace, workload)';
const rate = (series: string, selector: string, extra = '') => `rate(${series}{${[selector, extra].filter(Boolean).join(', ')}}[5m])`;
const p99 = (histogram: string) => (selector: string) => `histogram_quantile(0.99, sum by (namespace, workload, le) (${rate(`${histogram}_bucket`, selector)}))`;

export const signals: readonly SignalDefinition[] = [
  {
    family: 'probepilot_runqueue_latency_seconds',
    label: 'run-queue latency p99',
    area: 'CPU',
    unit: 'seconds',
    direction: 'up',
    expr: p99('probepilot_runqueue_latency_seconds'),
    guard: { expr: (s) => `${by} (${rate('probepilot_runqueue_latency_seconds_count', s)})`, minimum: 1, what: 'run-queue waits/s' },
    noiseFloor: 0.0005,
  },
  {
    family: 'probepilot_syscall_errors_total',
    label: 'syscall error ratio',
    area: 'syscalls',
    unit: 'ratio',
    direction: 'up',
    expr: (s) => `${by} (${rate('probepilot_syscall_errors_total', s)}) / ${by} (${rate('probepilot_syscalls_total', s)})`,
    guard: { expr: (s) => `${by} (${rate('probepilot_syscalls_total', s)})`, minimum: 10, what: 'syscalls/s' },
    noiseFloor: 0.002,
  },
  {
    family: 'probepilot_tcp_retransmits_total',
    label: 'TCP retransmit ratio',
    area: 'network',
    unit: 'ratio',
    direction: 'up',
    expr: (s) => `${by} (${rate('probepilot_tcp_retransmits_total', s)}) / ${by} (${rate('probepilot_network_packets_total', s, 'protocol="tcp", direction="egress"')})`,
    guard: { expr: (s) => `${by} (${rate('probepilot_network_packets_total', s, 'protocol="tcp", direction="egress"')})`, minimum: 10, what: 'TCP packets sent/s' },
    noiseFloor: 0.002,
  },
  {
    family: 'probepilot_packet_drops_total',
    label: 'packet drops',
    area: 'network',
    unit: 'per_second',
    direction: 'up',
    expr: (s) => `${by} (${rate('probepilot_packet_drops_total', s)})`,
    noiseFloor: 0.5,
  },
  {
    family: 'probepilot_dns_responses_total',
    label: 'DNS error ratio',
    area: 'DNS',
    unit: 'ratio',
    direction: 'up',
    // As the recording rule: SERVFAIL, REFUSED, … and timeouts, not NXDOMAIN (the search-domain walk).
    expr: (s) => {
      const zero = `0 * ${by} (${rate('probepilot_dns_requests_total', s)})`;
      return `((${by} (${rate('probepilot_dns_responses_total', s, 'rcode!~"NOERROR|NXDOMAIN"')}) or ${zero}) + (${by} (${rate('probepilot_dns_timeouts_total', s)}) or ${zero})) / ${by} (${rate('probepilot_dns_requests_total', s)})`;
    },
    guard: { expr: (s) => `${by} (${rate('probepilot_dns_requests_total', s)})`, minimum: 1, what: 'DNS lookups/s' },
    noiseFloor: 0.01,
  },
  {
    family: 'probepilot_dns_latency_seconds',
    label: 'DNS latency p99',
    area: 'DNS',
    unit: 'seconds',
    direction: 'up',
    expr: p99('probepilot_dns_latency_seconds'),
    guard: { expr: (s) => `${by} (${rate('probepilot_dns_requests_total', s)})`, minimum: 1, what: 'DNS lookups/s' },
    noiseFloor: 0.002,
  },
  {
    family: 'probepilot_block_io_latency_seconds',
    label: 'block I/O latency p99',
    area: 'disk',
    unit: 'seconds',
    direction: 'up',
    expr: p99('probepilot_block_io_latency_seconds'),
    guard: { expr: (s) => `${by} (${rate('probepilot_block_io_requests_total', s)})`, minimum: 1, what: 'block I/O requests/s' },
    noiseFloor: 0.0005,
  },
  {
    family: 'probepilot_oom_kills_total',
    label: 'OOM kills',
    area: 'memory',
    unit: 'per_second',
    direction: 'up',
    expr: (s) => `${by} (${rate('probepilot_oom_kills_total', s)})`,
    // One kill in 5 minutes is 1/300 per second: that alone is already unusual.
    noiseFloor: 1 / 3000,
  },
  {
    family: 'probepilot_gpu_process_utilization_ratio',
    label: 'GPU utilization',
    area: 'GPU',
    unit: 'ratio',
    direction: 'both',
    expr: (s) => `${by} (probepilot_gpu_process_utilization_ratio{${s}})`,
    noiseFloor: 0.02,
  },
  {
    family: 'probepilot_gpu_process_memory_used_bytes',
    label: 'GPU memory',
    area: 'GPU',
    unit: 'bytes',
    direction: 'up',
    expr: (s) => `${by} (probepilot_gpu_process_memory_used_bytes{${s}})`,
    noiseFloor: 2 ** 27,
  },
];
