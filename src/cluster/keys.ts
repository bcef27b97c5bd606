// The etcd key layout of design/cluster-ipam.md 3.2 and the JSON values stored under it.
import { blockCidrOfKeyName, blockKeyName } from '../ipam/cluster-blocks';

export const DEFAULT_PREFIX = '/berth/v1';

export class ClusterKeys {
  readonly prefix: string;

  constructor(prefix: string = DEFAULT_PREFIX) {
    this.prefix = prefix.replace(/\/+$/, '');
  }

  nodes(): string {
    return `${this.prefix}/nodes/`;
  }
  identity(node: string): string {
    return `${this.prefix}/nodes/${node}/identity`;
  }
  alive(node: string): string {
    return `${this.prefix}/nodes/${node}/alive`;
  }
  /** Written by the first daemon that saw a node's `alive` disappear: when its absence began. */
  absent(node: string): string {
    return `${this.prefix}/nodes/${node}/absent`;
  }
  forgotten(node: string): string {
    return `${this.prefix}/nodes/${node}/forgotten`;
  }
  nets(): string {
    return `${this.prefix}/nets/`;
  }
  config(net: string): string {
    return `${this.prefix}/nets/${net}/config`;
  }
  blocks(net: string): string {
    return `${this.prefix}/nets/${net}/blocks/`;
  }
  block(net: string, cidr: string): string {
    return `${this.prefix}/nets/${net}/blocks/${blockKeyName(cidr)}`;
  }

  /** `nodes/<n>/<what>` → [n, what]. */
  parseNodeKey(key: string): { node: string; what: string } | undefined {
    const rest = key.startsWith(this.nodes()) ? key.slice(this.nodes().length) : undefined;
    if (rest === undefined) return undefined;
    const i = rest.indexOf('/');
    return i === -1 ? undefined : { node: rest.slice(0, i), what: rest.slice(i + 1) };
  }

  /** `nets/<net>/blocks/<addr>-<len>` → [net, cidr]. */
  parseBlockKey(key: string): { net: string; cidr: string } | undefined {
    const rest = key.startsWith(this.nets()) ? key.slice(this.nets().length) : undefined;
    if (rest === undefined) return undefined;
    const parts = rest.split('/');
    if (parts.length !== 3 || parts[1] !== 'blocks') return undefined;
    const cidr = blockCidrOfKeyName(parts[2]!);
    return cidr === undefined ? undefined : { net: parts[0]!, cidr };
  }

  /** The block keys of a range of `nets()` whose value names `node` as owner (any uid), with their claim. */
  blocksNamedBy<KV extends { key: string; value: string }>(
    kvs: readonly KV[],
    node: string,
  ): { kv: KV; net: string; cidr: string; claim: BlockValue }[] {
    return kvs.flatMap((kv) => {
      const k = this.parseBlockKey(kv.key);
      const claim = k === undefined ? undefined : parseValue<BlockValue>(kv.value);
      return k !== undefined && claim?.node === node ? [{ kv, ...k, claim }] : [];
    });
  }
}

export interface IdentityValue {
  uid: string;
  since: string;
  bootId: string;
  /** The node's own settings, so that `berth node forget` elsewhere knows when it has fenced itself. */
  horizonSeconds: number;
  ttlSeconds: number;
}

export interface AliveValue {
  uid: string;
  bootId: string;
  pid: number;
  version: string;
  since: string;
  /** Where other nodes route this node's blocks (issue 15): IPv4 and IPv6 underlay addresses. */
  underlay?: string;
  underlay6?: string;
}

export interface BlockValue {
  node: string;
  uid: string;
  claimedAt: string;
}

export interface AbsentValue {
  since: string;
  by: string;
}

export interface ForgottenValue {
  at: string;
  by: string;
  uid: string;
  bootId: string;
  blocks: string[];
}

export interface PoolConfigValue {
  pools: string[][];
  blockSize4: number;
  blockSize6: number;
  schema: 1;
}

export function parseValue<T>(text: string): T | undefined {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as T) : undefined;
  } catch {
    return undefined;
  }
}
