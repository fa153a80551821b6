// Every collector the agent knows, in exposition order. A new collector is
// one BPF file (none for the GPU's NVML), one module and one line here.
import { blockCollector } from './block.js';
import type { Collector, CollectorContext } from './collector.js';
import { customProbeFactories } from './custom.js';
import { dnsCollector } from './dns.js';
import { dropsCollector } from './drops.js';
import { GpuCollector } from './gpu.js';
import { NetworkCollector } from './network.js';
import { processCollector } from './process.js';
import { schedCollector } from './sched.js';
import { syscallsCollector } from './syscalls.js';
import { tcpCollector } from './tcp.js';

/** One factory per collector: a collector disabled at run time and enabled again is a new instance. */
export function collectorFactories(ctx: CollectorContext): Array<() => Collector> {
  return [
    () => new NetworkCollector(ctx),
    () => schedCollector(ctx),
    () => syscallsCollector(ctx),
    () => tcpCollector(ctx),
    () => blockCollector(ctx),
    () => dropsCollector(ctx),
    () => dnsCollector(ctx),
    () => processCollector(ctx),
    () => new GpuCollector(ctx),
    ...customProbeFactories(ctx),
  ];
}
