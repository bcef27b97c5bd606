// One cluster network on this node: the pools of its config, the blocks this node owns (etcd says so, and
// `.berth/cluster.json` records them for berth-ipam on the files), claims of more blocks with one etcd txn
// that also checks the node's liveness lease, the background claims that keep a reserve so ADDs do not wait,
// and the release of blocks that stayed empty.
//
// Invariant: the blocks used locally ⊆ the blocks etcd says this node owns. A claim is written to
// cluster.json only after its txn committed; a release marks the block `releasing` (under the network's lock,
// after checking it is empty) before the txn that deletes it.
import { CniError, ErrorCode } from '../cni-spec/errors';
import { type Family, type Ip, formatIp } from '../address/ip';
import { lastOf, networkOf, parseCidr } from '../address/cidr';
import {
  type ClusterRecord,
  type ClusterSettings,
  type LocalBlock,
  PoolBlocks,
  ownedRangeSet,
  readClusterRecord,
  writeClusterRecord,
} from '../ipam/cluster-blocks';
import { type IpamConfig, normalDataDir } from '../ipam/config';
import { type Range, describeRangeSet } from '../ipam/range-set';
import type { LeaseStore } from '../ipam/store';
import { EtcdUnavailableError, type KeyValue, type TxnOp, type Watcher } from './etcd-gateway';
import { type BlockValue, type PoolConfigValue, parseValue } from './keys';
import type { ClusterNode } from './node';
import type { ClusterStats } from './stats';

/** Pause between claims while etcd elects a leader (an election takes 1–2 s with etcd's defaults). */
const CLAIM_RETRY_MS = 200;

export interface NetworkSettings {
  claimTimeoutMs: number;
  /** A block empty at two checks at least this far apart is released (0: at the next check). */
  blockReleaseAfterMs: number;
  /** Blocks kept per pool even when empty. */
  minBlocks: number;
  /** Most blocks one claim txn takes. */
  maxBlocksPerClaim: number;
  /** How long the largest burst is remembered for the reserve (checks are ~1 s apart; default 60 s). */
  reserveWindowMs: number;
}

interface Owned {
  setId: number;
  createRevision: string;
  modRevision: string;
  state: 'owned' | 'releasing';
  /** Monotonic ms of the first check that found it empty (undefined: in use at the last check). */
  emptySince?: number;
  /** The block's addresses that belong to the pool (PoolBlock.range). */
  range: Range;
  /** Addresses of the block that can be handed out (gateway excluded). */
  usable: number;
  used: number;
}

interface Claimed {
  node: string;
  uid: string;
}

/** A claimed block's addresses. */
export interface Span {
  family: Family;
  first: bigint;
  last: bigint;
}

function overlaps(span: Span, family: Family, start: bigint, end: bigint): boolean {
  return span.family === family && span.first <= end && span.last >= start;
}

/**
 * The pool config value this node writes to etcd and compares with (design 3.2): the pools and each family's
 * block size. For the first pool's family it is the prefix of that pool's first block (the block size, or
 * the range's subnet when that is smaller), as builds before this one recorded it; they recorded no other
 * family (`legacy`: a value they wrote is taken as agreeing when it is exactly what they would have written
 * for this config, see ClusterNetwork.foreignLayout). For another family it is the configured block size.
 */
export function poolConfigValues(
  pools: readonly PoolBlocks[],
  sizes: ClusterSettings,
): { current: string; legacy: string } {
  const first = pools[0];
  const c = first?.at(0n).cidr;
  const firstPrefix = c === undefined ? 0 : Number(c.slice(c.indexOf('/') + 1));
  const value = (otherFamily: boolean): string => {
    const sizeOf = (f: Family): number =>
      first?.family === f
        ? firstPrefix
        : otherFamily && pools.some((p) => p.family === f)
          ? f === 4
            ? sizes.blockSize4
            : sizes.blockSize6
          : 0;
    return JSON.stringify({
      pools: pools.map((p) => describeRangeSet(p.set).split(',')),
      blockSize4: sizeOf(4),
      blockSize6: sizeOf(6),
      schema: 1,
    } satisfies PoolConfigValue);
  };
  return { current: value(true), legacy: value(false) };
}

/** "pools [...] in blocks /26 (IPv4), /122 (IPv6)" of a pool config value, for messages. */
function describePoolConfig(v: PoolConfigValue | undefined): string {
  const sizes = [
    v?.blockSize4 ? `/${v.blockSize4} (IPv4)` : '',
    v?.blockSize6 ? `/${v.blockSize6} (IPv6)` : '',
  ].filter((s) => s !== '');
  return `pools ${JSON.stringify(v?.pools)}${sizes.length > 0 ? ` in blocks ${sizes.join(', ')}` : ''}`;
}

function usableOf(r: Range): number {
  const n = Number(r.end - r.start + 1n);
  return r.gateway.value >= r.start && r.gateway.value <= r.end ? n - 1 : n;
}

/** FNV-1a of the node name: where its search for a free block starts, so nodes do not all collide at block 0. */
function nameHash(name: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const c of Buffer.from(name, 'utf8')) {
    h ^= BigInt(c);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h;
}

/**
 * What of a config decides a cluster network's blocks: its range sets and block sizes. A call whose config
 * differs from the one a network was built from is not served from it (ClusterIpam.network).
 */
