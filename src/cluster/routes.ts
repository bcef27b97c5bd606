// Routes between nodes of a cluster network (host-gw style): every block another node owns is reached
// through that node's underlay address. berthd keeps these routes in the host namespace under its own
// routing protocol number, so it can list, repair and remove exactly its own routes and never touches
// anyone else's (the operator's, the kernel's, a routing daemon's).
import { formatCidr, networkIp, parseCidr } from '../address/cidr';
import { type Ip, FAMILY_BITS, formatIp, parseIp } from '../address/ip';
import { NetlinkError } from '../netlink/errors';
import { RTPROT, RT_TABLE } from '../netlink/rtnl-codec';
import type { Netlink, Route } from '../netlink/types';
import { BLOCK_SIZE_LIMITS, blockSpan } from '../ipam/cluster-blocks';

/** RTPROT_BERTH (190): `ip route show proto 190` lists berthd's routes; see rtnl-codec.ts. */
export const BERTH_ROUTE_PROTOCOL = RTPROT.BERTH;

/** A claimed block, as the block map says: `nets/<network>/blocks/<addr>-<len>` → `{"node"}`. */
export interface BlockOwner {
  network: string;
  /** The block, e.g. 198.19.0.64/26 or fd00:b::1c0/122. */
  cidr: string;
  node: string;
}

/** What the liveness key says of a node: its underlay addresses (one per family at most). */
export interface NodeUnderlay {
  node: string;
  /** Addresses other nodes send this node's pod traffic to (from `alive`'s `underlay`/`underlay6`). */
  underlay: readonly string[];
}

/** One range of a network's pools (`nets/<network>/config`), as addresses. */
export interface PoolRange {
  family: 4 | 6;
  start: bigint;
  end: bigint;
}

/** The cluster as one snapshot: blocks with owners, and the underlay of nodes that are alive now. */
export interface ClusterView {
  blocks: readonly BlockOwner[];
  alive: readonly NodeUnderlay[];
  /**
   * Each network's pools: a block is routed only inside them (a key anyone with etcd access can write must
   * not route the API server, a /32 or the default route to some node). The block map always sets it.
   */
  pools?: ReadonlyMap<string, readonly PoolRange[]>;
}

/** A block key no route is made for, and why (its route, if berthd had made one, goes). */
export interface RefusedBlock {
  dst: string;
  node: string;
  network: string;
  reason: string;
}

function blockProblem(cidr: string, network: string, pools: ClusterView['pools']): string | undefined {
  const c = parseCidr(cidr);
  if (c === undefined) return 'not a prefix';
  // Blocks are of the configured size, or of a pool's subnet when that is smaller: never larger than this.
  const min = BLOCK_SIZE_LIMITS[c.ip.family][0];
  if (c.prefix < min) return `a /${c.prefix} is larger than any block (/${min})`;
  const first = networkIp(c).value;
  if (first !== c.ip.value) return 'not a network address';
  if (pools === undefined) return undefined;
  const size = 1n << BigInt(FAMILY_BITS[c.ip.family] - c.prefix);
  const inside = (pools.get(network) ?? []).some((r) => {
    if (r.family !== c.ip.family) return false;
    const span = blockSpan(r.start, r.end, size);
    return span.first <= first && first + size - 1n <= span.last;
  });
  return inside ? undefined : `outside the pools of network ${network}`;
}

/** One route berthd wants: `dst via via` (proto 190). */
export interface DesiredRoute {
  dst: string;
  via: string;
  node: string;
  network: string;
}

/** A block berthd cannot route, and why (its kernel route, if any, is left as it is). */
export interface HeldBlock {
  dst: string;
  node: string;
  network: string;
  reason: 'underlay unknown' | 'no underlay of this family' | 'underlay shared with another node';
}

export interface DesiredRoutes {
  routes: DesiredRoute[];
  held: HeldBlock[];
  /** Block keys that are no block of their network's pools: never routed. */
  refused: RefusedBlock[];
  /**
   * The nodes that publish (or, lapsed, last published) each underlay address: a held block's route via
   * another node's address is stale (the block moved), not the owner's to keep.
   */
  publishedBy?: ReadonlyMap<string, readonly string[]>;
}

