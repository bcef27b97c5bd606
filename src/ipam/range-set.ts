// Ranges and range sets with host-local's defaults and checks, plus the ordinal numbering (the set's
// addresses in iteration order, 0..size-1) that the allocator and the occupancy bitmaps share.
import { CniError, ErrorCode } from '../cni-spec/errors';
import { withGoFieldNames } from '../cni-spec/request';
import { type Cidr, cidrContains, formatCidr, lastOf, networkOf, parseCidr } from '../address/cidr';
import { type Family, type Ip, formatIp, parseIp } from '../address/ip';

/** A canonical range: every address of `start..end` (inclusive) lies in `subnet`. */
export interface Range {
  readonly family: Family;
  /** Network address and prefix (host bits are zero). */
  readonly subnet: Cidr;
  readonly start: bigint;
  readonly end: bigint;
  /** Returned in results and skipped when iterating this range; not required to lie in the subnet. */
  readonly gateway: Ip;
}

/** One range set yields one address per ADD; its ranges form one pool, iterated in order. */
export type RangeSet = readonly Range[];

/** The config shape of a range (host-local's JSON keys). */
export interface RawRange {
  subnet?: unknown;
  rangeStart?: unknown;
  rangeEnd?: unknown;
  gateway?: unknown;
}

function invalid(msg: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg);
}

function ipKey(raw: RawRange, key: 'rangeStart' | 'rangeEnd' | 'gateway', where: string): Ip | undefined {
  const v = raw[key];
  if (v === undefined || v === null || v === '') return undefined;
  const ip = typeof v === 'string' ? parseIp(v) : undefined;
  if (ip === undefined) throw invalid(`${where}: ${key} ${JSON.stringify(v)} is not an IP address`);
  return ip;
}

/** host-local's Range.Canonicalize, with the same defaults and a few more checks (start <= end, families). */
export function canonicalizeRange(given: RawRange, where: string): Range {
  if (typeof given !== 'object' || given === null) throw invalid(`${where}: a range must be an object`);
  // Keys in any case, as host-local reads them (Go's encoding/json).
  const raw: RawRange = withGoFieldNames(given as Record<string, unknown>, [
    'subnet',
    'rangeStart',
    'rangeEnd',
    'gateway',
  ]);
  if (typeof raw.subnet !== 'string')
    throw invalid(`${where}: subnet is required (a CIDR such as 198.18.64.0/24)`);
  const subnet = parseCidr(raw.subnet);
  if (subnet === undefined) throw invalid(`${where}: subnet ${JSON.stringify(raw.subnet)} is not a CIDR`);
  const family = subnet.ip.family;
  const bits = family === 4 ? 32 : 128;
  if (subnet.prefix > bits - 2) {
    throw invalid(
      `${where}: network ${raw.subnet} too small to allocate from (a /${bits - 2} is the smallest)`,
    );
  }
  const net = networkOf(subnet);
  if (net !== subnet.ip.value) {
    throw invalid(
      `${where}: subnet ${raw.subnet} has host bits set; for a prefix of length ${subnet.prefix} the network address is ${formatIp({ family, value: net })}`,
    );
  }
  const canonical: Cidr = { ip: { family, value: net }, prefix: subnet.prefix };
  const text = formatCidr(canonical.ip, canonical.prefix);
  const sameFamily = (ip: Ip | undefined, key: string): void => {
    if (ip !== undefined && ip.family !== family) {
      throw invalid(`${where}: ${key} ${formatIp(ip)} is not of the subnet's family (IPv${family})`);
    }
  };
  const gatewayIp = ipKey(raw, 'gateway', where);
  sameFamily(gatewayIp, 'gateway');
  const startIp = ipKey(raw, 'rangeStart', where);
  sameFamily(startIp, 'rangeStart');
  const endIp = ipKey(raw, 'rangeEnd', where);
  sameFamily(endIp, 'rangeEnd');
  const start = startIp?.value ?? net + 1n;
  // host-local: IPv4 stops before the broadcast address, IPv6 runs to the subnet's last address.
  const end = endIp?.value ?? (family === 4 ? lastOf(canonical) - 1n : lastOf(canonical));
  if (startIp !== undefined && !cidrContains(canonical, startIp)) {
    throw invalid(`${where}: rangeStart ${formatIp(startIp)} not in network ${text}`);
  }
  if (endIp !== undefined && !cidrContains(canonical, endIp)) {
    throw invalid(`${where}: rangeEnd ${formatIp(endIp)} not in network ${text}`);
  }
  if (start > end) {
    throw invalid(
      `${where}: rangeStart ${formatIp({ family, value: start })} is after rangeEnd ${formatIp({ family, value: end })}`,
    );
  }
  return { family, subnet: canonical, start, end, gateway: gatewayIp ?? { family, value: net + 1n } };
}

