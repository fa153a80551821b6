// IP addresses and CIDR prefixes as the kernel sees them: raw network-order
// bytes (4 for IPv4, 16 for IPv6).
import { isIPv4, isIPv6 } from 'node:net';

export interface IpAddress {
  family: 4 | 6;
  bytes: Uint8Array;
}

export interface IpPrefix extends IpAddress {
  /** Significant leading bits of bytes; the rest are zero. */
  length: number;
}

function ipv4Bytes(text: string): Uint8Array {
  return Uint8Array.from(text.split('.').map(Number));
}

/** The address's bytes; undefined when text is no IP address. A zone (fe80::1%eth0) is ignored. */
export function parseIp(text: string): IpAddress | undefined {
  const address = text.split('%')[0]!;
  if (isIPv4(address)) return { family: 4, bytes: ipv4Bytes(address) };
  if (!isIPv6(address)) return undefined;
  const bytes = new Uint8Array(16);
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two groups.
  let text6 = address;
  const lastColon = text6.lastIndexOf(':');
  if (text6.includes('.', lastColon)) {
    const v4 = ipv4Bytes(text6.slice(lastColon + 1));
    text6 = `${text6.slice(0, lastColon + 1)}${((v4[0]! << 8) | v4[1]!).toString(16)}:${((v4[2]! << 8) | v4[3]!).toString(16)}`;
  }
  const [head, tail] = text6.split('::') as [string, string | undefined];
  const groups = (part: string | undefined) => (part ? part.split(':').map((g) => parseInt(g, 16)) : []);
  const front = groups(head);
  const back = groups(tail);
  const all = tail === undefined ? front : [...front, ...new Array<number>(8 - front.length - back.length).fill(0), ...back];
  all.forEach((group, i) => {
    bytes[i * 2] = group >> 8;
    bytes[i * 2 + 1] = group & 0xff;
  });
  return { family: 6, bytes };
}

/** "10.0.0.0/8" or "fd00::/64"; host bits are cleared. Undefined when text is no prefix. */
export function parsePrefix(text: string): IpPrefix | undefined {
  const slash = text.indexOf('/');
  const address = parseIp(slash < 0 ? text : text.slice(0, slash));
  if (!address) return undefined;
  const max = address.family === 4 ? 32 : 128;
  const lengthText = slash < 0 ? String(max) : text.slice(slash + 1);
  const length = Number(lengthText);
  if (!/^\d{1,3}$/.test(lengthText) || length > max) return undefined;
  const bytes = Uint8Array.from(address.bytes);
  for (let bit = length; bit < max; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { family: address.family, bytes, length };
}

/** Text form of raw address bytes: dotted IPv4, or IPv6 with the longest run of zero groups as "::" (RFC 5952). */
export function formatIp(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return Array.from(bytes.subarray(0, 4)).join('.');
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[i * 2]! << 8) | bytes[i * 2 + 1]!);
  let bestStart = -1;
  let bestLength = 1; // a single zero group stays "0"
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (part: number[]) => part.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

/** Whether address lies in prefix (same family; an IPv4-mapped IPv6 address is not an IPv4 one). */
export function prefixContains(prefix: IpPrefix, address: IpAddress): boolean {
  if (prefix.family !== address.family) return false;
  const whole = prefix.length >> 3;
  for (let i = 0; i < whole; i++) if (prefix.bytes[i] !== address.bytes[i]) return false;
  const rest = prefix.length & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (address.bytes[whole]! & mask) === prefix.bytes[whole];
}