export function poolKeyOf(conf: IpamConfig): string {
  const c = conf.cluster;
  // Only the block sizes of the families the pools have: blockSize6 of an IPv4 network decides nothing.
  const families = new Set(conf.rangeSets.flatMap((set) => set.map((r) => r.family)));
  const v4 = families.has(4) ? ` blocks /${c?.blockSize4}` : '';
  const v6 = families.has(6) ? ` blocks /${c?.blockSize6}` : '';
  return `${conf.rangeSets.map(describeRangeSet).join(' ; ')}${v4}${v6}`;
}

/** After a sync found etcd unreachable, how long ADDs use cluster.json's blocks without trying again. */
const SYNC_QUIET_MS = 5_000;

export class ClusterNetwork {
  readonly name: string;
  readonly dataDir: string;
  readonly pools: PoolBlocks[];
  private readonly blockSizes: ClusterSettings;
  private readonly owned = new Map<string, Owned>();
  /** Every claimed block of the network (any node), from a range and the watch. */
  private readonly claimed = new Map<string, Claimed>();
  /**
   * Claimed blocks inside the pools that are not blocks of this node's layout: another node cuts the pools
   * into blocks of another size (a network whose etcd value an older build wrote, which did not record the
   * second family's size). Empty normally. No block overlapping one is claimed here.
   */
  private readonly foreignLayout = new Map<string, Span>();
  private synced = false;
  /** etcd's pool config of the network matched this node's (or was written from it) at a sync. */
  agreedWithEtcd = false;
  /** The config's pools and block sizes the network was built from (see poolKeyOf). */
  readonly poolKey: string;
  /** close() was called (daemon stop): a sync still on its way opens no watch. */
  private closed = false;
  private syncing: Promise<void> | undefined;
  private watcher: Watcher | undefined;
  private readonly inFlight = new Map<number, Promise<void>>();
  private readonly waiting = new Map<number, number>();
  /** Growth of the leases in the owned blocks between two checks (about a second), over the last minute. */
  private readonly growth: number[] = [];
  /** Leases counted at the last check. */
  private usedAtCheck = 0;
  private lastRecordContact = 0;
  /** The fence the last cluster.json write carried: a change (fenced, lifted) is written at the next check. */
  private lastRecordFence: string | undefined;
  /** The last cluster.json write asked for (settled, never rejects), and the one not started yet. */
  private recordWritten: Promise<void> = Promise.resolve();
  private recordQueued: Promise<void> | undefined;
  /** cluster.json writes asked for and not settled yet. */
  private recordsPending = 0;
  private backgroundFailedAt = -Infinity;
  lastError: { message: string; at: number } | undefined;
  private readonly clock: () => number;

  constructor(
    readonly node: ClusterNode,
    conf: IpamConfig,
    private readonly store: () => LeaseStore,
    private readonly settings: NetworkSettings,
    private readonly stats: ClusterStats,
    clock?: () => number,
  ) {
    this.name = conf.network;
    this.dataDir = normalDataDir(conf.dataDir);
    this.poolKey = poolKeyOf(conf);
    this.blockSizes = conf.cluster!;
    this.pools = conf.rangeSets.map((set) => new PoolBlocks(set, this.blockSizes));
    this.clock = clock ?? (() => performance.now());
    let rec: ReturnType<typeof readClusterRecord>;
    try {
      rec = readClusterRecord(this.dataDir, this.name);
    } catch (err) {
      // Damaged (a torn write on a filesystem without its guarantees, a hand edit): as if absent. The first
      // sync adopts this node's blocks from etcd and writes it anew; until then nothing is allocated.
      node.o.log.log('warn', 'cluster: cluster.json unreadable; rebuilt from etcd', {
        network: this.name,
        error: (err as Error).message,
      });
      rec = undefined;
    }
    if (rec !== undefined && rec.node === node.name && rec.uid === node.uid) {
      node.inheritContact(rec.lastContact);
      if (rec.fenced !== undefined) node.inheritFence(rec.fenced);
      for (const b of rec.blocks) this.adoptLocal(b);
    }
  }

  private poolOf(cidr: string): { setId: number; range: Range } | undefined {
    for (const [setId, p] of this.pools.entries()) {
      const b = p.find(cidr);
      if (b !== undefined) return { setId, range: b.range };
    }
    return undefined;
  }

  private adoptLocal(b: LocalBlock): void {
    const where = this.poolOf(b.cidr);
    // A block outside today's pools is never used for new addresses (its leases stay until DEL).
    if (where === undefined) return;
    this.owned.set(b.cidr, {
      setId: where.setId,
      createRevision: b.createRevision,
      modRevision: b.createRevision,
      state: b.state,
      range: where.range,
      usable: usableOf(where.range),
      used: 0,
    });
  }

  /** The owned blocks (not being released) of each pool, as range sets. */
  ownedRangeSets(): Range[][] {
    const fence = this.node.fenceReason();
    if (fence !== undefined) {
      this.stats.inc('berthd_cluster_adds_failed_total', 'ADDs refused by the cluster layer.', {
        network: this.name,
        reason: 'fenced',
      });
      throw new CniError(ErrorCode.TryAgainLater, fence);
    }
    return this.pools.map((pool, setId) =>
      ownedRangeSet(
        pool,
        [...this.owned.entries()].filter(([, o]) => o.setId === setId && this.serving(o)).map(([c]) => c),
      ),
    );
  }

  ownedBlocks(): { cidr: string; setId: number; state: string; used: number; usable: number }[] {
    return [...this.owned.entries()].map(([cidr, o]) => ({
      cidr,
      setId: o.setId,
      state: o.state,
      used: o.used,
      usable: o.usable,
    }));
  }

