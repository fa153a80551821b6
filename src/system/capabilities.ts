// Which capabilities a collector needs that this process lacks, so that a
// kernel's EPERM becomes a reason naming them (the chart grants a fixed set;
// an operator who trims it, or a runtime that drops one, should be told which).
import { readFileSync } from 'node:fs';
import { isNativeError } from '../bpf/addon.js';

const capabilityBits = { CAP_NET_ADMIN: 12, CAP_SYS_PTRACE: 19, CAP_SYS_ADMIN: 21, CAP_PERFMON: 38, CAP_BPF: 39 } as const;
export type Capability = keyof typeof capabilityBits;

/** The effective set, from /proc/self/status (CapEff, hex). */
export function effectiveCapabilities(status = readFileSync('/proc/self/status', 'utf8')): bigint {
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  return hex === undefined ? 0n : BigInt(`0x${hex}`);
}

/** Of `needed`, those not effective; CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as the kernel lets it. */
export function missingCapabilities(needed: readonly Capability[], effective = effectiveCapabilities()): Capability[] {
  const has = (cap: Capability) => (effective >> BigInt(capabilityBits[cap])) & 1n;
  return needed.filter((cap) => !has(cap) && !((cap === 'CAP_BPF' || cap === 'CAP_PERFMON') && has('CAP_SYS_ADMIN')));
}

/** `reason`, plus the needed capabilities this process lacks when the kernel refused (EPERM, EACCES). */
export function withCapabilityHint(reason: string, err: unknown, needed: readonly Capability[]): string {
  if (!isNativeError(err) || (err.errno !== 1 && err.errno !== 13)) return reason;
  const missing = missingCapabilities(needed);
  return missing.length ? `${reason} (this process lacks ${missing.join(', ')})` : reason;
}
