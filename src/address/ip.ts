// IP addresses as (family, bigint) pairs with Go's net.IP text forms: the one address type every room
// shares. Lease file names must be byte-identical to the ones host-local writes, and the bigint makes "next
// address" and "inside this prefix" plain arithmetic. Hand-written rather than on ip-address, whose ipv6
// module alone costs ~9 ms of every plugin start; ip-address is the oracle in test/address/. No Node types
// here (no Buffer): bytes are netlink's business (src/netlink/ip-bytes.ts).

export type Family = 4 | 6;

export interface Ip {
  readonly family: Family;
  readonly value: bigint;
}

export const FAMILY_BITS: Record<Family, number> = { 4: 32, 6: 128 };

function parseV4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let v = 0n;
  for (const p of parts) {
    // Go rejects leading zeros ("010") as ambiguous octal; so do we.
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

function parseV6(text: string): bigint | undefined {
  if (text.length === 0 || text.includes('%')) return undefined;
  let groups: string[];
  let tail: bigint[] = [];
  let s = text;
  // An embedded IPv4 tail ("::ffff:1.2.3.4") is two groups.
  const lastColon = s.lastIndexOf(':');
  if (s.indexOf('.', lastColon) !== -1) {
    const v4 = parseV4(s.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    tail = [v4 >> 16n, v4 & 0xffffn];
    s = s.slice(0, lastColon + 1);
    // Keep a "::" that ends the head; drop the single separator colon otherwise.
    if (!s.endsWith('::')) s = s.slice(0, -1);
  }
  const dbl = s.indexOf('::');
  if (dbl !== -1 && s.indexOf('::', dbl + 1) !== -1) return undefined;
  const want = 8 - tail.length;
  const parseGroups = (part: string): string[] => (part === '' ? [] : part.split(':'));
  if (dbl === -1) {
    groups = parseGroups(s);
    if (groups.length !== want) return undefined;
  } else {
    const head = parseGroups(s.slice(0, dbl));
    const rest = parseGroups(s.slice(dbl + 2));
    const missing = want - head.length - rest.length;
    if (missing < 1) return undefined;
    groups = [...head, ...Array<string>(missing).fill('0'), ...rest];
  }
  let v = 0n;
  for (const g of groups) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
    v = (v << 16n) | BigInt(parseInt(g, 16));
  }
  for (const t of tail) v = (v << 16n) | t;
  return v;
}

const V4_MAPPED_HIGH = 0xffffn;

/**
 * Parses an address in the family its notation says: IPv6 text stays IPv6 even when it holds an
 * IPv4-mapped address (what the kernel is told). No zone ("%eth0"). Undefined for anything else.
 */
export function parseIpAsWritten(text: string): Ip | undefined {
  if (typeof text !== 'string') return undefined;
  if (!text.includes(':')) {
    const v = parseV4(text);
    return v === undefined ? undefined : { family: 4, value: v };
  }
  const v = parseV6(text);
  return v === undefined ? undefined : { family: 6, value: v };
}

/**
 * Parses an IP the way Go's net.ParseIP + host-local's canonicalizeIP do: IPv4, IPv6, and IPv4-mapped IPv6
 * folded to IPv4 (so one address has one lease file name). Undefined for anything else.
 */
export function parseIp(text: string): Ip | undefined {
  const ip = parseIpAsWritten(text);
  if (ip?.family === 6 && ip.value >> 32n === V4_MAPPED_HIGH)
    return { family: 4, value: ip.value & 0xffffffffn };
  return ip;
}

/** Go's net.IP.String(): dotted quad, or RFC 5952 (longest run of >= 2 zero groups compressed, lowercase). */
export function formatIp(ip: Ip): string {
  if (ip.family === 4) {
    const v = Number(ip.value);
    return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((ip.value >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':');
  if (bestLen < 2) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}

export function sameIp(a: Ip, b: Ip): boolean {
  return a.family === b.family && a.value === b.value;
}
