// TCP collector: connection life cycle (outcomes, durations), connect
// latency, smoothed RTT, retransmits and resets per workload (bpf/tcp.bpf.c), attributed to the
// socket's own cgroup.
import { histogramSize } from '../metrics/histogram.js';
import type { Collector, CollectorContext } from './collector.js';
import { familyTotal, TracepointCollector } from './tracepoint.js';

/** Offsets in struct tcp_stats_value. */
const valueLayout = {
  openedClient: 0,
  openedServer: 8,
  leftEstablished: 16,
  retransmits: 24,
  resetsSent: 32,
  resetsReceived: 40,
  connectLatency: 48,
  rtt: 48 + histogramSize,
  refused: 48 + 2 * histogramSize,
  timedOut: 56 + 2 * histogramSize,
  reset: 64 + 2 * histogramSize,
  duration: 72 + 2 * histogramSize,
} as const;

export function tcpCollector(ctx: CollectorContext): Collector {
  const { maxEntries, maxConnecting, maxEstablished } = ctx.config.collectors.tcp;
  return new TracepointCollector(
    {
      name: 'tcp',
      object: 'tcp.bpf.o',
      scope: 'container',
      attach: [
        { program: 'pp_tcp_set_state', tracepoint: 'sock:inet_sock_set_state' },
        { program: 'pp_tcp_retransmit', tracepoint: 'tcp:tcp_retransmit_skb' },
        { program: 'pp_tcp_retransmit_synack', tracepoint: 'tcp:tcp_retransmit_synack' },
        { program: 'pp_tcp_send_reset', tracepoint: 'tcp:tcp_send_reset' },
        { program: 'pp_tcp_receive_reset', tracepoint: 'tcp:tcp_receive_reset' },
      ],
      views: [
        {
          map: 'tcp_stats',
          fields: [
            valueLayout.openedClient,
            valueLayout.openedServer,
            valueLayout.leftEstablished,
            valueLayout.retransmits,
            valueLayout.resetsSent,
            valueLayout.resetsReceived,
            valueLayout.refused,
            valueLayout.timedOut,
            valueLayout.reset,
          ],
          histograms: [valueLayout.connectLatency, valueLayout.rtt, valueLayout.duration],
          families: [
            {
              descriptor: {
                name: 'probepilot_tcp_connections_opened_total',
                help: 'TCP connections a workload established: side="client" for its connects, side="server" for connections it accepted.',
                type: 'counter',
                labelNames: ['side'],
              },
              split: [
                { labels: { side: 'client' }, value: ([client]) => client! },
                { labels: { side: 'server' }, value: ([, server]) => server! },
              ],
            },
            {
              descriptor: { name: 'probepilot_tcp_connections_active', help: 'TCP connections of a workload in ESTABLISHED state.', type: 'gauge' },
              value: ([client, server, left]) => client! + server! - left!,
            },
            {
              descriptor: { name: 'probepilot_tcp_retransmits_total', help: 'TCP segments a workload\'s sockets retransmitted.', type: 'counter' },
              value: (fields) => fields[3]!,
            },
            {
              descriptor: {
                name: 'probepilot_tcp_resets_total',
                help: 'TCP resets a workload\'s sockets sent and received; resets that answer a segment no socket wanted are the node\'s.',
                type: 'counter',
                labelNames: ['direction'],
              },
              split: [
                { labels: { direction: 'sent' }, value: (fields) => fields[4]! },
                { labels: { direction: 'received' }, value: (fields) => fields[5]! },
              ],
            },
            {
              descriptor: {
                name: 'probepilot_tcp_connect_latency_seconds',
                help: 'Time from SYN sent to ESTABLISHED for a workload\'s connects (log2 buckets measured in the kernel).',
                type: 'histogram',
              },
              histogram: 0,
            },
            {
              descriptor: {
                name: 'probepilot_tcp_rtt_seconds',
                help: 'Smoothed RTT of a workload\'s TCP connections when they leave ESTABLISHED (log2 buckets).',
                type: 'histogram',
              },
              histogram: 1,
            },
            {
              descriptor: {
                name: 'probepilot_tcp_connections_total',
                help: 'How a workload\'s TCP connections went: established (handshake completed, either side), refused (its SYN answered by a reset), timeout (its connect closed without an answer), reset (an established connection ended by a reset, sent or received).',
                type: 'counter',
                labelNames: ['outcome'],
              },
              split: [
                { labels: { outcome: 'established' }, value: ([client, server]) => client! + server! },
                { labels: { outcome: 'refused' }, value: (fields) => fields[6]! },
                { labels: { outcome: 'timeout' }, value: (fields) => fields[7]! },
                { labels: { outcome: 'reset' }, value: (fields) => fields[8]! },
              ],
            },
            {
              descriptor: {
                name: 'probepilot_tcp_connection_duration_seconds',
                help: 'How long a workload\'s TCP connections lived, from ESTABLISHED to CLOSE (log2 buckets measured in the kernel).',
                type: 'histogram',
              },
              histogram: 2,
            },
          ],
        },
      ],
      beforeLoad: (object) => {
        object.setMapMaxEntries('tcp_stats', maxEntries);
        object.setMapMaxEntries('tcp_connecting', maxConnecting);
        object.setMapMaxEntries('tcp_established', maxEstablished);
      },
      eventsProcessed: (families) =>
        ['probepilot_tcp_connections_opened_total', 'probepilot_tcp_retransmits_total', 'probepilot_tcp_resets_total'].reduce(
          (total, name) => total + familyTotal(families, name),
          0,
        ),
    },
    ctx,
  );
}
