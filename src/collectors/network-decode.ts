// Layout of bpf/net.bpf.c's maps, decoded without the kernel so it can be
// unit-tested.
import type { MapDump } from '../bpf/addon.js';
import { sumPerCpuU64 } from '../bpf/maps.js';

export const directions = ['ingress', 'egress'] as const;
export const protocols = ['other', 'tcp', 'udp', 'icmp'] as const;
export type Direction = (typeof directions)[number];
export type Protocol = (typeof protocols)[number];

/** enum attribution in net.bpf.c */
export const Attribution = { peerWorkload: 0, socket: 1 } as const;
export type AttributionKind = (typeof Attribution)[keyof typeof Attribution];

export const trafficKeySize = 16;
export const trafficValueSize = 16;

export interface TrafficEntry {
  /** Index in the dump, to select its key later. */
  index: number;
  cgroupId: bigint;
  ifindex: number;
  direction: Direction;
  protocol: Protocol;
  family: 0 | 4 | 6;
  bytes: number;
  packets: number;
}

/** Decodes entry i of a net_traffic dump (the key size is checked once, here). */
export function trafficDecoder(dump: MapDump, cpus: number): (index: number) => TrafficEntry {
  if (dump.keySize !== trafficKeySize) throw new Error(`net_traffic key is ${dump.keySize} bytes, expected ${trafficKeySize}: object and agent disagree`);
  const stride = dump.valueSize / cpus;
  return (i) => {
    const k = i * trafficKeySize;
    const family = dump.keys[k + 14];
    return {
      index: i,
      cgroupId: dump.keys.readBigUInt64LE(k),
      ifindex: dump.keys.readUInt32LE(k + 8),
      direction: directions[dump.keys[k + 12]!] ?? 'ingress',
      protocol: protocols[dump.keys[k + 13]!] ?? 'other',
      family: family === 4 || family === 6 ? family : 0,
      bytes: sumPerCpuU64(dump, i, 0, stride, cpus),
      packets: sumPerCpuU64(dump, i, 8, stride, cpus),
    };
  };
}

export function decodeTraffic(dump: MapDump, cpus: number): TrafficEntry[] {
  const at = trafficDecoder(dump, cpus);
  return Array.from({ length: dump.count }, (_, i) => at(i));
}

export function encodeIfaceConfig(attribution: AttributionKind, l3Offset: number): Buffer {
  return Buffer.from([attribution, l3Offset, 0, 0]);
}

export function encodeIfindex(ifindex: number): Buffer {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(ifindex);
  return key;
}

const ARPHRD_ETHER = 1;
const ARPHRD_LOOPBACK = 772;

/** Where the IP header starts in the skb TC hands us: after the MAC header on Ethernet-like devices, at 0 on L3 devices. */
export function l3OffsetFor(hwType: number): number {
  return hwType === ARPHRD_ETHER || hwType === ARPHRD_LOOPBACK ? 14 : 0;
}

/** struct flow_key and struct traffic_value in net.bpf.c. */
export const flowKeySize = 32;

/** enum peer_class in net.bpf.c; configured CIDR names are numbered from firstNamed. */
export const PeerClass = { world: 0, pod: 1, host: 2, node: 3, firstNamed: 4 } as const;

export interface FlowEntry {
  index: number;
  cgroupId: bigint;
  ifindex: number;
  direction: Direction;
  peerClass: number;
  /** "<family>:<hex of the 16 address bytes>" for pod peers (see peerAddressId), "" for the others. */
  peerAddress: string;
  bytes: number;
  packets: number;
}

/** Decodes entry i of a net_flows dump (the key size is checked once, here). */
export function flowDecoder(dump: MapDump, cpus: number): (index: number) => FlowEntry {
  if (dump.keySize !== flowKeySize) throw new Error(`net_flows key is ${dump.keySize} bytes, expected ${flowKeySize}: object and agent disagree`);
  const stride = dump.valueSize / cpus;
  return (i) => {
    const k = i * flowKeySize;
    const peerClass = dump.keys.readUInt16LE(k + 14);
    const family = dump.keys[k + 13]!;
    return {
      index: i,
      cgroupId: dump.keys.readBigUInt64LE(k),
      ifindex: dump.keys.readUInt32LE(k + 8),
      direction: directions[dump.keys[k + 12]!] ?? 'ingress',
      peerClass,
      peerAddress: peerClass === PeerClass.pod ? peerAddressId(family, dump.keys.subarray(k + 16, k + 32)) : '',
      bytes: sumPerCpuU64(dump, i, 0, stride, cpus),
      packets: sumPerCpuU64(dump, i, 8, stride, cpus),
    };
  };
}

export function decodeFlows(dump: MapDump, cpus: number): FlowEntry[] {
  const at = flowDecoder(dump, cpus);
  return Array.from({ length: dump.count }, (_, i) => at(i));
}

/** A stable id for an address, the same whether it came from the kernel or from text. */
export function peerAddressId(family: number, address: Uint8Array): string {
  return `${family}:${Buffer.from(address).toString('hex')}`;
}

/** Key of net_peer_addresses: struct peer_address. */
export function encodePeerAddress(family: 4 | 6, address: Uint8Array): Buffer {
  const key = Buffer.alloc(20);
  key[0] = family;
  key.set(address, 4);
  return key;
}

