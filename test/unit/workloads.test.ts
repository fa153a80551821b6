// The workloads query on synthetic collections: rates over the interval
// between two queries, the run-queue p99 from the buckets filled during that
// interval (not the cumulative histogram), collectors that are off leaving
// null columns; and how top lays the answer out (golden text).
import t from 'tap';
import { AgentService, type WorkloadEntry } from '../../src/api/service.js';
import type { CollectorManager, CollectorState } from '../../src/collectors/manager.js';
import type { Identity } from '../../src/identity/identity.js';
import { histogramDelta, histogramQuantile } from '../../src/metrics/histogram.js';
import type { MetricFamily } from '../../src/metrics/model.js';
import { fitTable, renderTop, type TopRow, type TopSnapshot } from '../../src/top-view.js';

t.test('histogram quantiles interpolate inside the bucket, as histogram_quantile does', async (t) => {
  const bounds = [1, 2, 4];
  t.equal(histogramQuantile(0.5, bounds, [0, 10, 0, 0]), 1.5, 'the middle of the one filled bucket (1, 2]');
  t.equal(histogramQuantile(0.99, bounds, [100, 0, 0, 0]), 0.99, 'first bucket: from 0');
  t.equal(histogramQuantile(0.99, bounds, [90, 0, 0, 10]), 4, 'in +Inf: the last bound');
  t.equal(histogramQuantile(0.99, bounds, [0, 0, 0, 0]), null, 'nothing observed');
  t.same(histogramDelta([5, 7, 9], [1, 7, 10]), [4, 0, 0], 'a bucket that went back (collector restarted) reads as none');
  t.same(histogramDelta([5, 7], undefined), [5, 7], 'no earlier reading: all of it');
});

const cgroupIdentity = { mode: 'standalone', labelNames: () => ['cgroup'] } as unknown as Identity;
const bounds = [0.001, 0.002, 0.004, 0.008];

/** The service over a manager alone: a workloads query needs no events, traces or reloads. */
function serviceOf(manager: CollectorManager): AgentService {
  const unused = {} as never;
  return new AgentService({ manager, identity: cgroupIdentity, nodeName: 'n', bpfStats: false, reload: unused, events: unused, pipeline: unused, collectionMaxAgeMs: 0, collectionAhead: true });
}

/** A manager whose collectors answer what `readings` holds at the moment. */
function fakeManager(running: string[], readings: Record<string, MetricFamily[]>): CollectorManager {
  const state = (name: string): CollectorState => ({ name, enabled: true, up: running.includes(name), reason: '', lastCollectSeconds: 0, collectErrors: 0, series: 0 });
  return {
    states: () => ['network', 'sched', 'syscalls', 'tcp', 'gpu', 'block'].map(state),
    recentCollection: async (name: string) => {
      if (!running.includes(name)) throw new Error(`${name} is off and must not be read`);
      return { at: Date.now(), families: readings[name] ?? [] };
    },
  } as unknown as CollectorManager;
}

function reading(bytes: number, syscalls: number, runqueue: number[]): Record<string, MetricFamily[]> {
  return {
    network: [
      {
        name: 'probepilot_network_bytes_total',
        help: '',
        type: 'counter',
        labelNames: ['cgroup', 'direction', 'protocol'],
        samples: [
          { labels: { cgroup: '/a', direction: 'egress', protocol: 'udp' }, value: bytes },
          { labels: { cgroup: '/a', direction: 'egress', protocol: 'tcp' }, value: 10 },
          { labels: { cgroup: '/a', direction: 'ingress', protocol: 'udp' }, value: 7 },
        ],
      },
    ],
    syscalls: [
      {
        name: 'probepilot_syscalls_total',
        help: '',
        type: 'counter',
        labelNames: ['cgroup', 'syscall'],
        samples: [
          { labels: { cgroup: '/a', syscall: 'getppid' }, value: syscalls },
          { labels: { cgroup: '/a', syscall: 'other' }, value: 5 },
          { labels: { cgroup: '/b', syscall: 'other' }, value: 1 },
        ],
      },
    ],
    sched: [
      {
        name: 'probepilot_runqueue_latency_seconds',
        help: '',
        type: 'histogram',
        labelNames: ['cgroup'],
        samples: [{ labels: { cgroup: '/a' }, bounds, counts: runqueue, sum: 0, count: runqueue.reduce((x, y) => x + y, 0) }],
      },
    ],
  };
}