/** A CIDR in one canonical text (network address, RFC 5952), so etcd's and the kernel's forms compare. */
export function canonicalCidr(text: string): string | undefined {
  const c = parseCidr(text);
  return c === undefined ? undefined : formatCidr(networkIp(c), c.prefix);
}

/**
 * The routes this node should have: one per block owned by another node, via that node's underlay address
 * of the block's family (an IPv4 block may go via an IPv6 underlay, RFC 5549; the kernel offers no IPv6
 * route via an IPv4 next hop). Ownership decides, not liveness: a node whose lease lapsed (its daemon
 * restarting, a partition) still has pods in its blocks, so its routes stay, via the last underlay seen
 * (`lastKnown`). A block whose owner's underlay was never seen is held: its kernel route is left alone.
 */
export function desiredRoutes(
  view: ClusterView,
  self: string,
  lastKnown: ReadonlyMap<string, readonly string[]> = new Map(),
): DesiredRoutes {
  // Each node's addresses, parsed once: a live node's from its alive key, a lapsed one's as last seen.
  const underlayOf = new Map<string, Ip[]>();
  const parsed = (addrs: readonly string[]): Ip[] => addrs.flatMap((a) => parseIp(a) ?? []);
  for (const [node, addrs] of lastKnown) underlayOf.set(node, parsed(addrs));
  for (const n of view.alive) underlayOf.set(n.node, parsed(n.underlay));
  const live = new Set(view.alive.map((n) => n.node));
  const holdersAt = new Map<string, string[]>();
  for (const [node, ips] of underlayOf)
    for (const ip of ips) holdersAt.set(formatIp(ip), [...(holdersAt.get(formatIp(ip)) ?? []), node]);
  // An address two nodes publish (a copied --underlay-address, a cloned machine) cannot tell which node a
  // packet is for: neither node's blocks go through it, rather than half of them to the wrong node. A live
  // node's address is its own: a lapsed node's last address that a live node now publishes is not used;
  // one that only lapsed nodes held is shared when two did (clones restarting together).
  const sharedFor = (node: string, addr: string): boolean => {
    const holders = holdersAt.get(addr) ?? [];
    const liveHolders = holders.filter((h) => live.has(h));
    if (liveHolders.length === 0) return holders.length > 1;
    return live.has(node) ? liveHolders.length > 1 : liveHolders.some((h) => h !== node);
  };
  const routes: DesiredRoute[] = [];
  const held: HeldBlock[] = [];
  const refused: RefusedBlock[] = [];
  const seen = new Set<string>();
  for (const b of view.blocks) {
    if (b.node === self) continue;
    const dst = canonicalCidr(b.cidr);
    if (dst === undefined) continue;
    const problem = blockProblem(b.cidr, b.network, view.pools);
    if (problem !== undefined) {
      refused.push({ dst, node: b.node, network: b.network, reason: problem });
      continue;
    }
    if (seen.has(dst)) continue;
    seen.add(dst);
    const family = dst.includes(':') ? 6 : 4;
    const underlay = underlayOf.get(b.node);
    if (underlay === undefined || underlay.length === 0) {
      held.push({ dst, node: b.node, network: b.network, reason: 'underlay unknown' });
      continue;
    }
    // The owner's address of the block's family, else (IPv4 block) its IPv6 one; the first not shared.
    const candidates = [
      ...underlay.filter((u) => u.family === family),
      ...(family === 4 ? underlay.filter((u) => u.family === 6) : []),
    ].map(formatIp);
    if (candidates.length === 0) {
      held.push({ dst, node: b.node, network: b.network, reason: 'no underlay of this family' });
      continue;
    }
    const via = candidates.find((c) => !sharedFor(b.node, c));
    if (via === undefined) {
      held.push({ dst, node: b.node, network: b.network, reason: 'underlay shared with another node' });
      continue;
    }
    routes.push({ dst, via, node: b.node, network: b.network });
  }
  routes.sort((a, b) => (a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : 0));
  return { routes, held, refused, publishedBy: holdersAt };
}

