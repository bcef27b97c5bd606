// Choosing addresses: the pure part (range set + cursor + what is taken → next candidate) and the loop that
// reserves candidates through a store session until one sticks.
import { CniError, ErrorCode } from '../cni-spec/errors';
import { type Cidr, lastOf, networkOf } from '../address/cidr';
import { type Ip, formatIp, sameIp } from '../address/ip';
import { type RangeSet, describeRangeSet, ipAtOrdinal, ordinalOf, rangeFor, rangeSetSize } from './range-set';
import type { LeaseMeta, LeaseSession } from './store';

/**
 * `round-robin` is host-local's strategy (continue after `last_reserved_ip`, so a crash-looping container
 * does not get the same address until the whole set has been used); `lowest` always takes the lowest free.
 */
export type Policy = 'round-robin' | 'lowest';

/** Inclusive interval of positions (ordinals) in a range set. */
export interface Interval {
  readonly lo: bigint;
  readonly hi: bigint;
}

/** Which positions of one range set are taken; implemented by each store (bitmap, probes, a Set). */
export interface Occupancy {
  /** First position in lo..hi (inclusive) that is not taken, or undefined when all are. */
  firstFree(lo: bigint, hi: bigint): bigint | undefined;
}

/** Positions never handed out: each range's gateway (when inside that range) and the `exclude` list. */
export function blockedOrdinals(set: RangeSet, exclude: readonly Cidr[] = []): Interval[] {
  const out: Interval[] = [];
  let base = 0n;
  for (const r of set) {
    // host-local skips a range's gateway only while iterating that same range.
    if (r.gateway.family === r.family && r.gateway.value >= r.start && r.gateway.value <= r.end) {
      const o = base + (r.gateway.value - r.start);
      out.push({ lo: o, hi: o });
    }
    for (const c of exclude) {
      if (c.ip.family !== r.family) continue;
      const lo = networkOf(c) > r.start ? networkOf(c) : r.start;
      const hi = lastOf(c) < r.end ? lastOf(c) : r.end;
      if (lo <= hi) out.push({ lo: base + (lo - r.start), hi: base + (hi - r.start) });
    }
    base += r.end - r.start + 1n;
  }
  out.sort((a, b) => (a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
  const merged: Interval[] = [];
  for (const iv of out) {
    const last = merged[merged.length - 1];
    if (last !== undefined && iv.lo <= last.hi + 1n) {
      if (iv.hi > last.hi) merged[merged.length - 1] = { lo: last.lo, hi: iv.hi };
    } else {
      merged.push(iv);
    }
  }
  return merged;
}

export function isBlocked(blocked: readonly Interval[], ordinal: bigint): boolean {
  return blocked.some((b) => ordinal >= b.lo && ordinal <= b.hi);
}

/**
 * Where the search starts: host-local begins right after the last reserved address when that address is
 * still in the set, else at the first range's start.
 */
export function startOrdinal(opts: { set: RangeSet; cursor: Ip | undefined; policy: Policy }): bigint {
  if (opts.policy === 'lowest' || opts.cursor === undefined) return 0n;
  const o = ordinalOf(opts.set, opts.cursor);
  if (o === undefined) return 0n;
  return (o + 1n) % rangeSetSize(opts.set);
}

function firstFreeBetween(
  lo: bigint,
  hi: bigint,
  blocked: readonly Interval[],
  occ: Occupancy,
): bigint | undefined {
  let from = lo;
  for (const b of blocked) {
    if (b.hi < from) continue;
    if (b.lo > hi) break;
    if (b.lo > from) {
      const f = occ.firstFree(from, b.lo - 1n);
      if (f !== undefined) return f;
    }
    from = b.hi + 1n;
    if (from > hi) return undefined;
  }
  return from <= hi ? occ.firstFree(from, hi) : undefined;
}

/**
 * The next free, unblocked position in cyclic order from `start` (start, start+1, …, size-1, 0, …,
 * start-1): the same address host-local's RangeIter would reserve first.
 */
export function nextCandidate(opts: {
  set: RangeSet;
  start: bigint;
  occupancy: Occupancy;
  blocked: readonly Interval[];
}): bigint | undefined {
  const size = rangeSetSize(opts.set);
  const a = firstFreeBetween(opts.start, size - 1n, opts.blocked, opts.occupancy);
  if (a !== undefined || opts.start === 0n) return a;
  return firstFreeBetween(0n, opts.start - 1n, opts.blocked, opts.occupancy);
}

export interface AllocateOptions {
  session: LeaseSession;
  set: RangeSet;
  /** Index of the set in the config; names host-local's `last_reserved_ip.<setId>`. */
  setId: number;
  containerId: string;
  ifname: string;
  meta: LeaseMeta;
  requested?: Ip;
  policy: Policy;
  exclude: readonly Cidr[];
}

/** The range set has no free address left (a cluster network then claims another block). */
export class RangeSetExhaustedError extends CniError {}

/** Reserves one address of the set (the requested one, or the next candidate) and returns it. */
export async function allocateFromSet(o: AllocateOptions): Promise<Ip> {
  const lease = { containerId: o.containerId, ifname: o.ifname, meta: o.meta };
  const where = describeRangeSet(o.set);
  if (o.requested !== undefined) {
    const ip = o.requested;
    const range = rangeFor(o.set, ip);
    if (range === undefined) {
      throw new CniError(
        ErrorCode.InvalidNetworkConfig,
        `requested IP address ${formatIp(ip)} is not in range set ${where}`,
      );
    }
    if (sameIp(range.gateway, ip)) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `requested ip ${formatIp(ip)} is subnet's gateway`);
    }
    const ord = ordinalOf(o.set, ip)!;
    if (isBlocked(blockedOrdinals(o.set, o.exclude), ord)) {
      throw new CniError(
        ErrorCode.InvalidNetworkConfig,
        `requested IP address ${formatIp(ip)} is excluded by the network's exclude list`,
      );
    }
    const notAvailable = (): CniError =>
      new CniError(
        ErrorCode.Internal,
        `requested IP address ${formatIp(ip)} is not available in range set ${where}`,
      );
    if (await o.session.isTaken(ip, o.set)) throw notAvailable();
    if (!(await o.session.reserve({ ...lease, ip }, o.setId))) throw notAvailable();
    return ip;
  }
  const occupancy = await o.session.occupancy(o.set);
  const blocked = blockedOrdinals(o.set, o.exclude);
  const cursor = o.policy === 'round-robin' ? await o.session.lastReserved(o.setId) : undefined;
  const start = startOrdinal({ set: o.set, cursor, policy: o.policy });
  const refused = new Set<bigint>();
  for (;;) {
    const cand = nextCandidate({ set: o.set, start, occupancy, blocked });
    if (cand === undefined) {
      throw new RangeSetExhaustedError(
        ErrorCode.Internal,
        `no IP addresses available in range set: ${where}`,
      );
    }
    const ip = ipAtOrdinal(o.set, cand);
    if (refused.has(cand)) {
      // A store whose occupancy ignores its own refusals would loop here forever.
      throw new CniError(
        ErrorCode.Internal,
        `lease store still reports ${formatIp(ip)} free after refusing it`,
      );
    }
    // A false reserve means someone outside the index holds the address; the session marks it taken.
    if (await o.session.reserve({ ...lease, ip }, o.setId)) return ip;
    refused.add(cand);
  }
}
