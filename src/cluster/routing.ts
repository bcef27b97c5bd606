// berthd's routing between nodes, started beside the cluster IPAM: the block map loaded from etcd and
// watched, and the route programmer keeping the host's proto-190 routes equal to it. The daemon starts it
// after the cluster layer and passes the programmer to its server (/v1/cluster/routes, /metrics).
import { openNetlink } from '../netlink/rtnetlink';
import { BlockMap } from './block-map';
import { followBlockMap, type BlockMapEtcd } from './block-map-feed';
import { RouteProgrammer } from './route-programmer';
import type { RouteTable } from './routes';
import { detectUnderlay, underlayFromFlags, type Underlay } from './underlay';

export interface ClusterRoutingOptions {
  etcd: BlockMapEtcd;
  prefix: string;
  /** This node's name (its own blocks are on its bridge, not routed). */
  self: string;
  log: (line: string) => void;
  /** Default: an rtnetlink socket in the daemon's own namespace. */
  openTable?: () => RouteTable & { close(): void };
  tableId?: number;
  resyncMs?: number;
  /** Delay between attempts to load the block map while etcd does not answer (default 2 s). */
  retryMs?: number;
}

export interface ClusterRouting {
  programmer: RouteProgrammer;
  /** Stops watching and reconciling; the routes stay (pods keep their traffic while berthd is down). */
  close(): Promise<void>;
}

export async function startClusterRouting(o: ClusterRoutingOptions): Promise<ClusterRouting> {
  const map = new BlockMap(o.prefix);
  const programmer = new RouteProgrammer({
    source: map,
    self: o.self,
    openTable: o.openTable ?? (() => openNetlink()),
    log: o.log,
    ...(o.tableId !== undefined ? { tableId: o.tableId } : {}),
    ...(o.resyncMs !== undefined ? { resyncMs: o.resyncMs } : {}),
  });
  // Subscribed before the first load, so the first reconcile runs on the loaded map.
  programmer.start();
  let watcher: { close(): void } | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  // etcd unreachable at start only delays routing: until the map loads, the kernel's routes stay as they are.
  const follow = async (): Promise<void> => {
    try {
      const w = await followBlockMap({ etcd: o.etcd, map, prefix: o.prefix, log: o.log });
      if (closed) w.close();
      else watcher = w;
    } catch (err) {
      if (closed) return;
      o.log(`routes: cannot load the block map yet (${(err as Error).message}); retrying in 2 s`);
      retry = setTimeout(() => void follow(), o.retryMs ?? 2000);
      retry.unref();
    }
  };
  await follow();
  return {
    programmer,
    close: async () => {
      closed = true;
      if (retry !== undefined) clearTimeout(retry);
      watcher?.close();
      await programmer.stop();
    },
  };
}

/**
 * The underlay to publish: the flag values when given, else detected towards the first etcd endpoint. A
 * failed detection is logged and publishes nothing (the other nodes then hold this node's blocks).
 */
export async function resolveUnderlay(o: {
  flags: readonly string[] | undefined;
  endpoints: readonly string[];
  /** 'warn' for what leaves other nodes without routes to this one. */
  log: (line: string, level?: 'info' | 'warn') => void;
}): Promise<Underlay> {
  if (o.flags !== undefined && o.flags.length > 0) return underlayFromFlags(o.flags);
  const first = o.endpoints[0];
  if (first === undefined) return {};
  try {
    const found = await detectUnderlayTowards(first);
    const got = underlayText(found);
    o.log(
      got !== ''
        ? `routes: underlay detected: ${got}`
        : `routes: no underlay detected towards ${first} (loopback, or no stable global address there): other nodes will hold this node's blocks unrouted; set --underlay-address`,
      got !== '' ? 'info' : 'warn',
    );
    return found;
  } catch (err) {
    o.log(
      `routes: could not detect the underlay (${(err as Error).message}); set --underlay-address`,
      'warn',
    );
    return {};
  }
}

/** Detects the underlay towards `endpoint` on a netlink socket of its own. */
export async function detectUnderlayTowards(endpoint: string): Promise<Underlay> {
  const nl = openNetlink();
  try {
    return await detectUnderlay(endpoint, nl);
  } finally {
    nl.close();
  }
}

function underlayText(u: Underlay): string {
  return [u.underlay, u.underlay6].filter(Boolean).join(', ');
}

/**
 * When the start found no underlay of a family (the node's network not up yet: DHCP, a late interface, an
 * IPv6 address still in DAD), detection runs again, every `everyMs` at first and backing off to `maxEveryMs`,
 * and each time it finds a family more, `publish` puts the addresses in this node's alive key (true: now;
 * false: with the next registration, or not at all for a node that left). Otherwise the other nodes would hold
 * this node's blocks of that family unrouted until berthd restarted. Ends once both families are known, or
 * `otherFamilyForMs` (10 min) after the start once one is (a single-stack node).
 * Returns the stop.
 */
export function retryUnderlayDetection(o: {
  /** What the node publishes already. */
  have: Underlay;
  detect: () => Promise<Underlay>;
  publish: (u: Underlay) => Promise<boolean>;
  log: (line: string, level?: 'info' | 'warn') => void;
  everyMs?: number;
  maxEveryMs?: number;
  /** Once a family is known, how long to wait for the other (a single-stack node never has it). */
  otherFamilyForMs?: number;
  now?: () => number;
}): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let have: Underlay = { ...o.have };
  let every = o.everyMs ?? 5000;
  const now = o.now ?? ((): number => performance.now());
  const started = now();
  const complete = (u: Underlay): boolean => u.underlay !== undefined && u.underlay6 !== undefined;
  const done = (u: Underlay): boolean =>
    complete(u) || (underlayText(u) !== '' && now() - started >= (o.otherFamilyForMs ?? 10 * 60_000));
  const attempt = async (): Promise<void> => {
    let found: Underlay = {};
    try {
      found = await o.detect();
    } catch {
      // not yet: the next attempt tells
    }
    if (stopped) return;
    const more: Underlay = {
      ...have,
      ...(have.underlay === undefined && found.underlay !== undefined ? { underlay: found.underlay } : {}),
      ...(have.underlay6 === undefined && found.underlay6 !== undefined
        ? { underlay6: found.underlay6 }
        : {}),
    };
    if (underlayText(more) !== underlayText(have)) {
      try {
        const published = await o.publish(more);
        have = more;
        if (stopped) return;
        o.log(
          `routes: underlay detected after the start: ${underlayText(more)}; ${published ? 'published' : 'kept for the next registration'}`,
        );
      } catch (err) {
        if (stopped) return;
        o.log(`routes: could not publish the underlay (${(err as Error).message}); trying again`, 'warn');
      }
    }
    if (!stopped && !done(have)) schedule();
  };
  const schedule = (): void => {
    timer = setTimeout(() => void attempt(), every);
    timer.unref();
    every = Math.min(every * 2, o.maxEveryMs ?? 60_000);
  };
  // Both families known already: nothing to look for.
  if (!complete(have)) schedule();
  return () => {
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
  };
}
