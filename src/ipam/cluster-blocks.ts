// Cluster networks seen from the IPAM room: how a pool (one range set of the config) divides into blocks,
// the range set formed by the blocks a node owns, the `.berth/cluster.json` record of those blocks (written
// by berthd, read by berth-ipam on the files when the daemon is down), and the contract the handlers use to
// get more blocks. Claiming itself (etcd) lives in src/cluster/ and is loaded by berthd only.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { type Cidr, formatCidr, parseCidr } from '../address/cidr';
import { type Family, type Ip, FAMILY_BITS } from '../address/ip';
import type { IpamConfig } from './config';
import { BERTH_DIR, ensureBerthDirs, leaseDirPaths, readRegularFile } from './lease-dir';
import type { Range, RangeSet } from './range-set';

/** `ipam.cluster` of a network config: its presence makes the network a cluster network. */
export interface ClusterSettings {
  /** Prefix length of an IPv4 block (default 26: 64 addresses). */
  blockSize4: number;
  /** Prefix length of an IPv6 block (default 122: 64 addresses). */
  blockSize6: number;
}

export function parseClusterSettings(raw: unknown): ClusterSettings | undefined {
  if (raw === undefined || raw === null || raw === false) return undefined;
  const bad = (msg: string): CniError => new CniError(ErrorCode.InvalidNetworkConfig, `ipam.cluster: ${msg}`);
  if (raw === true) return { blockSize4: 26, blockSize6: 122 };
  if (typeof raw !== 'object' || Array.isArray(raw)) throw bad('must be an object such as {"blockSize": 26}');
  const o = raw as Record<string, unknown>;
  const size = (key: string, def: number, min: number, max: number): number => {
    const v = o[key] ?? def;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw bad(`${key} must be a prefix length from ${min} to ${max}, got ${JSON.stringify(o[key])}`);
    }
    return v;
  };
  const [min4, max4] = BLOCK_SIZE_LIMITS[4];
  const [min6, max6] = BLOCK_SIZE_LIMITS[6];
  return { blockSize4: size('blockSize', 26, min4, max4), blockSize6: size('blockSize6', 122, min6, max6) };
}

/** The block sizes `cluster` takes, per family (a block is never larger than the smallest of them). */
export const BLOCK_SIZE_LIMITS = { 4: [16, 30], 6: [96, 126] } as const;

/**
 * The first and the last block-aligned address of the blocks of `size` addresses that cover a range: a
 * range starts after its subnet's network address, and its first block below it.
 */
export function blockSpan(start: bigint, end: bigint, size: bigint): { first: bigint; last: bigint } {
  return { first: start - (start % size), last: end - (end % size) + size - 1n };
}

/** The prefix length of blocks of a range: the configured size, or the range's subnet when that is smaller. */
export function blockPrefixOf(r: Range, s: ClusterSettings): number {
  const want = r.family === 4 ? s.blockSize4 : s.blockSize6;
  return Math.max(want, r.subnet.prefix);
}

export interface PoolBlock {
  /** Canonical text `10.22.0.64/26`. */
  cidr: string;
  /** Index of the block in the pool's block order (ranges in order, blocks ascending in each). */
  index: bigint;
  /** The block's addresses that belong to the pool, with the pool range's subnet and gateway. */
  range: Range;
}

/** A pool's blocks, addressed by index: an IPv6 pool can have 2^58 of them, so nothing is enumerated. */
export class PoolBlocks {
  private readonly parts: { range: Range; prefix: number; first: bigint; count: bigint; size: bigint }[] = [];
  readonly count: bigint;
  readonly family: Family;

  constructor(
    readonly set: RangeSet,
    settings: ClusterSettings,
  ) {
    let total = 0n;
    this.family = set[0]!.family;
    for (const range of set) {
      const prefix = blockPrefixOf(range, settings);
      const size = 1n << BigInt(FAMILY_BITS[range.family] - prefix);
      const { first, last } = blockSpan(range.start, range.end, size);
      const count = (last + 1n - first) / size;
      this.parts.push({ range, prefix, first, count, size });
      total += count;
    }
    this.count = total;
  }

  /** Addresses in a block of the first range (64 for the defaults). */
  get blockAddresses(): number {
    return Number(this.parts[0]!.size);
  }

  at(index: bigint): PoolBlock {
    let rest = index;
    for (const p of this.parts) {
      if (rest < p.count) {
        const net = p.first + rest * p.size;
        const start = net > p.range.start ? net : p.range.start;
        const lastOfBlock = net + p.size - 1n;
        const end = lastOfBlock < p.range.end ? lastOfBlock : p.range.end;
        return {
          cidr: formatCidr({ family: p.range.family, value: net }, p.prefix),
          index,
          range: { family: p.range.family, subnet: p.range.subnet, start, end, gateway: p.range.gateway },
        };
      }
      rest -= p.count;
    }
    throw new RangeError(`block ${index} outside the pool (${this.count} blocks)`);
  }

