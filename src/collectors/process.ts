// Process collector: execs and OOM kills per workload (bpf/process.bpf.c).
import type { Collector, CollectorContext } from './collector.js';
import { familyTotal, TracepointCollector } from './tracepoint.js';

const execsFamily = 'probepilot_process_execs_total';
const oomKillsFamily = 'probepilot_oom_kills_total';

export function processCollector(ctx: CollectorContext): Collector {
  return new TracepointCollector(
    {
      name: 'process',
      object: 'process.bpf.o',
      scope: 'container',
      attach: [
        { program: 'pp_process_exec', tracepoint: 'sched:sched_process_exec' },
        { program: 'pp_process_oom_victim', rawTracepoint: 'mark_victim' },
      ],
      views: [
        {
          map: 'process_events',
          fields: [0, 8],
          families: [
            {
              descriptor: { name: execsFamily, help: 'Successful execve/execveat calls of a workload\'s tasks.', type: 'counter' },
              value: ([execs]) => execs!,
            },
            {
              descriptor: { name: oomKillsFamily, help: 'Tasks of a workload the kernel\'s OOM killer chose as victims (memory cgroup limit or node OOM).', type: 'counter' },
              value: ([, oomKills]) => oomKills!,
            },
          ],
        },
      ],
      beforeLoad: (object) => object.setMapMaxEntries('process_events', ctx.config.collectors.process.maxEntries),
      eventsProcessed: (families) => familyTotal(families, execsFamily) + familyTotal(families, oomKillsFamily),
    },
    ctx,
  );
}