/** The verbs of the kernel room a reconcile needs (a fake stands in for it in unit tests). */
export type RouteTable = Pick<Netlink, 'listRoutes' | 'addRoute' | 'replaceRoute' | 'delRoute'>;

export interface RouteError {
  dst: string;
  op: 'add' | 'replace' | 'delete' | 'list';
  message: string;
}

export interface ReconcileOutcome {
  added: string[];
  replaced: string[];
  removed: string[];
  unchanged: number;
  /** A route of another owner holds the destination: berthd's is not installed (and theirs not touched). */
  conflicts: string[];
  errors: RouteError[];
}

export interface ReconcileOptions {
  table: RouteTable;
  desired: DesiredRoutes;
  /** Routing table id (default main, 254). */
  tableId?: number;
}

/** berthd's routes as the kernel has them (proto 190, one table, both families). */
export async function kernelRoutes(table: RouteTable, tableId: number = RT_TABLE.MAIN): Promise<Route[]> {
  return table.listRoutes({ protocol: BERTH_ROUTE_PROTOCOL, table: tableId });
}

function sameAddress(a: string | undefined, b: string): boolean {
  if (a === undefined) return false;
  const x = parseIp(a);
  const y = parseIp(b);
  return x !== undefined && y !== undefined && x.family === y.family && x.value === y.value;
}

/**
 * Makes the kernel's proto-190 routes equal to `desired`: adds the missing, replaces those with another
 * next hop, deletes those no longer wanted (and duplicates of one destination), leaves held blocks as they
 * are. Only routes with berthd's protocol are ever deleted or replaced; an add that finds another owner's
 * route of the same destination and metric is reported as a conflict. Every route is tried; failures are
 * returned, not thrown, so one bad route does not stop the others.
 */
export async function reconcileRoutes(opts: ReconcileOptions): Promise<ReconcileOutcome> {
  const tableId = opts.tableId ?? RT_TABLE.MAIN;
  const out: ReconcileOutcome = {
    added: [],
    replaced: [],
    removed: [],
    unchanged: 0,
    conflicts: [],
    errors: [],
  };
  let present: Route[];
  try {
    present = await kernelRoutes(opts.table, tableId);
  } catch (err) {
    out.errors.push({ dst: '*', op: 'list', message: (err as Error).message });
    return out;
  }
  const want = new Map(opts.desired.routes.map((r) => [r.dst, r]));
  const heldFor = new Map(opts.desired.held.map((h) => [h.dst, h.node]));
  // A held block's route is left alone (its owner's address may be unknown here since a restart), unless
  // its next hop is an address only other nodes publish: the block moved, and the route is the old owner's.
  const heldRoute = (dst: string, r: Route): boolean => {
    const owner = heldFor.get(dst);
    if (owner === undefined) return false;
    const gw = r.gateway === undefined ? undefined : parseIp(r.gateway);
    const holders = gw === undefined ? [] : (opts.desired.publishedBy?.get(formatIp(gw)) ?? []);
    return holders.length === 0 || holders.includes(owner);
  };
  const kept = new Map<string, Route>();
  // Destinations whose route has more than one next hop (a multipath route, listed once per hop): IPv4
  // deletes only by the first hop, so the route is replaced whole by the one wanted instead.
  const multipath = new Set<string>();
  const base = { protocol: BERTH_ROUTE_PROTOCOL, table: tableId };
  const attempt = async (dst: string, op: RouteError['op'], fn: () => Promise<void>): Promise<boolean> => {
    try {
      await fn();
      return true;
    } catch (err) {
      out.errors.push({ dst, op, message: (err as Error).message });
      return false;
    }
  };

  for (const r of present) {
    const dst = canonicalCidr(r.dst) ?? r.dst;
    const duplicate = kept.has(dst);
    if (!duplicate && (want.has(dst) || heldRoute(dst, r))) {
      kept.set(dst, r);
      continue;
    }
    const del = {
      ...base,
      dst,
      ...(r.gateway !== undefined ? { gateway: r.gateway } : {}),
      ...(r.priority !== undefined ? { priority: r.priority } : {}),
    };
    let gone = false;
    const ok = await attempt(dst, 'delete', async () => {
      try {
        await opts.table.delRoute(del);
      } catch (err) {
        if (!(err instanceof NetlinkError && err.code === 'ESRCH')) throw err;
        // Gone meanwhile (what we wanted), or a next hop of a multipath route IPv4 cannot delete alone.
        gone = true;
      }
    });
    if (ok && gone && duplicate) multipath.add(dst);
    else if (ok) out.removed.push(dst);
  }

  for (const r of opts.desired.routes) {
    const have = kept.get(r.dst);
    if (have !== undefined && sameAddress(have.gateway, r.via) && !multipath.has(r.dst)) {
      out.unchanged++;
      continue;
    }
    if (have !== undefined) {
      // Ours with another next hop: replace in place (same destination, table and metric: ours).
      const route = {
        ...base,
        dst: r.dst,
        gateway: r.via,
        ...(have.priority !== undefined ? { priority: have.priority } : {}),
      };
      if (await attempt(r.dst, 'replace', () => opts.table.replaceRoute(route))) out.replaced.push(r.dst);
      continue;
    }
    try {
      await opts.table.addRoute({ ...base, dst: r.dst, gateway: r.via });
      out.added.push(r.dst);
    } catch (err) {
      if (err instanceof NetlinkError && err.code === 'EEXIST') out.conflicts.push(r.dst);
      else out.errors.push({ dst: r.dst, op: 'add', message: (err as Error).message });
    }
  }
  return out;
}