/** Key of net_peer_cidrs: struct peer_prefix, whose prefix also covers the family byte. */
export function encodePeerPrefix(family: 4 | 6, address: Uint8Array, prefixLength: number): Buffer {
  const key = Buffer.alloc(24);
  key.writeUInt32LE(8 + prefixLength, 0);
  key[4] = family;
  key.set(address, 5);
  return key;
}

export function encodePeerClass(peerClass: number): Buffer {
  const value = Buffer.alloc(2);
  value.writeUInt16LE(peerClass);
  return value;
}

/** struct conn_key and struct conn_value in net.bpf.c (the 5-tuple flow table). */
export const connKeySize = 56;
export const connValueSize = 56;

/** Bits of a TCP header's flags byte. */
const tcpFlagBits = { fin: 0x01, syn: 0x02, rst: 0x04, psh: 0x08, ack: 0x10, urg: 0x20, ece: 0x40, cwr: 0x80 } as const;
export type TcpFlagName = keyof typeof tcpFlagBits;

export function tcpFlagNames(bits: number): TcpFlagName[] {
  return (Object.keys(tcpFlagBits) as TcpFlagName[]).filter((name) => bits & tcpFlagBits[name]);
}

export interface ConnEntry {
  index: number;
  cgroupId: bigint;
  ifindex: number;
  family: 4 | 6;
  /** The IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, …). */
  ipProtocol: number;
  localAddress: Uint8Array;
  localPort: number;
  remoteAddress: Uint8Array;
  remotePort: number;
  /** CLOCK_MONOTONIC ns, as bpf_ktime_get_ns and process.hrtime.bigint() read it. */
  firstSeenNs: bigint;
  lastSeenNs: bigint;
  bytes: Record<Direction, number>;
  packets: Record<Direction, number>;
  tcpFlags: Record<Direction, number>;
  /** Direction of the first packet seen: egress when the workload opened the flow. */
  openedBy: Direction;
}

/** Decodes entry i of a net_conns dump (the sizes are checked once, here). */
export function connDecoder(dump: MapDump): (index: number) => ConnEntry {
  if (dump.keySize !== connKeySize || dump.valueSize !== connValueSize) {
    throw new Error(`net_conns entries are ${dump.keySize}+${dump.valueSize} bytes, expected ${connKeySize}+${connValueSize}: object and agent disagree`);
  }
  return (i) => {
    const k = i * connKeySize;
    const v = i * connValueSize;
    const family = dump.keys[k + 12] === 6 ? 6 : 4;
    const addressLength = family === 4 ? 4 : 16;
    return {
      index: i,
      cgroupId: dump.keys.readBigUInt64LE(k),
      ifindex: dump.keys.readUInt32LE(k + 8),
      family,
      ipProtocol: dump.keys[k + 13]!,
      // Ports are in network byte order in the key.
      localPort: dump.keys.readUInt16BE(k + 14),
      remotePort: dump.keys.readUInt16BE(k + 16),
      localAddress: dump.keys.subarray(k + 20, k + 20 + addressLength),
      remoteAddress: dump.keys.subarray(k + 36, k + 36 + addressLength),
      firstSeenNs: dump.values.readBigUInt64LE(v),
      lastSeenNs: dump.values.readBigUInt64LE(v + 8),
      bytes: { ingress: Number(dump.values.readBigUInt64LE(v + 16)), egress: Number(dump.values.readBigUInt64LE(v + 24)) },
      packets: { ingress: Number(dump.values.readBigUInt64LE(v + 32)), egress: Number(dump.values.readBigUInt64LE(v + 40)) },
      tcpFlags: { ingress: dump.values[v + 48]!, egress: dump.values[v + 49]! },
      openedBy: directions[dump.values[v + 50]!] ?? 'ingress',
    };
  };
}

/** A TCP flow the peers have finished with: a reset either way, or a FIN each way. */
export function connFinished(entry: Pick<ConnEntry, 'ipProtocol' | 'tcpFlags'>): boolean {
  if (entry.ipProtocol !== 6) return false;
  const { ingress, egress } = entry.tcpFlags;
  return ((ingress | egress) & tcpFlagBits.rst) !== 0 || (ingress & egress & tcpFlagBits.fin) !== 0;
}

/** enum tcp_flag in net.bpf.c. */
export const tcpControlFlags = ['syn', 'fin', 'rst'] as const;

export const tcpFlagKeySize = 16;

export interface TcpFlagEntry {
  index: number;
  cgroupId: bigint;
  ifindex: number;
  direction: Direction;
  flag: (typeof tcpControlFlags)[number];
  segments: number;
}

/** Decodes entry i of a net_tcp_flags dump. */
export function tcpFlagDecoder(dump: MapDump, cpus: number): (index: number) => TcpFlagEntry {
  if (dump.keySize !== tcpFlagKeySize) throw new Error(`net_tcp_flags key is ${dump.keySize} bytes, expected ${tcpFlagKeySize}: object and agent disagree`);
  const stride = dump.valueSize / cpus;
  return (i) => {
    const k = i * tcpFlagKeySize;
    return {
      index: i,
      cgroupId: dump.keys.readBigUInt64LE(k),
      ifindex: dump.keys.readUInt32LE(k + 8),
      direction: directions[dump.keys[k + 12]!] ?? 'ingress',
      flag: tcpControlFlags[dump.keys[k + 13]!] ?? 'syn',
      segments: sumPerCpuU64(dump, i, 0, stride, cpus),
    };
  };
}
