// DNS collector: queries each workload sends and the answers it receives,
// parsed at TC on the node's interfaces (bpf/dns.bpf.c): requests by query
// type, responses by response code, query-to-answer latency (a log2
// histogram in the kernel), and queries left unanswered past the timeout.
// The kernel keeps each query in a bounded LRU until its answer; at every
// collection this module moves the ones older than the timeout into the
// timeouts map, so a timeout counts at the first collection after it expired.
import { selectKeys } from '../bpf/maps.js';
import type { BpfObject } from '../bpf/addon.js';
import type { Collector, CollectorContext } from './collector.js';
import { decodeCode, encodePorts, encodeU32, expiredQueries, keyIfindex, qtypeLabel, rcodeLabel } from './dns-decode.js';
import { TcInterfaces } from './tc-interfaces.js';
import { familyTotal, TracepointCollector, type KeyWorkloadResolver } from './tracepoint.js';

const requestsFamily = 'probepilot_dns_requests_total';
const responsesFamily = 'probepilot_dns_responses_total';

export function dnsCollector(ctx: CollectorContext): Collector {
  const { ports, timeoutSeconds, maxEntries, maxPending } = ctx.config.collectors.dns;
  const log = ctx.log.child({ collector: 'dns' });
  const interfaces = new TcInterfaces(ctx, { programs: { ingress: 'pp_dns_ingress', egress: 'pp_dns_egress' }, ifaceMap: 'dns_ifaces' }, log);

  // Keys without a cgroup name the veth of the pod that asked.
  const byInterface: KeyWorkloadResolver = {
    resolve: (key) => interfaces.workloadOf(keyIfindex(key)),
    // Departed interfaces are forgotten by interfaces.collected(), once every map was read.
    forget: () => undefined,
  };

  /** Unanswered queries past the timeout leave dns_pending and count in dns_timeouts (written by this module only). */
  const sweep = async (object: BpfObject): Promise<void> => {
    const pending = await object.readMap('dns_pending');
    const cutoff = process.hrtime.bigint() - BigInt(Math.round(timeoutSeconds * 1e9));
    const { indexes, byWorkload } = expiredQueries(pending, cutoff);
    if (indexes.length === 0) return;
    object.deleteKeys('dns_pending', selectKeys(pending, indexes));
    for (const [workload, count] of byWorkload) {
      const key = Buffer.from(workload, 'hex');
      const current = object.lookup('dns_timeouts', key);
      const value = Buffer.alloc(8);
      value.writeBigUInt64LE((current ? current.readBigUInt64LE(0) : 0n) + BigInt(count));
      object.update('dns_timeouts', key, value);
    }
  };

  const collector = new TracepointCollector(
    {
      name: 'dns',
      object: 'dns.bpf.o',
      scope: 'pod',
      attach: [],
      // Ports name what the kernel counts: maps kept under other ports start over.
      pinLayout: `ports=${ports.join(',')}`,
      views: [
        {
          map: 'dns_requests',
          keyLabels: (key) => ({ qtype: qtypeLabel(decodeCode(key)) }),
          keyWorkload: byInterface,
          fields: [0],
          families: [
            {
              descriptor: {
                name: requestsFamily,
                help: 'DNS queries a workload sent (UDP and TCP to the configured server ports, IPv4 and IPv6), by query type (other: a type not named).',
                type: 'counter',
                labelNames: ['qtype'],
              },
              value: ([n]) => n!,
            },
          ],
        },
        {
          map: 'dns_responses',
          keyLabels: (key) => ({ rcode: rcodeLabel(decodeCode(key)) }),
          keyWorkload: byInterface,
          fields: [0],
          families: [
            {
              descriptor: {
                name: responsesFamily,
                help: 'DNS answers a workload received, by response code (other: RCODE 6 to 15).',
                type: 'counter',
                labelNames: ['rcode'],
              },
              value: ([n]) => n!,
            },
          ],
        },
        {
          map: 'dns_latency',
          keyWorkload: byInterface,
          histograms: [0],
          families: [
            {
              descriptor: {
                name: 'probepilot_dns_latency_seconds',
                help: 'Time from a DNS query to its answer, matched by id and 5-tuple, as seen at TC (log2 buckets measured in the kernel).',
                type: 'histogram',
              },
              histogram: 0,
            },
          ],
        },
        {
          map: 'dns_timeouts',
          keyWorkload: byInterface,
          fields: [0],
          families: [
            {
              descriptor: {
                name: 'probepilot_dns_timeouts_total',
                help: 'DNS queries of a workload with no answer within collectors.dns.timeoutSeconds (counted at the first collection after they expired).',
                type: 'counter',
              },
              value: ([n]) => n!,
            },
          ],
        },
      ],
      beforeLoad: (object) => {
        object.setConst('dns_ports', encodePorts(ports));
        object.setConst('dns_port_count', encodeU32(ports.length));
        for (const map of ['dns_requests', 'dns_responses', 'dns_latency', 'dns_timeouts']) object.setMapMaxEntries(map, maxEntries);
        object.setMapMaxEntries('dns_pending', maxPending);
      },
      hooks: {
        attach: async (object) => interfaces.start(object),
        detach: (object) => interfaces.stop(object),
        beforeCollect: async (object) => {
          await sweep(object);
          interfaces.collected();
        },
      },
      eventsProcessed: (families) => familyTotal(families, requestsFamily) + familyTotal(families, responsesFamily),
    },
    ctx,
  );
  return Object.assign(collector, { describe: () => ({ interfaces: interfaces.describe() }) });
}