/** One line of `berth cluster routes`: what berthd wants for a block and what the kernel has. */
export interface RouteStatusEntry {
  dst: string;
  node: string | undefined;
  network: string | undefined;
  /** The next hop berthd wants (undefined: held, or stale). */
  via: string | undefined;
  /** The next hop of the kernel's proto-190 route (undefined: none). */
  kernelVia: string | undefined;
  /**
   * ok: the kernel agrees; missing: no kernel route; wrong-via: another next hop; stale: a proto-190 route
   * berthd no longer wants; held: berthd leaves the kernel as it is (see reason); duplicate: several
   * proto-190 routes for one destination.
   */
  state: 'ok' | 'missing' | 'wrong-via' | 'stale' | 'held' | 'duplicate';
  reason?: string;
}

/** Compares what berthd wants with what the kernel has, route by route (for the CLI and CHECK-like views). */
export function compareRoutes(desired: DesiredRoutes, present: readonly Route[]): RouteStatusEntry[] {
  const byDst = new Map<string, Route[]>();
  for (const r of present) {
    const dst = canonicalCidr(r.dst) ?? r.dst;
    byDst.set(dst, [...(byDst.get(dst) ?? []), r]);
  }
  const out: RouteStatusEntry[] = [];
  for (const d of desired.routes) {
    const k = byDst.get(d.dst) ?? [];
    byDst.delete(d.dst);
    const state =
      k.length > 1
        ? 'duplicate'
        : k.length === 0
          ? 'missing'
          : sameAddress(k[0]!.gateway, d.via)
            ? 'ok'
            : 'wrong-via';
    out.push({ dst: d.dst, node: d.node, network: d.network, via: d.via, kernelVia: k[0]?.gateway, state });
  }
  for (const h of desired.held) {
    const k = byDst.get(h.dst) ?? [];
    byDst.delete(h.dst);
    out.push({
      dst: h.dst,
      node: h.node,
      network: h.network,
      via: undefined,
      kernelVia: k[0]?.gateway,
      state: 'held',
      reason: h.reason,
    });
  }
  for (const [dst, k] of byDst) {
    for (const r of k)
      out.push({
        dst,
        node: undefined,
        network: undefined,
        via: undefined,
        kernelVia: r.gateway,
        state: 'stale',
      });
  }
  return out.sort((a, b) => (a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : 0));
}
