// The block map as the route programmer needs it: who owns which block, and the underlay address of every
// live node, kept from etcd's keys (design/cluster-ipam.md §3.2). Fed with a full range (`reset`, at start
// and after a watch reconnect or compaction) and then with watch events (`apply`); listeners hear about
// every change. Pure bookkeeping: the etcd client that feeds it lives elsewhere.
import { parseIp } from '../address/ip';
import { type PoolConfigValue, parseValue } from './keys';
import type { BlockOwner, ClusterView, NodeUnderlay, PoolRange } from './routes';

export interface KeyValue {
  key: string;
  /** The value as stored (JSON text); undefined for a delete. */
  value?: string;
}

export interface KeyEvent extends KeyValue {
  type: 'put' | 'delete';
}

export type ClusterKey =
  | { kind: 'block'; network: string; cidr: string }
  | { kind: 'alive'; node: string }
  | { kind: 'config'; network: string }
  | undefined;

/** Which of our keys this is: `<prefix>/nets/<net>/blocks/<addr>-<len>` or `<prefix>/nodes/<node>/alive`. */
export function parseClusterKey(prefix: string, key: string): ClusterKey {
  const root = prefix.endsWith('/') ? prefix : `${prefix}/`;
  if (!key.startsWith(root)) return undefined;
  const parts = key.slice(root.length).split('/');
  if (parts.length === 4 && parts[0] === 'nets' && parts[2] === 'blocks') {
    const name = parts[3]!;
    const dash = name.lastIndexOf('-');
    if (dash <= 0 || !/^[0-9]{1,3}$/.test(name.slice(dash + 1))) return undefined;
    return { kind: 'block', network: parts[1]!, cidr: `${name.slice(0, dash)}/${name.slice(dash + 1)}` };
  }
  if (parts.length === 3 && parts[0] === 'nodes' && parts[2] === 'alive')
    return { kind: 'alive', node: parts[1]! };
  if (parts.length === 3 && parts[0] === 'nets' && parts[2] === 'config')
    return { kind: 'config', network: parts[1]! };
  return undefined;
}

/** The ranges a network's `config` value lists (`{"pools": [["start-end", …], …]}`); [] when unreadable. */
function poolRangesOf(value: string | undefined): PoolRange[] {
  const pools = value === undefined ? undefined : parseValue<Partial<PoolConfigValue>>(value)?.pools;
  if (!Array.isArray(pools)) return [];
  return pools.flat().flatMap((r): PoolRange[] => {
    if (typeof r !== 'string') return [];
    const [start, end] = r.split('-').map((a) => parseIp(a));
    return start !== undefined && end !== undefined && start.family === end.family
      ? [{ family: start.family, start: start.value, end: end.value }]
      : [];
  });
}

function jsonObject(text: string | undefined): Record<string, unknown> | undefined {
  if (text === undefined) return undefined;
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === 'object' && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** The underlay addresses an `alive` value publishes (`underlay`, `underlay6`; either may be absent). */
export function underlayOf(value: string | undefined): string[] {
  const o = jsonObject(value);
  if (o === undefined) return [];
  return [o.underlay, o.underlay6].filter((u): u is string => typeof u === 'string' && u !== '');
}

/** A source of cluster views: what the route programmer subscribes to. */
export interface BlockMapSource {
  /** The current view; undefined until the first full load (nothing may be removed before it). */
  view(): ClusterView | undefined;
  /** Called after every change of the view; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
}

export class BlockMap implements BlockMapSource {
  private loaded = false;
  private readonly blocks = new Map<string, BlockOwner>();
  private readonly alive = new Map<string, NodeUnderlay>();
  /** Each network's pools, by its config key. */
  private readonly pools = new Map<string, { network: string; ranges: PoolRange[] }>();
  private readonly listeners = new Set<() => void>();

  constructor(private readonly prefix: string) {}

  view(): ClusterView | undefined {
    if (!this.loaded) return undefined;
    const pools = new Map<string, PoolRange[]>();
    for (const p of this.pools.values()) pools.set(p.network, p.ranges);
    return { blocks: [...this.blocks.values()], alive: [...this.alive.values()], pools };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Replaces everything with a full listing of the prefix (start, watch reconnect, compaction). */
  reset(kvs: readonly KeyValue[]): void {
    this.blocks.clear();
    this.alive.clear();
    this.pools.clear();
    for (const kv of kvs) this.put(kv);
    this.loaded = true;
    this.emit();
  }

  /** Applies watch events in order. */
  apply(events: readonly KeyEvent[]): void {
    let changed = false;
    for (const e of events) changed = (e.type === 'put' ? this.put(e) : this.remove(e.key)) || changed;
    if (changed && this.loaded) this.emit();
  }

  private put(kv: KeyValue): boolean {
    const k = parseClusterKey(this.prefix, kv.key);
    if (k === undefined) return false;
    if (k.kind === 'block') {
      const node = jsonObject(kv.value)?.node;
      if (typeof node !== 'string') return this.remove(kv.key);
      this.blocks.set(kv.key, { network: k.network, cidr: k.cidr, node });
      return true;
    }
    if (k.kind === 'config') {
      this.pools.set(kv.key, { network: k.network, ranges: poolRangesOf(kv.value) });
      return true;
    }
    this.alive.set(kv.key, { node: k.node, underlay: underlayOf(kv.value) });
    return true;
  }

  private remove(key: string): boolean {
    return this.blocks.delete(key) || this.alive.delete(key) || this.pools.delete(key);
  }

  private emit(): void {
    for (const l of this.listeners) l();
  }
}
