// Feeds a BlockMap from etcd: one range of the prefix, then a watch from the next revision. When etcd has
// compacted the history the watch needs, the prefix is read again (a full reset, which the route programmer
// reconciles from). The client is structural: berthd's etcd gateway client fits, and so does a test fake.
import type { BlockMap } from './block-map';

export interface FeedKeyValue {
  key: string;
  value: string;
}

export interface BlockMapEtcd {
  range(key: string, opts: { prefix: boolean }): Promise<{ kvs: FeedKeyValue[]; revision: string }>;
  watch(
    prefix: string,
    fromRevision: string,
    handlers: {
      onEvents(events: { type: 'PUT' | 'DELETE'; kv: FeedKeyValue }[], revision: string): void;
      onReset(): Promise<string>;
      onError?(err: Error): void;
    },
  ): { close(): void };
}

/** Loads the map and keeps it current; resolves once loaded. Close the returned watcher on shutdown. */
export async function followBlockMap(o: {
  etcd: BlockMapEtcd;
  map: BlockMap;
  /** The cluster prefix, e.g. /berth/v1. */
  prefix: string;
  log: (line: string) => void;
}): Promise<{ close(): void }> {
  const root = o.prefix.endsWith('/') ? o.prefix : `${o.prefix}/`;
  /** Loads the map; the revision it reflects. */
  const load = async (): Promise<string> => {
    const r = await o.etcd.range(root, { prefix: true });
    o.map.reset(r.kvs);
    return r.revision;
  };
  const loaded = await load();
  // The watch starts after the load's revision; after a reset, the gateway resumes after what onReset
  // returns (the plain revision: returning one more skipped the next write, e.g. a block's release).
  return o.etcd.watch(root, (BigInt(loaded) + 1n).toString(), {
    onEvents: (events) =>
      o.map.apply(
        events.map((e) =>
          e.type === 'PUT'
            ? { type: 'put' as const, key: e.kv.key, value: e.kv.value }
            : { type: 'delete' as const, key: e.kv.key },
        ),
      ),
    onReset: async () => {
      o.log('routes: etcd compacted the watched history; reloading the block map');
      return load();
    },
    onError: (err) => o.log(`routes: block map watch: ${err.message} (reconnecting)`),
  });
}