export function rangeContains(r: Range, ip: Ip): boolean {
  return ip.family === r.family && ip.value >= r.start && ip.value <= r.end;
}

export function rangesOverlap(a: Range, b: Range): boolean {
  return a.family === b.family && a.start <= b.end && b.start <= a.end;
}

export function describeRange(r: Range): string {
  return `${formatIp({ family: r.family, value: r.start })}-${formatIp({ family: r.family, value: r.end })}`;
}

/** host-local's RangeSet.String(): "start-end,start-end". */
export function describeRangeSet(set: RangeSet): string {
  return set.map(describeRange).join(',');
}

/** Canonicalizes every range of a set; the set must be non-empty, single-family and without overlaps. */
export function canonicalizeRangeSet(raw: unknown, where: string): Range[] {
  if (!Array.isArray(raw) || raw.length === 0)
    throw invalid(`${where}: a range set must be a non-empty list of ranges`);
  const set = raw.map((r, i) => canonicalizeRange(r as RawRange, `${where} range ${i}`));
  const fam = set[0]!.family;
  if (set.some((r) => r.family !== fam)) throw invalid(`${where}: mixed address families in one range set`);
  for (let i = 0; i < set.length; i++) {
    for (let j = i + 1; j < set.length; j++) {
      if (rangesOverlap(set[i]!, set[j]!)) {
        throw invalid(`${where}: ranges ${describeRange(set[i]!)} and ${describeRange(set[j]!)} overlap`);
      }
    }
  }
  return set;
}

export function rangeSetFamily(set: RangeSet): Family {
  return set[0]!.family;
}

export function rangeSetContains(set: RangeSet, ip: Ip): boolean {
  return set.some((r) => rangeContains(r, ip));
}

export function rangeSetsOverlap(a: RangeSet, b: RangeSet): boolean {
  return a.some((ra) => b.some((rb) => rangesOverlap(ra, rb)));
}

/** The range of `set` holding `ip`. */
export function rangeFor(set: RangeSet, ip: Ip): Range | undefined {
  return set.find((r) => rangeContains(r, ip));
}

/** Number of addresses in the set (gateways included). */
export function rangeSetSize(set: RangeSet): bigint {
  return set.reduce((n, r) => n + (r.end - r.start + 1n), 0n);
}

/** Position of `ip` in the set's iteration order, or undefined when outside the set. */
export function ordinalOf(set: RangeSet, ip: Ip): bigint | undefined {
  let base = 0n;
  for (const r of set) {
    if (rangeContains(r, ip)) return base + (ip.value - r.start);
    base += r.end - r.start + 1n;
  }
  return undefined;
}

/** The address at a position of the iteration order. */
export function ipAtOrdinal(set: RangeSet, ordinal: bigint): Ip {
  let rest = ordinal;
  for (const r of set) {
    const n = r.end - r.start + 1n;
    if (rest < n) return { family: r.family, value: r.start + rest };
    rest -= n;
  }
  throw new RangeError(`ordinal ${ordinal} outside the range set ${describeRangeSet(set)}`);
}

/** The range holding a position, with the first position of that range. */
export function rangeAtOrdinal(set: RangeSet, ordinal: bigint): { range: Range; base: bigint } {
  let base = 0n;
  for (const r of set) {
    const n = r.end - r.start + 1n;
    if (ordinal < base + n) return { range: r, base };
    base += n;
  }
  throw new RangeError(`ordinal ${ordinal} outside the range set ${describeRangeSet(set)}`);
}

/** A stable identity of the set's addresses (not of its gateways), used to name per-set index files. */
export function rangeSetKey(set: RangeSet): string {
  return set.map(describeRange).join(',');
}
