// OTLP export at ~20k points: two agents run side by side with the same
// synthetic syscall table (test/helpers/syscall-table.ts), one pushing to a
// real OTLP/gRPC receiver (test/helpers/otlp-receiver.ts) every interval, the
// other not exporting at all. The difference of their CPU time over the same
// window, per push received, is what a push costs (its collection included:
// a push reads the maps as a scrape does), normalized per 20,000 points. Run
// at once, both meet the same machine load. The peer: the non-exporting
// agent's CPU per /metrics scrape of the same table.
import { performance } from 'node:perf_hooks';
import { startAgent, onlyCollectors, type AgentProcess } from '../test/helpers/agent.js';
import { OtlpReceiver } from '../test/helpers/otlp-receiver.js';
import { fillSyscallStats, syntheticSlots, syntheticWorkloads } from '../test/helpers/syscall-table.js';
import { waitFor } from '../test/helpers/wait.js';
import { median, processCpuMs, type BenchOptions, type BenchSection } from './common.js';

/** A push carries three points per entry: calls, errors and the latency histogram. */
const pointsPerEntry = 3;

export async function benchOtlp(opts: BenchOptions): Promise<BenchSection> {
  const pushes = opts.quick ? 3 : 20;
  const intervalSeconds = 2;
  const workloads = syntheticWorkloads(Math.round(20_000 / pointsPerEntry / syntheticSlots.length));
  // ~20k points with their histograms make a request of more than 4 MiB, gRPC's (and the OpenTelemetry Collector's)
  // default limit, which the receiver would refuse: it is raised here as a collector at this scale would need.
  const receiver = new OtlpReceiver({ maxMessageBytes: 64 * 1024 * 1024 });
  await receiver.start();
  const agents: AgentProcess[] = [];
  try {
    const env = { ...onlyCollectors('syscalls'), PROBEPILOT_LOG_LEVEL: 'info' };
    const plain = await startAgent({ env });
    agents.push(plain);
    const exporting = await startAgent({ env: { ...env, PROBEPILOT_OTLP_ENDPOINT: receiver.endpoint, PROBEPILOT_OTLP_INTERVAL_SECONDS: String(intervalSeconds) } });
    agents.push(exporting);
    const entries = await fillSyscallStats(plain, workloads);
    await fillSyscallStats(exporting, workloads);
    const filled = Date.now();
    // The agent walks the cgroup tree again at most every 2 s: the first full push may be the second after the fill.
    await waitFor(() => receiver.exports.some((e) => e.receivedAt > filled && e.points.length >= entries * pointsPerEntry), {
      timeoutMs: 30_000,
      what: `an OTLP push of ${entries * pointsPerEntry} points`,
    }).catch((err: unknown) => {
      const last = receiver.exports.at(-1)?.points ?? [];
      const byMetric = Object.entries(Object.groupBy(last, (p) => p.metric)).map(([m, ps]) => `${m}: ${ps?.length}`);
      throw new Error(`${(err as Error).message}; pushes had ${[...new Set(receiver.exports.map((e) => e.points.length))].join(', ')} points; the last ${byMetric.join(', ')}`);
    });
    const since = receiver.exports.length;
    const cpu = () => ({ plain: processCpuMs(plain.child.pid!), exporting: processCpuMs(exporting.child.pid!) });
    const start = cpu();
    await waitFor(() => receiver.exports.length >= since + pushes, { timeoutMs: (pushes * intervalSeconds + 30) * 1000, what: `${pushes} OTLP pushes` });
    const end = cpu();
    const window = receiver.exports.slice(since, since + pushes);
    const points = median(window.map((e) => e.points.length));
    const perPush = (end.exporting - start.exporting - (end.plain - start.plain)) / pushes;
    const per20k = (perPush * 20_000) / points;

    const scrapes = opts.quick ? 3 : 20;
    const scrapeCpu: number[] = [];
    for (let i = 0; i < scrapes; i++) {
      const before = processCpuMs(plain.child.pid!);
      const started = performance.now();
      await plain.metrics();
      // /proc's CPU time ticks every 10 ms: a scrape is read once it has had time to be accounted.
      await new Promise((r) => setTimeout(r, Math.max(0, 50 - (performance.now() - started))));
      scrapeCpu.push(processCpuMs(plain.child.pid!) - before);
    }
    return {
      rows: [
        {
          measure: 'OTLP export CPU per push per 20k points (ms)',
          baseline: `/metrics scrape CPU, same table (ms); ${Math.round(points).toLocaleString('en-US')} points a push`,
          base: median(scrapeCpu),
          value: per20k,
          ratio: per20k / median(scrapeCpu),
        },
      ],
      samples: { otlp: { cpuMsPerPush: [perPush], points: window.map((e) => e.points.length), scrapeCpuMs: scrapeCpu, intervalSeconds: [intervalSeconds] } },
    };
  } finally {
    for (const agent of agents) await agent.stop();
    receiver.stop();
    await workloads.remove();
  }
}
