// Block collector: reads and writes per workload and disk (bpf/block.bpf.c)
// — requests, bytes, and issue→completion latency.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { sanitizeLabelValue } from '../metrics/model.js';
import type { Collector, CollectorContext } from './collector.js';
import { familyTotal, TracepointCollector } from './tracepoint.js';

const requestsFamily = 'probepilot_block_io_requests_total';
/** Offsets in struct block_value: requests, bytes, then struct pp_hist latency. */
const valueLayout = { requests: 0, bytes: 8, latency: 16 } as const;

/** The kernel's internal dev_t (major << 20 | minor) as "major:minor". */
export function devtName(dev: number): string {
  return `${dev >>> 20}:${dev & 0xfffff}`;
}

/**
 * A disk's kernel name (vda, nvme0n1, loop3) from sysfs, cached. The set of
 * disks bounds the label; one sysfs has no name for stays "major:minor".
 */
export class DeviceNames {
  private readonly names = new Map<number, string>();

  constructor(private readonly sysfsRoot = '/sys') {}

  nameOf(dev: number): string {
    const known = this.names.get(dev);
    if (known) return known;
    let name: string | undefined;
    try {
      const uevent = readFileSync(path.join(this.sysfsRoot, 'dev/block', devtName(dev), 'uevent'), 'utf8');
      name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
    } catch {
      // gone already, or never a block device sysfs knows
    }
    if (!name) return devtName(dev);
    const label = sanitizeLabelValue(name);
    this.names.set(dev, label);
    return label;
  }
}

export function blockCollector(ctx: CollectorContext): Collector {
  const { maxEntries, maxInflight } = ctx.config.collectors.block;
  const devices = new DeviceNames();
  return new TracepointCollector(
    {
      name: 'block',
      object: 'block.bpf.o',
      scope: 'container',
      attach: [
        { program: 'pp_block_io_start', rawTracepoint: 'block_io_start' },
        { program: 'pp_block_rq_issue', rawTracepoint: 'block_rq_issue' },
        { program: 'pp_block_io_done', rawTracepoint: 'block_io_done' },
      ],
      views: [
        {
          map: 'block_stats',
          keyLabels: (key) => ({ device: devices.nameOf(key.readUInt32LE(8)), op: key.readUInt32LE(12) === 1 ? 'write' : 'read' }),
          fields: [valueLayout.requests, valueLayout.bytes],
          histograms: [valueLayout.latency],
          families: [
            {
              descriptor: {
                name: requestsFamily,
                help: 'Block I/O requests a workload issued that completed, by disk and operation.',
                type: 'counter',
                labelNames: ['device', 'op'],
              },
              value: ([requests]) => requests!,
            },
            {
              descriptor: {
                name: 'probepilot_block_io_bytes_total',
                help: 'Bytes of completed block I/O requests a workload issued, by disk and operation.',
                type: 'counter',
                labelNames: ['device', 'op'],
              },
              value: ([, bytes]) => bytes!,
            },
            {
              descriptor: {
                name: 'probepilot_block_io_latency_seconds',
                help: 'Block I/O latency from issue to the driver until completion, by disk and operation (log2 buckets measured in the kernel).',
                type: 'histogram',
                labelNames: ['device', 'op'],
              },
              histogram: 0,
            },
          ],
        },
      ],
      beforeLoad: (object) => {
        object.setMapMaxEntries('block_stats', maxEntries);
        object.setMapMaxEntries('block_inflight', maxInflight);
      },
      eventsProcessed: (families) => familyTotal(families, requestsFamily),
    },
    ctx,
  );
}