  claimedBlocks(): Map<string, Claimed> {
    return this.claimed;
  }

  record(): ClusterRecord {
    return {
      clusterId: this.node.keys.prefix,
      node: this.node.name,
      uid: this.node.uid,
      blocks: [...this.owned.entries()].map(([cidr, o]) => ({
        cidr,
        createRevision: o.createRevision,
        state: o.state,
      })),
      lastContact: this.node.lastContactWall(),
      horizonSeconds: this.node.o.horizonSeconds,
      ...(this.node.recordedFence() !== undefined ? { fenced: this.node.recordedFence()! } : {}),
    };
  }

  /**
   * Writes cluster.json with the state as it is when the write starts (off the event loop, see
   * writeClusterRecord). Writes never overlap: calls made while one is on its way share the next one, so a
   * burst of changes costs at most two writes. Resolves once a write that started after the call is on disk;
   * await it before telling etcd anything the record must already say (a block being released).
   */
  writeRecord(): Promise<void> {
    if (this.recordQueued !== undefined) return this.recordQueued;
    const write = async (): Promise<void> => {
      this.recordQueued = undefined;
      const contact = this.node.lastContact();
      const record = this.record();
      await writeClusterRecord(this.dataDir, this.name, record);
      this.lastRecordContact = contact;
      this.lastRecordFence = record.fenced;
    };
    const queued = this.recordWritten.then(write);
    this.recordQueued = queued;
    this.recordWritten = queued.catch(() => undefined);
    this.recordsPending++;
    void this.recordWritten.then(() => this.recordsPending--);
    return queued;
  }

  /**
   * A sync, a claim or a cluster.json write is on its way: the network cannot be replaced by another built
   * from a new config now (both would write cluster.json, and an old sync could still put its pools in etcd).
   */
  get busy(): boolean {
    return this.syncing !== undefined || this.inFlight.size > 0 || this.recordsPending > 0;
  }

  /** writeRecord() from a caller that cannot wait (a watch event): a failure is logged; the next write retries. */
  private writeRecordLater(): void {
    this.writeRecord().catch((err: unknown) =>
      this.node.o.log.log('warn', 'cluster: cannot write cluster.json', {
        network: this.name,
        error: String(err),
      }),
    );
  }

  /** Resolves when no cluster.json write is on its way (daemon stop). */
  recordsWritten(): Promise<void> {
    return this.recordWritten;
  }

  /**
   * Reconciles with etcd once reachable: the pool config (all nodes must agree), the claimed blocks, adoption
   * of every block etcd says is ours (a claim whose answer was lost), dropping local blocks etcd does not
   * say are ours, then a watch. Throws EtcdUnavailableError while etcd cannot be reached.
   */
  sync(): Promise<void> {
    if (this.synced) return Promise.resolve();
    this.syncing ??= this.doSync()
      .then(
        () => {
          this.syncUnreachableAt = undefined;
        },
        (err: unknown) => {
          if (err instanceof EtcdUnavailableError) this.syncUnreachableAt = this.clock();
          throw err;
        },
      )
      .finally(() => {
        this.syncing = undefined;
      });
    return this.syncing;
  }

  /** When the last sync found etcd unreachable (this.clock()), until one succeeds. */
  private syncUnreachableAt: number | undefined;

  /**
   * The sync an ADD waits for with the network's lock held: none while the last one found etcd unreachable
   * less than SYNC_QUIET_MS ago (the tick keeps trying), so ADDs queued on the lock do not each wait for the
   * members' timeouts (~2 s) in turn, 45 s for the 20th, where cluster.json's blocks serve them meanwhile.
   */
  syncForCall(): Promise<void> {
    if (
      !this.synced &&
      this.syncUnreachableAt !== undefined &&
      this.clock() - this.syncUnreachableAt < SYNC_QUIET_MS
    )
      return Promise.reject(new EtcdUnavailableError('etcd was unreachable at the last sync, moments ago'));
    return this.sync();
  }

  private async doSync(): Promise<void> {
    const { etcd, keys } = this.node;
    await this.checkPoolConfig();
    const r = await etcd.range(keys.blocks(this.name), { prefix: true });
    // Stopped meanwhile: no watch may open now (nothing would ever close it).
    if (this.closed) return;
    this.applyBlocks(r.kvs, true);
    this.synced = true;
    // The watch opens before the record is written: a failed write (retried by the next one) must not
    // leave the network synced but blind to other nodes' claims and to deletions of its own blocks.
    this.watcher?.close();
    this.watcher = etcd.watch(keys.blocks(this.name), (BigInt(r.revision) + 1n).toString(), {
      onEvents: (events) => {
        // A claim of k blocks is one revision, so one batch of k PUTs: applied together, they cost one
        // cluster.json write (two fsyncs) instead of one per block. The order of PUTs and DELETEs is kept.
        let puts: KeyValue[] = [];
        for (const e of events) {
          const parsed = keys.parseBlockKey(e.kv.key);
          if (parsed === undefined) continue;
          if (e.type === 'PUT') {
            puts.push(e.kv);
            continue;
          }
          if (puts.length > 0) this.applyBlocks(puts, false);
          puts = [];
          this.blockGone(parsed.cidr);
        }
        if (puts.length > 0) this.applyBlocks(puts, false);
      },
      onReset: async () => {
        const again = await etcd.range(keys.blocks(this.name), { prefix: true });
        this.applyBlocks(again.kvs, true);
        await this.writeRecord();
        return again.revision;
      },
      onError: (err) =>
        this.node.o.log.log('debug', 'cluster: block watch reconnecting', { error: err.message }),
    });
    await this.writeRecord();
  }

