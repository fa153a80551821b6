// Syscalls collector: calls, failures (-4095..-1 returns) and latency per
// workload and syscall (bpf/syscalls.bpf.c). Only the configured names are
// labels; every other syscall is "other", so the label set stays bounded.
import { CollectorUnavailableError, type Collector, type CollectorContext } from './collector.js';
import { currentSyscallArch, syscallNrMax, syscallNumbers } from './syscall-table.js';
import { familyTotal, TracepointCollector } from './tracepoint.js';

const callsFamily = 'probepilot_syscalls_total';
/** Offsets in struct syscall_value: calls, errors, then struct pp_hist latency. */
const valueLayout = { calls: 0, errors: 8, latency: 16 } as const;

/** Slot names in kernel order: 0 is "other", then the tracked names as configured. */
export function syscallSlots(tracked: readonly string[], arch: string = process.arch): { names: string[]; slotOfNr: Buffer } {
  const syscallArch = currentSyscallArch(arch);
  if (!syscallArch) throw new CollectorUnavailableError(`no syscall table for architecture ${arch} (supported: x64, arm64)`);
  const { numbers } = syscallNumbers(tracked, syscallArch);
  const names = ['other', ...numbers.keys()];
  const slotOfNr = Buffer.alloc(syscallNrMax);
  [...numbers.values()].forEach((nr, i) => slotOfNr.writeUInt8(i + 1, nr));
  return { names, slotOfNr };
}

export function syscallsCollector(ctx: CollectorContext): Collector {
  const { tracked, maxEntries, maxThreads } = ctx.config.collectors.syscalls;
  let slots: string[] = [];
  return new TracepointCollector(
    {
      name: 'syscalls',
      object: 'syscalls.bpf.o',
      scope: 'container',
      attach: [
        { program: 'pp_sys_enter', tracepoint: 'raw_syscalls:sys_enter' },
        { program: 'pp_sys_exit', tracepoint: 'raw_syscalls:sys_exit' },
      ],
      views: [
        {
          map: 'syscall_stats',
          keyLabels: (key) => ({ syscall: slots[key.readUInt32LE(8)] ?? 'other' }),
          fields: [valueLayout.calls, valueLayout.errors],
          histograms: [valueLayout.latency],
          families: [
            {
              descriptor: {
                name: callsFamily,
                help: 'Syscalls a workload completed, by syscall name (the tracked set; the rest are "other"), counted at return.',
                type: 'counter',
                labelNames: ['syscall'],
              },
              value: ([calls]) => calls!,
            },
            {
              descriptor: {
                name: 'probepilot_syscall_errors_total',
                help: 'Syscalls that returned an error (-4095..-1), by syscall name.',
                type: 'counter',
                labelNames: ['syscall'],
              },
              value: ([, errors]) => errors!,
            },
            {
              descriptor: {
                name: 'probepilot_syscall_latency_seconds',
                help: 'Time from syscall entry to return, by syscall name (log2 buckets measured in the kernel).',
                type: 'histogram',
                labelNames: ['syscall'],
              },
              histogram: 0,
            },
          ],
        },
      ],
      // Key slots are positions in the tracked list: another list is another layout.
      pinLayout: `tracked=${tracked.join(',')}`,
      beforeLoad: (object) => {
        const { names, slotOfNr } = syscallSlots(tracked);
        slots = names;
        object.setConst('slot_of_nr', slotOfNr);
        object.setMapMaxEntries('syscall_stats', maxEntries);
        object.setMapMaxEntries('syscall_start', maxThreads);
      },
      eventsProcessed: (families) => familyTotal(families, callsFamily),
    },
    ctx,
  );
}