t.test('rates and the run-queue p99 are over the interval since the previous query', async (t) => {
  let now = reading(1000, 100, [0, 0, 0, 10_000, 0]);
  const manager = fakeManager(['network', 'sched', 'syscalls'], new Proxy({}, { get: (_, name: string) => now[name] }));
  const service = serviceOf(manager);
  const first = await service.workloads({ sort: 'name', limit: 50 });
  t.equal(first.intervalSeconds, null, 'the first query has no earlier reading');
  t.ok(first.workloads.every((w) => w.txBytesPerSecond === null && w.runqueueLatencyP99Seconds === null), 'so no rates and no p99 yet');
  t.same(first.collectorsOff, ['tcp', 'gpu'], 'the collectors not running');

  await new Promise((r) => setTimeout(r, 1100));
  // Since then: 4000 bytes and 2000 getppid calls; 1000 waits, all in the first bucket (≤ 1 ms), after 10,000 slow ones before.
  now = reading(5000, 2100, [1000, 0, 0, 10_000, 0]);
  const second = await service.workloads({ sort: 'name', limit: 50 });
  const interval = second.intervalSeconds!;
  t.ok(interval >= 1 && interval < 3, `rates over ${interval} s`);
  const a = second.workloads.find((w) => w.workload.cgroup === '/a')!;
  // Each collector's rate is over its own collections' times, which may differ from the query's by a millisecond.
  const near = (value: number | null, expected: number) => value !== null && Math.abs(value - expected) <= expected * 0.005;
  t.ok(near(a.txBytesPerSecond, 4000 / interval), `tx: egress bytes over every protocol, per second (${a.txBytesPerSecond} vs ${4000 / interval}, 0.5 %)`);
  t.equal(a.rxBytesPerSecond, 0, 'rx unchanged');
  t.ok(near(a.syscallsPerSecond, 2000 / interval), `syscalls: every syscall of the workload, per second (${a.syscallsPerSecond} vs ${2000 / interval}, 0.5 %)`);
  t.equal(a.runqueueLatencyP99Seconds, histogramQuantile(0.99, bounds, [1000, 0, 0, 0, 0]), 'p99 of the buckets filled during the interval');
  t.ok(a.runqueueLatencyP99Seconds! <= 0.001, `p99 ${a.runqueueLatencyP99Seconds} s: within the first bucket`);
  t.ok(histogramQuantile(0.99, bounds, [1000, 0, 0, 10_000, 0])! > 0.004, 'the cumulative histogram would have answered the slow past (4-8 ms)');
  t.same([a.tcpRetransmitsPerSecond, a.gpuUtilization], [null, null], 'tcp and gpu are off: null, not an error');
  const b = second.workloads.find((w) => w.workload.cgroup === '/b')!;
  t.same([b.syscallsPerSecond, b.txBytesPerSecond, b.runqueueLatencyP99Seconds], [0, 0, null], 'a workload seen by one collector: zero rates from the others, no p99 without waits');

  const sorted = await service.workloads({ sort: 'syscalls', limit: 1 });
  t.same([sorted.total, sorted.workloads.map((w) => w.workload.cgroup)], [2, ['/a']], 'sorted by syscalls/s, limited');
  const filtered = await service.workloads({ pod: '/b', sort: 'rx', limit: 50 });
  t.same(filtered.workloads.map((w) => w.workload.cgroup), ['/b'], 'pod matches the cgroup path in standalone mode');
});

t.test('a collector switched on between two queries gives rates only from its second read', async (t) => {
  const running = ['syscalls'];
  const manager = fakeManager(running, reading(1_000_000, 100, [0, 0, 0, 0, 0]));
  const service = serviceOf(manager);
  await service.workloads({ sort: 'name', limit: 50 });
  running.push('network');
  await new Promise((r) => setTimeout(r, 1100));
  const first = (await service.workloads({ sort: 'name', limit: 50 })).workloads.find((w) => w.workload.cgroup === '/a')!;
  t.same([first.txBytesPerSecond, first.syscallsPerSecond], [null, 0], 'network has one read: no rate (its counts since it started are not over this interval)');
  await new Promise((r) => setTimeout(r, 1100));
  const second = (await service.workloads({ sort: 'name', limit: 50 })).workloads.find((w) => w.workload.cgroup === '/a')!;
  t.equal(second.txBytesPerSecond, 0, 'two reads: its rate');
});