  /** The block with this CIDR, or undefined when it is not a block of the pool. */
  find(cidr: string): PoolBlock | undefined {
    const c = parseCidr(cidr);
    if (c === undefined) return undefined;
    let base = 0n;
    for (const p of this.parts) {
      if (c.ip.family === p.range.family && c.prefix === p.prefix) {
        const off = c.ip.value - p.first;
        if (off >= 0n && off % p.size === 0n && off / p.size < p.count) return this.at(base + off / p.size);
      }
      base += p.count;
    }
    return undefined;
  }

  /**
   * The index to probe after block `index` when every block of its range from there to the one holding
   * address `last` is to be passed over: the first block of that range starting past `last`, or the next
   * range's first block. Always past `index`.
   */
  nextIndexPast(index: bigint, last: bigint): bigint {
    let base = 0n;
    for (const p of this.parts) {
      if (index < base + p.count) {
        const k = last < p.first ? 0n : (last - p.first) / p.size + 1n;
        const next = base + (k < p.count ? k : p.count);
        return next > index ? next : index + 1n;
      }
      base += p.count;
    }
    return index + 1n;
  }

  /** The block holding an address of the pool. */
  blockOf(ip: Ip): PoolBlock | undefined {
    let base = 0n;
    for (const p of this.parts) {
      if (ip.family === p.range.family && ip.value >= p.range.start && ip.value <= p.range.end) {
        return this.at(base + (ip.value - p.first) / p.size);
      }
      base += p.count;
    }
    return undefined;
  }
}

/** The owned blocks as a range set (ascending): what the allocator iterates on a cluster network. */
export function ownedRangeSet(pool: PoolBlocks, cidrs: Iterable<string>): Range[] {
  const blocks = [...cidrs]
    .map((c) => pool.find(c))
    .filter((b): b is PoolBlock => b !== undefined)
    .sort((a, b) => (a.index < b.index ? -1 : a.index > b.index ? 1 : 0));
  return blocks.map((b) => b.range);
}

// ---- .berth/cluster.json ----

export interface LocalBlock {
  cidr: string;
  createRevision: string;
  state: 'owned' | 'releasing';
}

export interface ClusterRecord {
  clusterId: string;
  node: string;
  uid: string;
  blocks: LocalBlock[];
  /** Wall-clock time of the last answer from etcd (the plugin's fence when the daemon is down). */
  lastContact: string;
  /** Seconds without etcd after which the node stops allocating (the daemon's --ownership-horizon). */
  horizonSeconds: number;
  /** Set when etcd says this node was forgotten or its identity belongs to another machine. */
  fenced?: string;
}

export function clusterRecordPath(dataDir: string, network: string): string {
  return join(dataDir, network, BERTH_DIR, 'cluster.json');
}

export function readClusterRecord(dataDir: string, network: string): ClusterRecord | undefined {
  let text: string;
  try {
    text = readRegularFile(clusterRecordPath(dataDir, network)).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CniError(
      ErrorCode.IoFailure,
      `cannot read ${clusterRecordPath(dataDir, network)}: ${String(err)}`,
    );
  }
  try {
    const o = JSON.parse(text) as ClusterRecord;
    if (!Array.isArray(o.blocks)) throw new Error('no blocks list');
    return o;
  } catch (err) {
    throw new CniError(
      ErrorCode.IoFailure,
      `${clusterRecordPath(dataDir, network)} is damaged (${(err as Error).message}); berthd rewrites it from etcd`,
    );
  }
}

/**
 * Temp file, fsync, rename, fsync of the directory: a reader sees the old record or the new one. Every step
 * runs on libuv's pool, so berthd's event loop (and every call it serves) never waits on the disk. One writer
 * per network at a time (ClusterNetwork.writeRecord serialises them): the temp name is per process.
 */
