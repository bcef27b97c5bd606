// berthd's routing between nodes, started beside the cluster IPAM: the block map loaded from etcd and
// watched, and the route programmer keeping the host's proto-190 routes equal to it. The daemon starts it
// after the cluster layer and passes the programmer to its server (/v1/cluster/routes, /metrics).
import { openNetlink } from '../netlink/rtnetlink';
import { BlockMap } from './block-map';
import { followBlockMap, type BlockMapEtcd } from './block-map-feed';
import { RouteProgrammer } from './route-programmer';
import type { RouteTable } from './routes';

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
  try {
    watcher = await followBlockMap({ etcd: o.etcd, map, prefix: o.prefix, log: o.log });
  } catch (err) {
    await programmer.stop();
    throw err;
  }
  return {
    programmer,
    close: async () => {
      watcher?.close();
      await programmer.stop();
    },
  };
}