const entry = (workload: Record<string, string>, values: Partial<WorkloadEntry>): TopRow => ({
  workload,
  rxBytesPerSecond: 0,
  txBytesPerSecond: 0,
  rxPacketsPerSecond: 0,
  txPacketsPerSecond: 0,
  runqueueLatencyP99Seconds: null,
  syscallsPerSecond: 0,
  tcpRetransmitsPerSecond: 0,
  gpuUtilization: null,
  ...values,
});

const rows: TopRow[] = [
  entry({ namespace: 'shop', pod: 'web-0', workload: 'web', workload_kind: 'StatefulSet' }, { txBytesPerSecond: 208_400, txPacketsPerSecond: 200, runqueueLatencyP99Seconds: 0.0000512, syscallsPerSecond: 412.5 }),
  entry({ namespace: 'batch', pod: 'a-very-long-pod-name-that-will-not-fit-0', workload: 'a', workload_kind: 'Job' }, { rxBytesPerSecond: 1536, syscallsPerSecond: 20_100, gpuUtilization: 0.5 }),
];

t.test('top: one snapshot as a plain table (golden)', async (t) => {
  const snapshot: TopSnapshot = { total: 2, intervalSeconds: 2.004, collectorsOff: ['gpu'], workloads: rows, unreachable: [] };
  t.equal(
    renderTop(snapshot, 'tx'),
    [
      'WORKLOAD                                        RX/S     TX/S       RX PKT/S  TX PKT/S  RUNQ P99  SYSCALLS/S  RETRANS/S  GPU',
      'shop/web-0                                      0 B      203.5 KiB  0.0       200       51.2 us   413         0.0        -',
      'batch/a-very-long-pod-name-that-will-not-fit-0  1.5 KiB  0 B        0.0       0.0       -         20100       0.0        50%',
      '2 of 2 workloads; rates over 2.0 s; off: gpu',
      '',
    ].join('\n'),
  );
  const cluster: TopSnapshot = { ...snapshot, workloads: rows.map((r, i) => ({ ...r, node: `node-${i}` })), unreachable: [{ node: 'node-9', url: 'http://198.18.0.9:9742', error: 'timeout' }] };
  const text = renderTop(cluster, 'syscalls');
  t.match(text, /^NODE\s+WORKLOAD\s+RX\/S/, 'cluster: a NODE column first');
  t.match(text.split('\n')[1], /^node-1\s+batch\/a-very/, 'sorted by syscalls/s: batch first');
  t.match(text, /^unreachable: node-9 \(http:\/\/198\.18\.0\.9:9742\): timeout$/m, 'the agents that did not answer');
});

t.test('top: the table fits the width, dropping columns from the right but never the sorted one', async (t) => {
  const wide = fitTable(rows, 'tx', 200);
  t.same(wide.dropped, [], 'everything fits in 200 columns');
  t.match(wide.lines[0], /^WORKLOAD\s+RX\/S\s+TX\/S\s+RX PKT\/S\s+TX PKT\/S\s+RUNQ P99\s+SYSCALLS\/S\s+RETRANS\/S\s+GPU$/);
  const narrow = fitTable(rows, 'gpu', 60);
  t.ok(narrow.lines.every((l) => l.length <= 60), 'every line within 60 columns');
  t.ok(narrow.dropped.length > 0 && !narrow.dropped.includes('GPU'), `dropped ${narrow.dropped.join(', ')}; GPU (the sort) kept`);
  t.match(narrow.lines[0], /GPU$/);
  const header = narrow.lines[0]!;
  t.equal(header.slice(narrow.sortedHeader!.start, narrow.sortedHeader!.start + narrow.sortedHeader!.length), 'GPU', 'the sorted header is located for highlighting');
  const tiny = fitTable(rows, 'name', 30);
  t.same(tiny.lines.slice(1), ['shop/web-0                 0 B', 'batch/a-very-long-po…  1.5 KiB'], 'in 30 columns: the name cut with an ellipsis, one metric column left');
});