export async function writeClusterRecord(
  dataDir: string,
  network: string,
  rec: ClusterRecord,
): Promise<void> {
  const target = clusterRecordPath(dataDir, network);
  const paths = leaseDirPaths(dataDir, network);
  await fs.promises.mkdir(paths.dir, { recursive: true, mode: 0o755 });
  ensureBerthDirs(paths, []);
  const dir = paths.berth;
  const tmp = `${target}.${process.pid}.tmp`;
  const file = await fs.promises.open(
    tmp,
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW,
    0o600,
  );
  try {
    await file.writeFile(`${JSON.stringify(rec)}\n`);
    await file.sync();
  } finally {
    await file.close();
  }
  await fs.promises.rename(tmp, target);
  const dirHandle = await fs.promises.open(dir, 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

// ---- what the handlers need ----

/**
 * How the handlers reach a cluster network's blocks. berthd implements it on etcd (src/cluster/); berth-ipam
 * on the files implements it on cluster.json alone (no claims).
 */
export interface ClusterAllocator {
  /**
   * The owned part of each range set of `conf` (same order; empty when no block is owned). Called under the
   * network's lock, so a block being released is never handed out. Throws code 11 when the node is fenced.
   */
  ownedRangeSets(conf: IpamConfig): Promise<Range[][]>;
  /**
   * No owned address of range set `setId` is free: get another block (waiting at most the claim timeout).
   * Throws code 11 saying why when none can be claimed now, or the pool's exhaustion error.
   */
  needMore(conf: IpamConfig, setId: number, sinceMs: number): Promise<void>;
  /** An ADD took these addresses: keep the reserve of free addresses (claims in the background). */
  afterAdd(conf: IpamConfig, ips: readonly Ip[]): void;
  /** A DEL or GC gave these addresses back (never waits for etcd). */
  afterRelease(conf: IpamConfig, ips: readonly Ip[]): void;
  /** STATUS found no free owned address in some range set: why no claim is possible, or undefined. */
  claimImpossibleReason(conf: IpamConfig): Promise<string | undefined>;
  /**
   * Throws (code 7, or 11) when `conf` cannot be served as the network's config (its dataDir or pools
   * changed): called by ADD and STATUS before the store is opened, so a refused data dir is not made.
   */
  checkConfig?(conf: IpamConfig): void;
}

/** How far a recorded last contact may be ahead of the clock (steps of a few seconds at boot) before it fences. */
const CONTACT_AHEAD_TOLERANCE_MS = 60_000;

/**
 * The fence of a last contact with etcd recorded later than the clock reads now: the clock stepped back since
 * (an RTC behind, a boot before NTP), so how long the node has been cut off cannot be told from it. Without
 * this the age came out negative and never passed the horizon.
 */
export function contactAheadFence(node: string, lastContact: string, now: Date): string | undefined {
  const last = Date.parse(lastContact);
  if (Number.isNaN(last) || last - now.getTime() <= CONTACT_AHEAD_TOLERANCE_MS) return undefined;
  return `node ${node}'s last contact with etcd (${lastContact}) is later than this clock (${now.toISOString()}): the clock stepped back, so how long the node has been cut off cannot be told; it allocates again once berthd has registered it with etcd`;
}

/** cluster.json's fence for berth-ipam on the files: past the horizon since etcd last answered, nothing is handed out. */
export function recordFenceReason(rec: ClusterRecord, now: Date): string | undefined {
  if (rec.fenced !== undefined) return rec.fenced;
  const last = Date.parse(rec.lastContact);
  if (Number.isNaN(last)) return undefined;
  const ahead = contactAheadFence(rec.node, rec.lastContact, now);
  if (ahead !== undefined) return ahead;
  const age = (now.getTime() - last) / 1000;
  if (age > rec.horizonSeconds) {
    return `node ${rec.node} has not reached etcd for ${Math.round(age)} s (ownership horizon ${rec.horizonSeconds} s): it no longer allocates, even in its own blocks`;
  }
  return undefined;
}

/** berth-ipam without the daemon: the blocks of cluster.json, never a claim. */
export function filesClusterAllocator(now: () => Date): ClusterAllocator {
  return {
    ownedRangeSets: (conf) => {
      const rec = readClusterRecord(conf.dataDir, conf.network);
      if (rec === undefined) return Promise.resolve(conf.rangeSets.map(() => []));
      const fence = recordFenceReason(rec, now());
      if (fence !== undefined) throw new CniError(ErrorCode.TryAgainLater, fence);
      const owned = rec.blocks.filter((b) => b.state === 'owned').map((b) => b.cidr);
      return Promise.resolve(
        conf.rangeSets.map((set) => ownedRangeSet(new PoolBlocks(set, conf.cluster!), owned)),
      );
    },
    needMore: (conf, setId) =>
      Promise.reject(
        new CniError(
          ErrorCode.TryAgainLater,
          `no free address in the blocks this node owns in range set ${setId} of cluster network ${conf.network}, and berthd (which claims blocks from etcd) is not running`,
        ),
      ),
    afterAdd: () => undefined,
    afterRelease: () => undefined,
    claimImpossibleReason: () => Promise.resolve('berthd, which claims blocks from etcd, is not running'),
  };
}

/** The CIDR text of a block for etcd keys: `10.22.0.64-26` (only `/` separates key parts). */
export function blockKeyName(cidr: string): string {
  return cidr.replace('/', '-');
}

export function blockCidrOfKeyName(name: string): string | undefined {
  const i = name.lastIndexOf('-');
  if (i === -1) return undefined;
  const cidr = `${name.slice(0, i)}/${name.slice(i + 1)}`;
  const c: Cidr | undefined = parseCidr(cidr);
  return c === undefined ? undefined : formatCidr(c.ip, c.prefix);
}