  private async checkPoolConfig(): Promise<void> {
    const { etcd, keys } = this.node;
    const { current, legacy } = poolConfigValues(this.pools, this.blockSizes);
    const key = keys.config(this.name);
    const r = await etcd.txn(
      {
        compare: [{ key, target: 'CREATE', createRevision: '0' }],
        success: [{ put: { key, value: current } }],
        failure: [{ range: { key } }],
      },
      'config',
    );
    const kv = r.succeeded ? undefined : 'range' in r.responses[0]! ? r.responses[0].range.kvs[0] : undefined;
    if (kv === undefined || kv.value === current || kv.value === legacy) {
      this.agreedWithEtcd = true;
      return;
    }
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `cluster network ${this.name}: this node's ${describePoolConfig(parseValue<PoolConfigValue>(current))} differ from the ones in etcd, ${describePoolConfig(parseValue<PoolConfigValue>(kv.value))}; every node must use the same ranges and block sizes`,
    );
  }

  /** Block keys from a range (`complete`: the whole prefix, so anything not listed is not claimed) or watch. */
  private applyBlocks(kvs: KeyValue[], complete: boolean): void {
    const { keys } = this.node;
    const seen = new Set<string>();
    let changed = false;
    for (const kv of kvs) {
      const parsed = keys.parseBlockKey(kv.key);
      if (parsed === undefined) continue;
      const v = parseValue<BlockValue>(kv.value);
      if (v === undefined) continue;
      seen.add(parsed.cidr);
      this.claimed.set(parsed.cidr, { node: v.node, uid: v.uid });
      const where = this.poolOf(parsed.cidr);
      if (where === undefined) this.noteForeignLayout(parsed.cidr, v.node);
      const mine = v.node === this.node.name && v.uid === this.node.uid;
      const o = this.owned.get(parsed.cidr);
      if (mine && o === undefined) {
        if (where !== undefined) {
          this.owned.set(parsed.cidr, {
            setId: where.setId,
            createRevision: kv.createRevision,
            modRevision: kv.modRevision,
            state: 'owned',
            range: where.range,
            usable: usableOf(where.range),
            used: 0,
          });
          changed = true;
          // A claim of ours on its way: the watch brought its PUT before the txn's answer (the usual
          // case, debug). Otherwise a claim whose answer was lost, or a block cluster.json did not have.
          this.node.o.log.log(
            this.inFlight.size > 0 ? 'debug' : 'info',
            'cluster: adopted a block etcd says is ours',
            {
              network: this.name,
              block: parsed.cidr,
            },
          );
        }
      } else if (mine && o !== undefined) {
        o.modRevision = kv.modRevision;
        o.createRevision = kv.createRevision;
      } else if (!mine && o !== undefined) {
        this.owned.delete(parsed.cidr);
        changed = true;
        this.node.o.log.log(
          'warn',
          'cluster: etcd says a block we used belongs to another node; no longer used',
          {
            network: this.name,
            block: parsed.cidr,
            owner: v.node,
          },
        );
      }
    }
    if (complete) {
      for (const cidr of [...this.claimed.keys()]) if (!seen.has(cidr)) this.claimed.delete(cidr);
      for (const cidr of [...this.foreignLayout.keys()]) if (!seen.has(cidr)) this.foreignLayout.delete(cidr);
      for (const cidr of [...this.owned.keys()]) {
        if (!seen.has(cidr)) {
          this.owned.delete(cidr);
          changed = true;
        }
      }
    }
    if (changed && this.synced) this.writeRecordLater();
  }

  /** A claimed block that is not one of this node's blocks: kept in foreignLayout if it overlaps the pools. */
  private noteForeignLayout(cidr: string, owner: string): void {
    if (this.foreignLayout.has(cidr)) return;
    const c = parseCidr(cidr);
    if (c === undefined) return;
    const span: Span = { family: c.ip.family, first: networkOf(c), last: lastOf(c) };
    if (this.poolOverlapping(span) === undefined) return;
    this.foreignLayout.set(cidr, span);
    const ours = [...this.owned]
      .filter(([, o]) => overlaps(span, o.range.family, o.range.start, o.range.end))
      .map(([c]) => c);
    this.node.o.log.log(
      'warn',
      "cluster: a claimed block is not of this node's block size: ipam.cluster block sizes differ between nodes or configs (every node must use the same); no block overlapping it is claimed here, and none of ours it overlaps hands out more addresses",
      {
        network: this.name,
        block: cidr,
        owner,
        ...(ours.length > 0 ? { overlapsOurs: ours.join(' ') } : {}),
      },
    );
  }

  private blockGone(cidr: string): void {
    this.claimed.delete(cidr);
    this.foreignLayout.delete(cidr);
    const o = this.owned.get(cidr);
    if (o !== undefined && o.state === 'owned') {
      // Deleted by someone else (`berth node forget --force`): etcd no longer says it is ours.
      this.owned.delete(cidr);
      this.node.o.log.log('warn', 'cluster: a block of ours was deleted in etcd; no longer used', {
        network: this.name,
        block: cidr,
      });
      this.writeRecordLater();
    }
  }

  /** Free usable addresses of a pool's owned blocks (estimate between recounts). */
  freeIn(setId: number): number {
    let n = 0;
    for (const o of this.owned.values())
      if (o.setId === setId && this.serving(o)) n += Math.max(0, o.usable - o.used);
    return n;
  }

  private usedNow(): number {
    let n = 0;
    for (const o of this.owned.values()) n += o.used;
    return n;
  }

  /**
   * One block plus the largest burst of the last minute, a burst being the growth of the leases between two
   * checks (ADDs minus DELs): churn at any rate needs no reserve beyond a block, a storm needs its size.
   */
  private reserveTarget(setId: number): number {
    return this.pools[setId]!.blockAddresses + this.burst(setId);
  }

  /** The largest growth of the leases between two checks in the reserve window (capped at a claim's size). */
  private burst(setId: number): number {
    let burst = Math.max(0, this.usedNow() - this.usedAtCheck);
    for (const g of this.growth) if (g > burst) burst = g;
    return Math.min(burst, this.pools[setId]!.blockAddresses * (this.settings.maxBlocksPerClaim - 1));
  }

  /** Picks up to `k` unclaimed blocks of a pool: after our own blocks, else from a hash of our name. */
  private candidates(setId: number, k: number): string[] {
    const pool = this.pools[setId]!;
    const mine = [...this.owned.entries()]
      .filter(([, o]) => o.setId === setId)
      .map(([c]) => pool.find(c)!.index);
    const start =
      mine.length > 0 ? mine.reduce((a, b) => (a > b ? a : b)) + 1n : nameHash(this.node.name) % pool.count;
    const out: string[] = [];
    // At most every claimed block plus k is probed: the pool itself is never enumerated. Blocks inside a
    // block of another layout (foreignLayout, one claimed key covering several of ours) are passed over
    // without counting: there are as many as such blocks cover, normally none.
    let budget = this.claimed.size + k + 1;
    for (let i = 0n; i < pool.count && budget > 0 && out.length < k;) {
      const index = (start + i) % pool.count;
      const b = pool.at(index);
      const span = this.foreignSpanOver(b.range);
      if (span !== undefined) {
        // Past every block of ours the span covers in this range in one step (a /96 covers 2^26 blocks of
        // /122), at no cost to the budget: each step passes at least one block, and there are at most
        // (spans × ranges + 1) of them.
        i += pool.nextIndexPast(index, span.last) - index;
        continue;
      }
      budget--;
      if (!this.claimed.has(b.cidr) && !this.owned.has(b.cidr)) out.push(b.cidr);
      i++;
    }
    return out;
  }

  /** The first pool with an address in `span`: a block that is not one of the pool's but lies in it. */
  poolOverlapping(span: Span): PoolBlocks | undefined {
    return this.pools.find((p) => p.set.some((r) => overlaps(span, r.family, r.start, r.end)));
  }

  private foreignSpanOver(r: Range): Span | undefined {
    for (const span of this.foreignLayout.values()) if (overlaps(span, r.family, r.start, r.end)) return span;
    return undefined;
  }

  private overlapsForeignLayout(r: Range): boolean {
    return this.foreignSpanOver(r) !== undefined;
  }

  /**
   * An owned block that serves new addresses: not being released, and no block of another size overlaps it
   * (the other node, an older build does not look, may hand out the same addresses; its pods keep theirs).
   */
  private serving(o: Owned): boolean {
    return o.state === 'owned' && (this.foreignLayout.size === 0 || !this.overlapsForeignLayout(o.range));
  }

  /** One claim attempt of `k` blocks; resolves with the number claimed (0: all taken, pick again). */
  private async claimOnce(setId: number, k: number): Promise<number> {
    const { etcd, keys } = this.node;
    const lease = await this.node.ensureAlive();
    const cidrs = this.candidates(setId, k);
    if (cidrs.length === 0) {
      throw new CniError(
        ErrorCode.Internal,
        `no IP addresses available in range set: ${describeRangeSet(this.pools[setId]!.set)} (every block of the pool of cluster network ${this.name} is claimed${this.foreignLayout.size > 0 ? ', or overlapped by a block of another size' : ''})`,
      );
    }
    const value: BlockValue = {
      node: this.node.name,
      uid: this.node.uid,
      claimedAt: this.node.wallClock().toISOString(),
    };
    const aliveKey = keys.alive(this.node.name);
    const r = await etcd.txn(
      {
        compare: [
          { key: aliveKey, target: 'LEASE', lease },
          ...cidrs.map((c) => ({
            key: keys.block(this.name, c),
            target: 'CREATE' as const,
            createRevision: '0',
          })),
        ],
        success: cidrs.map((c): TxnOp => ({
          put: { key: keys.block(this.name, c), value: JSON.stringify(value) },
        })),
        failure: [
          { range: { key: aliveKey } },
          ...cidrs.map((c): TxnOp => ({ range: { key: keys.block(this.name, c) } })),
        ],
      },
      'claim',
    );
    if (r.succeeded) {
      // The watch may have delivered these PUTs before the txn's answer and adopted the blocks (and written
      // cluster.json, and counted allocations in them): keep those entries and write only if one is new.
      let added = false;
      for (const c of cidrs) {
        const where = this.poolOf(c)!;
        this.claimed.set(c, { node: this.node.name, uid: this.node.uid });
        if (this.owned.has(c)) continue;
        added = true;
        this.owned.set(c, {
          setId,
          createRevision: r.revision,
          modRevision: r.revision,
          state: 'owned',
          range: where.range,
          usable: usableOf(where.range),
          used: 0,
        });
      }
      if (added) await this.writeRecord();
      this.stats.inc(
        'berthd_cluster_block_claims_total',
        'Blocks claimed, by result.',
        { network: this.name, result: 'ok' },
        cidrs.length,
      );
      this.node.o.log.log('debug', 'cluster: claimed blocks', {
        network: this.name,
        blocks: cidrs.join(' '),
      });
      return cidrs.length;
    }
    const aliveKv = 'range' in r.responses[0]! ? r.responses[0].range.kvs[0] : undefined;
    if (aliveKv === undefined || aliveKv.lease !== lease) {
      this.node.leaseLost(lease);
    }
    const blockKvs = r.responses.slice(1).flatMap((x) => ('range' in x ? x.range.kvs : []));
    if (blockKvs.length > 0) {
      this.stats.inc(
        'berthd_cluster_block_claims_total',
        'Blocks claimed, by result.',
        { network: this.name, result: 'conflict' },
        blockKvs.length,
      );
      this.applyBlocks(blockKvs, false);
    }
    return 0;
  }

  /**
   * Claims until something was claimed (a few attempts), sized to what waits plus the reserve; a reserve claim
   * that may not take the pool's last unclaimed block claims nothing.
   */
  private claim(setId: number, why: 'wait' | 'reserve'): Promise<void> {
    let p = this.inFlight.get(setId);
    // A reserve claim may end claiming nothing (the pool's last block): an ADD that waits then claims its own.
    if (p !== undefined)
      return why === 'wait'
        ? p.then(() => (this.freeIn(setId) > 0 ? undefined : this.claim(setId, 'wait')))
        : p;
    p = (async () => {
      try {
        await this.sync();
        const block = this.pools[setId]!.blockAddresses;
        // Claim ahead while the leases grow: back up to the reserve *and one burst more*. Sized to the deficit
        // alone, a claim started by the first ADD below the reserve is one block, so a storm paid one txn per
        // block (bench/cluster: 35 txns for 39 blocks); with the burst added, one txn per burst. Without
        // growth the burst is 0 and this is the reserve exactly, so slow growth holds no extra block.
        const waiting = this.waiting.get(setId) ?? 0;
        const free = this.freeIn(setId);
        const want = waiting + this.reserveTarget(setId) + this.burst(setId) - free;
        let k = Math.min(this.settings.maxBlocksPerClaim, Math.max(1, Math.ceil(want / block)));
        // What the waiting ADDs need themselves; the rest is reserve, claimed ahead for speed only. A reserve
        // never takes a pool's last unclaimed block: a small pool (a few blocks per node) would otherwise be
        // held whole by the first nodes, one block each in use and one spare, and a node with none has no
        // block for its first pod (the spares are released once the pool is full: tick).
        // An ADD that waits found nothing free, whatever the estimate says (`exclude` is not counted in it).
        const needed =
          why === 'wait' ? Math.min(k, Math.max(1, Math.ceil(Math.max(0, waiting - free) / block))) : 0;
        if (k > needed) {
          const unclaimed = this.candidates(setId, k + 1).length;
          if (unclaimed <= k) k = Math.max(needed, unclaimed - 1);
        }
        if (k === 0) {
          // Background claims pause as after a failure: every ADD below the reserve would search again.
          this.backgroundFailedAt = this.clock();
          return;
        }
        for (let attempt = 0; attempt < 8; attempt++) {
          if ((await this.claimOnce(setId, k)) > 0) return;
        }
        throw new EtcdUnavailableError('claims kept conflicting with other nodes');
      } catch (err) {
        if (!(err instanceof CniError)) {
          this.lastError = { message: (err as Error).message, at: this.clock() };
          if (why === 'wait')
            this.stats.inc('berthd_cluster_block_claims_total', 'Blocks claimed, by result.', {
              network: this.name,
              result: 'error',
            });
        }
        throw err;
      } finally {
        this.inFlight.delete(setId);
      }
    })();
    this.inFlight.set(setId, p);
    return p;
  }

  /**
   * Claims for a waiting ADD until one succeeds or `deadline` (monotonic ms). A claim that failed because etcd is
   * between leaders (members up, none able to serve: the first second or two after the leader died) is tried
   * again until the deadline; with no member listening at all (etcd down) the ADD fails now.
   */
  private async claimUntil(setId: number, deadline: number): Promise<void> {
    for (;;) {
      try {
        await this.claim(setId, 'wait');
        return;
      } catch (err) {
        // A claim whose answer was lost may have landed all the same: the watch has made its block ours, and
        // the waiting ADD can take an address there whatever etcd answers now. Not after etcd's own answer (a
        // CniError: every block claimed): the estimate counts `exclude`d addresses as free, and the ADD would
        // find none and wait here again, for good.
        if (!(err instanceof CniError) && this.freeIn(setId) > 0) return;
        if (!(err instanceof EtcdUnavailableError) || !err.membersListening) throw err;
        if (this.clock() + CLAIM_RETRY_MS >= deadline) throw err;
        await new Promise((r) => setTimeout(r, CLAIM_RETRY_MS));
      }
    }
  }

  /** An ADD found no free owned address: wait for a claim, at most the claim timeout since the ADD began. */
  async needMore(setId: number, sinceMs: number, nowMs: number): Promise<void> {
    const fence = this.node.fenceReason();
    if (fence !== undefined) throw new CniError(ErrorCode.TryAgainLater, fence);
    this.waiting.set(setId, (this.waiting.get(setId) ?? 0) + 1);
    const t0 = this.clock();
    const left = this.settings.claimTimeoutMs - (nowMs - sinceMs);
    this.stats.inc(
      'berthd_cluster_adds_waited_total',
      'ADDs that waited for a block claim (0 in the steady state).',
      {
        network: this.name,
      },
    );
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        // Stops retrying by the same deadline as the timer below.
        this.claimUntil(setId, t0 + left),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new EtcdUnavailableError(
                  `no claim finished within the claim timeout (${this.settings.claimTimeoutMs} ms)` +
                    (this.lastError !== undefined && this.lastError.at >= t0
                      ? `; ${this.lastError.message}`
                      : ''),
                ),
              ),
            Math.max(0, left),
          );
        }),
      ]);
    } catch (err) {
      if (err instanceof CniError) {
        if (err.code !== ErrorCode.InvalidNetworkConfig)
          this.stats.inc('berthd_cluster_adds_failed_total', 'ADDs refused by the cluster layer.', {
            network: this.name,
            reason: 'pool_exhausted',
          });
        throw err;
      }
      this.stats.inc('berthd_cluster_adds_failed_total', 'ADDs refused by the cluster layer.', {
        network: this.name,
        reason: 'etcd_unreachable',
      });
      const age = Math.round(this.node.lastContactAgeSeconds());
      throw new CniError(
        ErrorCode.TryAgainLater,
        `try again later: no free address in the blocks this node owns in network ${this.name}, and no block could be claimed: etcd is unreachable (last contact ${age} s ago: ${(err as Error).message})`,
      );
    } finally {
      clearTimeout(timer);
      this.waiting.set(setId, (this.waiting.get(setId) ?? 1) - 1);
      this.stats.observe(
        'berthd_cluster_claim_wait_seconds',
        'Time ADDs waited for a block claim.',
        {},
        (this.clock() - t0) / 1000,
      );
    }
  }

  /** After an ADD: count its addresses, and claim in the background when free owned addresses fall below the reserve. */
  afterAdd(ips: readonly Ip[]): void {
    this.count(ips, 1);
    for (const [setId] of this.pools.entries()) this.reserveCheck(setId);
  }

  afterRelease(ips: readonly Ip[]): void {
    this.count(ips, -1);
  }

  private count(ips: readonly Ip[], by: number): void {
    for (const ip of ips) {
      for (const pool of this.pools) {
        const b = pool.blockOf(ip);
        const o = b === undefined ? undefined : this.owned.get(b.cidr);
        if (o !== undefined) {
          o.used = Math.max(0, o.used + by);
          break;
        }
      }
    }
  }

  private reserveCheck(setId: number): void {
    if (this.inFlight.has(setId) || this.node.fenceReason() !== undefined) return;
    // After a failure (etcd down), background claims pause a second instead of hammering.
    if (this.clock() - this.backgroundFailedAt < 1000) return;
    if (this.freeIn(setId) >= this.reserveTarget(setId)) return;
    this.claim(setId, 'reserve').catch((err: unknown) => {
      this.backgroundFailedAt = this.clock();
      this.node.o.log.log('debug', 'cluster: background claim failed', {
        network: this.name,
        error: String(err),
      });
    });
  }

  /** Why no block can be claimed now (STATUS), or undefined. */
  async claimImpossibleReason(): Promise<string | undefined> {
    const fence = this.node.fenceReason();
    if (fence !== undefined) return fence;
    if (!(await this.node.etcd.health())) {
      return `etcd is unreachable (last contact ${Math.round(this.node.lastContactAgeSeconds())} s ago)`;
    }
    for (const [setId] of this.pools.entries()) {
      if (this.candidates(setId, 1).length === 0) return `every block of range set ${setId} is claimed`;
    }
    return undefined;
  }

  /**
   * The periodic check: recount leases per owned block, mark blocks empty at two checks `blockReleaseAfter`
   * apart as releasing (under the lock) and delete them in etcd, keep the reserve, refresh cluster.json's
   * last contact, retry the sync while etcd was down.
   */
  async tick(): Promise<void> {
    if (!this.synced) {
      try {
        await this.sync();
      } catch (err) {
        if (!(err instanceof EtcdUnavailableError)) throw err;
      }
    }
    const now = this.clock();
    const toRelease: string[] = [];
    /** By range set, once asked: no block of the pool is unclaimed. */
    const poolFull: (boolean | undefined)[] = [];
    await this.store().transact(async (s) => {
      const leases = await s.all();
      for (const o of this.owned.values()) o.used = 0;
      const byCidr = new Map<string, number>();
      for (const l of leases) {
        for (const pool of this.pools) {
          const b = pool.blockOf(l.ip);
          if (b !== undefined) {
            byCidr.set(b.cidr, (byCidr.get(b.cidr) ?? 0) + 1);
            break;
          }
        }
      }
      for (const [cidr, o] of this.owned) {
        o.used = byCidr.get(cidr) ?? 0;
        if (o.used > 0) {
          o.emptySince = undefined;
          if (o.state === 'releasing') o.state = 'owned';
          continue;
        }
        if (o.state === 'releasing') {
          toRelease.push(cidr);
          continue;
        }
        if (o.emptySince === undefined) {
          o.emptySince = now;
          if (this.settings.blockReleaseAfterMs > 0) continue;
        }
        if (now - o.emptySince < this.settings.blockReleaseAfterMs) continue;
        // Keep minBlocks per pool, and the reserve (one block's worth of free addresses plus the burst still
        // remembered): a release below it was claimed back by the reserve check right after, the same block
        // often, while other nodes' routes to it went and came back (cluster-net-test's release check).
        // A block that no longer serves (another size overlaps it) goes once empty, whatever is kept.
        // Not the reserve when the pool has no unclaimed block left: another node may have none (see claim).
        if (this.serving(o)) {
          const sameSet = [...this.owned.values()].filter((x) => x.setId === o.setId && this.serving(x));
          if (sameSet.length <= this.settings.minBlocks) continue;
          const freeAfter = this.freeIn(o.setId) - o.usable;
          if (freeAfter < this.reserveTarget(o.setId)) {
            poolFull[o.setId] ??= this.candidates(o.setId, 1).length === 0;
            if (!poolFull[o.setId]) continue;
          }
        }
        o.state = 'releasing';
        toRelease.push(cidr);
        // One block going makes the pool not full: a second spare then stays (it would be claimed back).
        poolFull[o.setId] = false;
      }
      if (toRelease.length > 0) await this.writeRecord();
      const used = this.usedNow();
      this.growth.push(Math.max(0, used - this.usedAtCheck));
      while (this.growth.length > Math.max(1, Math.round(this.settings.reserveWindowMs / 1000)))
        this.growth.shift();
      this.usedAtCheck = used;
    });
    for (const cidr of toRelease) await this.release(cidr);
    const fenceChanged = (this.node.recordedFence() === undefined) !== (this.lastRecordFence === undefined);
    if (fenceChanged) await this.writeRecord();
    else if (this.node.lastContact() !== this.lastRecordContact) {
      const every = Math.min(30_000, (this.node.o.horizonSeconds * 1000) / 4);
      if (this.node.lastContact() - this.lastRecordContact >= every) await this.writeRecord();
    }
    for (const [setId] of this.pools.entries()) this.reserveCheck(setId);
  }

  private async release(cidr: string): Promise<void> {
    const o = this.owned.get(cidr);
    if (o === undefined || o.state !== 'releasing') return;
    const { etcd, keys } = this.node;
    const key = keys.block(this.name, cidr);
    try {
      const lease = await this.node.ensureAlive();
      const r = await etcd.txn(
        {
          compare: [
            { key, target: 'MOD', modRevision: o.modRevision },
            { key: keys.alive(this.node.name), target: 'LEASE', lease },
          ],
          success: [{ deleteRange: { key } }],
          failure: [{ range: { key } }],
        },
        'release',
      );
      const kv = !r.succeeded && 'range' in r.responses[0]! ? r.responses[0].range.kvs[0] : undefined;
      if (r.succeeded || kv === undefined) {
        this.owned.delete(cidr);
        this.claimed.delete(cidr);
        await this.writeRecord();
        this.stats.inc('berthd_cluster_block_releases_total', 'Empty blocks released.', {
          network: this.name,
        });
        this.node.o.log.log('debug', 'cluster: released an empty block', { network: this.name, block: cidr });
        return;
      }
      const v = parseValue<BlockValue>(kv.value);
      if (v?.node === this.node.name && v.uid === this.node.uid) o.modRevision = kv.modRevision;
      else this.node.leaseLost(lease);
    } catch (err) {
      // Still `releasing`: retried at the next check (nothing is handed out of it meanwhile).
      this.node.o.log.log('debug', 'cluster: release failed, retried later', {
        network: this.name,
        block: cidr,
        error: String(err),
      });
    }
  }

  /** `berth node leave`: releases every block (they must be empty). */
  async leave(): Promise<{ released: string[]; kept: { cidr: string; used: number }[] }> {
    // The node is fenced by now (no new claim starts); one already under way lands first, so that its
    // blocks are released below instead of being left to nobody.
    await Promise.allSettled([...this.inFlight.values()]);
    await this.store().transact(async (s) => {
      const leases = await s.all();
      for (const [cidr, o] of this.owned) {
        const pool = this.pools[o.setId]!;
        const used = leases.filter((l) => pool.blockOf(l.ip)?.cidr === cidr).length;
        o.used = used;
        if (used === 0) o.state = 'releasing';
      }
      await this.writeRecord();
    });
    const released: string[] = [];
    for (const [cidr, o] of [...this.owned]) {
      if (o.state !== 'releasing') continue;
      await this.release(cidr);
      if (!this.owned.has(cidr)) released.push(cidr);
    }
    const kept = [...this.owned.entries()].map(([cidr, o]) => ({ cidr, used: o.used }));
    return { released, kept };
  }

  /** Leases of this node outside its owned blocks (`berth cluster check`). */
  async leasesOutsideBlocks(): Promise<string[]> {
    return this.store().transact(
      async (s) => {
        const out: string[] = [];
        for (const l of await s.all()) {
          const inPool = this.pools.map((p) => p.blockOf(l.ip)).find((b) => b !== undefined);
          if (inPool === undefined) continue;
          if (!this.owned.has(inPool.cidr)) out.push(formatIp(l.ip));
        }
        return out;
      },
      { readOnly: true },
    );
  }

  /** This node was forgotten and came back with a new boot: the old blocks are not ours any more. */
  dropAll(): void {
    this.owned.clear();
    this.synced = false;
    // A failure is logged; the record is rewritten at the next sync.
    this.writeRecordLater();
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
  }
}
