// Layout of bpf/dns.bpf.c's maps and the names of DNS codes, decoded without
// the kernel so they can be unit-tested.
import type { MapDump } from '../bpf/addon.js';

/** DNS_PORTS_MAX in dns.bpf.c: the server ports one object can match. */
export const dnsPortsMax = 8;

/** Query types exported by name (RFC 1035, 3596, 2782); dns.bpf.c folds every other into 0. */
const qtypeNames: ReadonlyMap<number, string> = new Map([
  [1, 'A'],
  [2, 'NS'],
  [5, 'CNAME'],
  [6, 'SOA'],
  [12, 'PTR'],
  [15, 'MX'],
  [16, 'TXT'],
  [28, 'AAAA'],
  [33, 'SRV'],
  [255, 'ANY'],
]);
export const qtypeLabels = [...qtypeNames.values(), 'other'] as const;

/** RCODE 0..5 (RFC 1035); the rest (6..15) is other. */
const rcodeNames = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'] as const;
export const rcodeLabels = [...rcodeNames, 'other'] as const;

export function qtypeLabel(qtype: number): string {
  return qtypeNames.get(qtype) ?? 'other';
}

export function rcodeLabel(rcode: number): string {
  return rcodeNames[rcode] ?? 'other';
}

/** struct dns_code_key: cgroup id, ifindex, code (qtype or rcode). */
export const codeKeySize = 16;
/** struct dns_workload: cgroup id, ifindex. */
export const workloadKeySize = 16;
/** struct dns_pending_value: sent_ns, then a struct dns_workload. */
export const pendingValueSize = 24;

export function decodeCode(key: Buffer): number {
  if (key.length !== codeKeySize) throw new Error(`DNS code key is ${key.length} bytes, expected ${codeKeySize}: object and agent disagree`);
  return key.readUInt16LE(12);
}

/** The ifindex of a dns_code_key or dns_workload key (0 when the cgroup id names the workload). */
export function keyIfindex(key: Buffer): number {
  return key.readUInt32LE(8);
}

/** The .rodata dns_ports array of the object: the ports, zero-padded. */
export function encodePorts(ports: readonly number[]): Buffer {
  if (ports.length === 0 || ports.length > dnsPortsMax) throw new Error(`DNS ports: got ${ports.length}, expected 1 to ${dnsPortsMax}`);
  const out = Buffer.alloc(dnsPortsMax * 2);
  ports.forEach((port, i) => out.writeUInt16LE(port, i * 2));
  return out;
}

export function encodeU32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32LE(value);
  return out;
}

export interface ExpiredQueries {
  /** Indexes in the dump of the entries sent before the cutoff. */
  indexes: number[];
  /** Unanswered queries per dns_workload key (hex). */
  byWorkload: Map<string, number>;
}

/** The dns_pending entries sent before cutoffNs (CLOCK_MONOTONIC, as bpf_ktime_get_ns). */
export function expiredQueries(dump: MapDump, cutoffNs: bigint): ExpiredQueries {
  if (dump.valueSize !== pendingValueSize) throw new Error(`dns_pending value is ${dump.valueSize} bytes, expected ${pendingValueSize}: object and agent disagree`);
  const indexes: number[] = [];
  const byWorkload = new Map<string, number>();
  for (let i = 0; i < dump.count; i++) {
    const at = i * pendingValueSize;
    if (dump.values.readBigUInt64LE(at) >= cutoffNs) continue;
    indexes.push(i);
    const workload = dump.values.toString('hex', at + 8, at + pendingValueSize);
    byWorkload.set(workload, (byWorkload.get(workload) ?? 0) + 1);
  }
  return { indexes, byWorkload };
}
