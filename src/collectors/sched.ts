// Sched collector: run-queue latency per workload (bpf/sched.bpf.c), a
// log2 histogram in the kernel, exposed in seconds.
import type { Collector, CollectorContext } from './collector.js';
import { TracepointCollector } from './tracepoint.js';

export function schedCollector(ctx: CollectorContext): Collector {
  const { maxEntries, maxTasks } = ctx.config.collectors.sched;
  return new TracepointCollector(
    {
      name: 'sched',
      object: 'sched.bpf.o',
      scope: 'container',
      attach: [
        { program: 'pp_sched_wakeup', rawTracepoint: 'sched_wakeup' },
        { program: 'pp_sched_wakeup_new', rawTracepoint: 'sched_wakeup_new' },
        { program: 'pp_sched_switch', rawTracepoint: 'sched_switch' },
      ],
      views: [
        {
          map: 'runq_latency',
          histograms: [0],
          families: [
            {
              descriptor: {
                name: 'probepilot_runqueue_latency_seconds',
                help: 'Time runnable tasks of a workload waited for a CPU, from wakeup or preemption until they ran (log2 buckets measured in the kernel).',
                type: 'histogram',
              },
              histogram: 0,
            },
          ],
        },
      ],
      beforeLoad: (object) => {
        object.setMapMaxEntries('runq_latency', maxEntries);
        object.setMapMaxEntries('runq_enqueued', maxTasks);
      },
      eventsProcessed: (families) => {
        const family = families[0];
        return family?.type === 'histogram' ? family.samples.reduce((total, s) => total + s.count, 0) : 0;
      },
    },
    ctx,
  );
}
