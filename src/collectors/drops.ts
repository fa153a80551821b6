// Drops collector: packets the kernel dropped (skb:kfree_skb), by the
// kernel's drop reason and the workload the packet belonged to — its
// socket's cgroup, else the workload living in the network namespace the
// packet was in, else the node (bpf/drops.bpf.c). Reason names come from the
// running kernel's BTF, never from numbers compiled in here.
import { CollectorUnavailableError, type Collector, type CollectorContext } from './collector.js';
import { decodeDropKey, DropReasonNames } from './drops-decode.js';
import { familyTotal, TracepointCollector, type KeyWorkloadResolver } from './tracepoint.js';

const dropsFamily = 'probepilot_packet_drops_total';

function u32(value: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(value);
  return buf;
}

export function dropsCollector(ctx: CollectorContext): Collector {
  const { maxEntries } = ctx.config.collectors.drops;
  const { netns } = ctx.identity;
  // Read from the kernel at start; until then no entry exists to name.
  let reasons = new DropReasonNames({});

  // Keys without a socket cgroup name the network namespace the packet was in.
  const namespaceWorkload: KeyWorkloadResolver = {
    resolve: (key) => {
      const { netnsInode } = decodeDropKey(key);
      const found = netnsInode === 0 ? undefined : netns.resolveInode(netnsInode);
      return found && { path: found.workload.cgroupPath, gone: found.gone };
    },
    forget: (key) => netns.forgetInode(decodeDropKey(key).netnsInode),
  };

  return new TracepointCollector(
    {
      name: 'drops',
      object: 'drops.bpf.o',
      scope: 'pod',
      attach: [{ program: 'pp_drops_kfree_skb', tracepoint: 'skb:kfree_skb' }],
      views: [
        {
          map: 'drop_counts',
          keyLabels: (key) => ({ reason: reasons.label(decodeDropKey(key).reason) }),
          keyWorkload: namespaceWorkload,
          fields: [0],
          families: [
            {
              descriptor: {
                name: dropsFamily,
                help: 'Packets the kernel dropped, by drop reason (enum skb_drop_reason, SKB_DROP_REASON_ prefix removed; unknown for numbers this kernel does not name), attributed to the socket\'s workload, else the workload of the network namespace the packet was in, else the node.',
                type: 'counter',
                labelNames: ['reason'],
              },
              value: ([drops]) => drops!,
            },
          ],
        },
      ],
      beforeLoad: (object) => {
        const enumerators = ctx.addon.btfEnum('skb_drop_reason');
        // Before 5.17 kfree_skb has no reason and also fires for packets that were not dropped: counting it would mislead.
        if (!enumerators) throw new CollectorUnavailableError('the kernel has no enum skb_drop_reason in its BTF: packet drop reasons need Linux >= 5.17');
        reasons = new DropReasonNames(enumerators);
        object.setConst('consumed_reason', u32(reasons.consumed ?? 0xffff_ffff));
        object.setMapMaxEntries('drop_counts', maxEntries);
      },
      eventsProcessed: (families) => familyTotal(families, dropsFamily),
    },
    ctx,
  );
}
