// berthd's cluster layer: the node (identity, liveness, fence), one ClusterNetwork per cluster network it
// serves, the ClusterAllocator the IPAM handlers call, and the admin operations behind `berth cluster
// status|check` and `berth node forget|leave|rejoin`.
import * as fs from 'node:fs';
import { dirname, join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { lastOf, networkOf, parseCidr } from '../address/cidr';
import { type Ip, parseIp } from '../address/ip';
import { type ClusterAllocator, readClusterRecord } from '../ipam/cluster-blocks';
import { type IpamConfig, normalDataDir } from '../ipam/config';
import type { Range } from '../ipam/range-set';
import type { LeaseStore } from '../ipam/store';
import {
  type Compare,
  EtcdGateway,
  type EtcdGatewayOptions,
  EtcdUnavailableError,
  type KeyValue,
  type TxnOp,
} from './etcd-gateway';
import {
  type AbsentValue,
  type BlockValue,
  ClusterKeys,
  type ForgottenValue,
  type IdentityValue,
  parseValue,
} from './keys';
import { ClusterNetwork, type NetworkSettings, poolKeyOf } from './network';
import { type ClusterLog, ClusterNode, suspendAwareClock } from './node';
import { ClusterStats, type GaugeLine } from './stats';
import type { Underlay } from './underlay';

export interface ClusterOptions {
  etcd: Omit<EtcdGatewayOptions, 'onRequest' | 'onFailover'>;
  prefix: string;
  nodeName: string;
  /** File holding this machine's node uid, created once. */
  nodeIdFile: string;
  bootId: string;
  ttlSeconds: number;
  horizonSeconds: number;
  claimTimeoutMs: number;
  blockReleaseAfterMs: number;
  /** How long the largest burst is remembered for the reserve (default 60 s). */
  reserveWindowMs?: number;
  /** Extra wait after a dead node's horizon + 2 × TTL before `forget` is accepted (clock skew). */
  forgetMarginSeconds: number;
  version: string;
  /** This node's underlay addresses, published in its `alive` key (issue 15). */
  underlay?: Underlay;
  log: ClusterLog;
}

/** The node uid: read from its file, created (random) the first time. */
export function loadNodeUid(file: string): string {
  try {
    const t = fs.readFileSync(file, 'utf8').trim();
    if (t !== '') return t;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const uid = randomUUID();
  fs.mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  fs.writeFileSync(file, `${uid}\n`, { mode: 0o600, flag: 'wx' });
  return fs.readFileSync(file, 'utf8').trim();
}

export interface NodeStatus {
  node: string;
  uid?: string;
  alive: boolean;
  absentSince?: string;
  forgotten?: boolean;
  blocks: Record<string, string[]>;
}

export interface ClusterStatusReply {
  node: string;
  uid: string;
  prefix: string;
  etcd: { endpoint: string; healthy: boolean }[];
  lastContactSecondsAgo: number;
  fenced?: string;
  lease?: string;
  networks: {
    network: string;
    blocks: { cidr: string; state: string; used: number; free: number }[];
    free: number;
    used: number;
  }[];
  nodes: NodeStatus[];
}

export interface ClusterCheckReply {
  problems: string[];
  checked: { blocks: number; nodes: number; networks: number };
}

export class ClusterIpam implements ClusterAllocator {
  readonly stats = new ClusterStats();
  readonly etcd: EtcdGateway;
  readonly keys: ClusterKeys;
  readonly node: ClusterNode;
  private readonly networks = new Map<string, ClusterNetwork>();
  /** `berth node leave` went through: this process stays out until it restarts. */
  private hasLeft = false;
  private storeOf: ((conf: IpamConfig) => LeaseStore) | undefined;
  private dataDirs: () => readonly string[] = () => [];
  private ticker: NodeJS.Timeout | undefined;
  private nodeWatch: { close(): void } | undefined;
  private nodeWatchStarting = false;
  private stopped = false;
  private readonly aliveNodes = new Set<string>();
  private readonly settings: NetworkSettings;

  constructor(private readonly o: ClusterOptions) {
    this.keys = new ClusterKeys(o.prefix);
    // One clock for the node's contact ages and the gateway's contact times: CLOCK_BOOTTIME, so that a
    // suspend longer than the horizon fences the node on resume (another node may have forgotten it).
    const clock = o.etcd.clock ?? suspendAwareClock();
    this.etcd = new EtcdGateway({
      ...o.etcd,
      clock,
      onRequest: (op, result, seconds) => {
        this.stats.inc('berthd_cluster_etcd_requests_total', 'Requests to etcd, by operation and result.', {
          op,
          result,
        });
        this.stats.observe(
          'berthd_cluster_etcd_request_duration_seconds',
          'etcd request latency.',
          { op },
          seconds,
        );
      },
      onFailover: (from, to) => {
        this.stats.inc('berthd_cluster_etcd_failovers_total', 'Moves to another etcd member.');
        o.log.log('info', 'cluster: etcd endpoint changed', { from, to });
      },
    });
    this.node = new ClusterNode({
      clock,
      etcd: this.etcd,
      keys: this.keys,
      name: o.nodeName,
      uid: loadNodeUid(o.nodeIdFile),
      bootId: o.bootId,
      ttlSeconds: o.ttlSeconds,
      horizonSeconds: o.horizonSeconds,
      version: o.version,
      ...(o.underlay !== undefined ? { underlay: o.underlay } : {}),
      log: o.log,
      stats: this.stats,
    });
    this.node.onForgottenNewBoot = () => {
      for (const n of this.networks.values()) n.dropAll();
    };
    this.settings = {
      claimTimeoutMs: o.claimTimeoutMs,
      blockReleaseAfterMs: o.blockReleaseAfterMs,
      minBlocks: 1,
      maxBlocksPerClaim: 16,
      reserveWindowMs: o.reserveWindowMs ?? 60_000,
    };
  }

  /**
   * Where the networks' lease stores come from (berthd's service), set before the first request; `dataDirs`,
   * the data dirs berthd serves, are where a network's leases may be from an earlier config.
   */
  useStores(storeOf: (conf: IpamConfig) => LeaseStore, dataDirs?: () => readonly string[]): void {
    this.storeOf = storeOf;
    if (dataDirs !== undefined) this.dataDirs = dataDirs;
  }

  /** Registers the node (refusing to start on an identity conflict) and starts the periodic checks. */
  async start(): Promise<void> {
    await this.node.start();
    this.ticker = setInterval(() => {
      // Seen even while no ADD asks: a gap past the horizon keeps the node fenced until it registers anew.
      this.node.fenceReason();
      this.startNodeWatch();
      for (const n of this.networks.values()) {
        n.tick().catch((err: unknown) =>
          this.o.log.log('warn', 'cluster: periodic check failed', { network: n.name, error: String(err) }),
        );
      }
    }, 1000);
    this.ticker.unref();
    this.startNodeWatch();
  }

  /** Starts the node watch unless it runs or is starting; the ticker retries it while etcd cannot be reached. */
  private startNodeWatch(): void {
    if (this.nodeWatch !== undefined || this.nodeWatchStarting || this.stopped) return;
    this.nodeWatchStarting = true;
    this.watchNodes()
      .catch((err: unknown) =>
        this.o.log.log('debug', 'cluster: node watch not started yet', { error: String(err) }),
      )
      .finally(() => {
        this.nodeWatchStarting = false;
      });
  }

  /** Watches `nodes/`: which nodes are alive, and the first daemon to see one vanish records since when. */
  private async watchNodes(): Promise<void> {
    const r = await this.etcd.range(this.keys.nodes(), { prefix: true });
    // Stopped meanwhile: no watch may open now (nothing would ever close it).
    if (this.stopped) return;
    this.aliveNodes.clear();
    for (const kv of r.kvs) {
      const k = this.keys.parseNodeKey(kv.key);
      if (k?.what === 'alive') this.aliveNodes.add(k.node);
    }
    this.nodeWatch = this.etcd.watch(this.keys.nodes(), (BigInt(r.revision) + 1n).toString(), {
      onEvents: (events) => {
        for (const e of events) {
          const k = this.keys.parseNodeKey(e.kv.key);
          if (k?.what !== 'alive') continue;
          if (e.type === 'PUT') this.aliveNodes.add(k.node);
          else {
            this.aliveNodes.delete(k.node);
            if (k.node !== this.node.name) {
              this.o.log.log(
                'warn',
                'cluster: node absent (its liveness lease lapsed); its blocks stay its own',
                {
                  node: k.node,
                },
              );
              this.noteAbsent(k.node).catch(() => undefined);
            }
          }
        }
      },
      onReset: async () => {
        const again = await this.etcd.range(this.keys.nodes(), { prefix: true });
        this.aliveNodes.clear();
        for (const kv of again.kvs) {
          const k = this.keys.parseNodeKey(kv.key);
          if (k?.what === 'alive') this.aliveNodes.add(k.node);
        }
        return again.revision;
      },
    });
  }

  private async noteAbsent(node: string): Promise<boolean> {
    const value: AbsentValue = { since: new Date().toISOString(), by: this.node.name };
    const r = await this.etcd.txn(
      {
        compare: [
          { key: this.keys.alive(node), target: 'CREATE', createRevision: '0' },
          { key: this.keys.absent(node), target: 'CREATE', createRevision: '0' },
          { key: this.keys.identity(node), target: 'CREATE', createRevision: '0', result: 'GREATER' },
        ],
        success: [{ put: { key: this.keys.absent(node), value: JSON.stringify(value) } }],
        failure: [],
      },
      'absent',
    );
    return r.succeeded;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.ticker !== undefined) clearInterval(this.ticker);
    this.nodeWatch?.close();
    for (const n of this.networks.values()) n.close();
    // The last record a change asked for reaches the disk before the daemon goes.
    await Promise.all([...this.networks.values()].map((n) => n.recordsWritten()));
    await this.node.stop(true);
    this.etcd.close();
  }

  /**
   * The network a call's config names, built from the first config seen. A later config must agree on what
   * decides its blocks (berthd serves a network from one config at a time, as etcd holds one per cluster):
   * - another dataDir is refused: the network's leases, counted before a block is released, are in the
   *   first, so blocks with pods would look empty and go to other nodes (two pods, one address);
   * - other pools are refused once etcd agreed with the first config (it cannot agree with both); a network
   *   that etcd never agreed with (refused there, or not reached yet) is rebuilt from the new config, so an
   *   edit put back after a restart takes effect without another one.
   */
  private network(conf: IpamConfig): ClusterNetwork {
    let n = this.networks.get(conf.network);
    const dataDir = normalDataDir(conf.dataDir);
    if (n !== undefined && n.dataDir !== dataDir) throw movedDataDir(conf.network, n.dataDir, dataDir);
    if (n !== undefined && n.poolKey !== poolKeyOf(conf)) {
      if (n.agreedWithEtcd)
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `cluster network ${conf.network}: this config's pools (${poolKeyOf(conf)}) differ from the ones etcd holds and berthd serves it with (${n.poolKey}); every node must use the same ranges`,
        );
      if (n.busy)
        throw new CniError(
          ErrorCode.TryAgainLater,
          `cluster network ${conf.network}: its config changed while berthd was still reaching etcd with the earlier one; try again`,
        );
      n.close();
      this.networks.delete(conf.network);
      n = undefined;
    }
    if (n === undefined) {
      if (this.storeOf === undefined) throw new Error('cluster: no lease stores attached');
      this.refuseLeasesElsewhere(conf.network, dataDir);
      const storeOf = this.storeOf;
      const first = conf;
      n = new ClusterNetwork(this.node, conf, () => storeOf(first), this.settings, this.stats);
      this.networks.set(conf.network, n);
      // Reconciled with etcd in the background; until then the blocks of cluster.json serve.
      n.sync().catch((err: unknown) => {
        if (err instanceof EtcdUnavailableError) return;
        this.o.log.log('warn', 'cluster: network not reconciled with etcd', {
          network: conf.network,
          error: String(err),
        });
      });
    }
    return n;
  }

  /**
   * A network first seen under `dataDir` whose blocks this node recorded, with leases, in another data dir
   * berthd serves (the config's dataDir changed over a restart): refused, as a change while running is.
   */
  private refuseLeasesElsewhere(network: string, dataDir: string): void {
    for (const other of this.dataDirs()) {
      if (normalDataDir(other) === dataDir) continue;
      let rec: ReturnType<typeof readClusterRecord>;
      try {
        rec = readClusterRecord(other, network);
      } catch {
        continue; // damaged: not a record this check can go by
      }
      if (rec === undefined || rec.node !== this.node.name || rec.uid !== this.node.uid) continue;
      if (leaseCount(join(other, network)) > 0) throw movedDataDir(network, normalDataDir(other), dataDir);
    }
  }

  // ---- ClusterAllocator ----

  checkConfig(conf: IpamConfig): void {
    this.network(conf);
  }

  async ownedRangeSets(conf: IpamConfig): Promise<Range[][]> {
    const n = this.network(conf);
    // cluster.json's blocks serve only while etcd cannot say which are still this node's: one forgotten
    // while its berthd was down (its blocks freed, maybe claimed and filled by others) must not hand out
    // their addresses before the first sync drops them. Once synced, this costs nothing.
    try {
      await n.syncForCall();
    } catch (err) {
      if (err instanceof CniError) throw err;
    }
    return n.ownedRangeSets();
  }

  async needMore(conf: IpamConfig, setId: number, sinceMs: number): Promise<void> {
    const n = this.network(conf);
    try {
      await n.sync();
    } catch (err) {
      if (err instanceof CniError) throw err;
    }
    await n.needMore(setId, sinceMs, performance.now());
  }

  afterAdd(conf: IpamConfig, ips: readonly Ip[]): void {
    this.networks.get(conf.network)?.afterAdd(ips);
  }

  afterRelease(conf: IpamConfig, ips: readonly Ip[]): void {
    this.networks.get(conf.network)?.afterRelease(ips);
  }

  async claimImpossibleReason(conf: IpamConfig): Promise<string | undefined> {
    return this.network(conf).claimImpossibleReason();
  }

  // ---- metrics ----

  gauges(): GaugeLine[] {
    const out: GaugeLine[] = [];
    const g = (
      name: string,
      help: string,
      value: number,
      labels: Record<string, string> = {},
      type: GaugeLine['type'] = 'gauge',
    ): void => {
      out.push({ name, help, labels, value, type });
    };
    const age = this.node.lastContactAgeSeconds();
    g(
      'berthd_cluster_etcd_up',
      'Whether etcd answered within the last two keepalive periods.',
      age < (this.o.ttlSeconds * 2) / 3 + 2 ? 1 : 0,
    );
    g('berthd_cluster_last_contact_age_seconds', 'Seconds since etcd last answered.', age);
    g(
      'berthd_cluster_fenced',
      'Whether this node stopped allocating (past its ownership horizon, or forgotten).',
      this.node.fenceReason() === undefined ? 0 : 1,
    );
    g(
      'berthd_cluster_etcd_round_trips_total',
      'Requests sent to etcd members (each attempt counts).',
      this.etcd.roundTrips,
      {},
      'counter',
    );
    for (const n of this.networks.values()) {
      const counts = new Map<string, number>();
      for (const b of n.ownedBlocks()) {
        const fam = n.pools[b.setId]!.family === 4 ? 'ipv4' : 'ipv6';
        const k = `${fam}\n${b.state}`;
        counts.set(k, (counts.get(k) ?? 0) + 1);
      }
      for (const [k, v] of counts) {
        const [family, state] = k.split('\n') as [string, string];
        g('berthd_cluster_blocks', 'Blocks this node owns.', v, { network: n.name, family, state });
      }
      let claimedOthers = 0;
      for (const c of n.claimedBlocks().values()) if (c.node !== this.node.name) claimedOthers++;
      g(
        'berthd_cluster_pool_blocks',
        'Blocks of the network claimed by any node (from the watch).',
        n.claimedBlocks().size,
        {
          network: n.name,
          state: 'claimed',
        },
      );
      g(
        'berthd_cluster_pool_blocks_other_nodes',
        'Blocks of the network claimed by other nodes.',
        claimedOthers,
        { network: n.name },
      );
    }
    g('berthd_cluster_nodes', 'Nodes by liveness (from the watch).', this.aliveNodes.size, {
      state: 'alive',
    });
    return out;
  }

  metricsText(): string {
    return this.stats.render(this.gauges());
  }

  // ---- admin ----

  async status(): Promise<ClusterStatusReply> {
    const health = await this.etcd.memberHealth();
    const nodes: NodeStatus[] = [];
    const byName = new Map<string, NodeStatus>();
    const get = (name: string): NodeStatus => {
      let s = byName.get(name);
      if (s === undefined) {
        // No prototype: a network named "__proto__" or "constructor" in a block key is just a name.
        s = { node: name, alive: false, blocks: Object.create(null) as Record<string, string[]> };
        byName.set(name, s);
        nodes.push(s);
      }
      return s;
    };
    try {
      const r = await this.etcd.range(this.keys.nodes(), { prefix: true });
      for (const kv of r.kvs) {
        const k = this.keys.parseNodeKey(kv.key);
        if (k === undefined) continue;
        const s = get(k.node);
        if (k.what === 'alive') s.alive = true;
        if (k.what === 'identity') {
          const uid = parseValue<IdentityValue>(kv.value)?.uid;
          if (uid !== undefined) s.uid = uid;
        }
        if (k.what === 'absent') {
          const since = parseValue<AbsentValue>(kv.value)?.since;
          if (since !== undefined) s.absentSince = since;
        }
        if (k.what === 'forgotten') s.forgotten = true;
      }
      const b = await this.etcd.range(this.keys.nets(), { prefix: true });
      for (const kv of b.kvs) {
        const k = this.keys.parseBlockKey(kv.key);
        const v = parseValue<BlockValue>(kv.value);
        if (k === undefined || v === undefined) continue;
        const s = get(v.node);
        (s.blocks[k.net] ??= []).push(k.cidr);
      }
    } catch (err) {
      if (!(err instanceof EtcdUnavailableError)) throw err;
    }
    const fence = this.node.fenceReason();
    const reply: ClusterStatusReply = {
      node: this.node.name,
      uid: this.node.uid,
      prefix: this.keys.prefix,
      etcd: health,
      lastContactSecondsAgo: Math.round(this.node.lastContactAgeSeconds() * 10) / 10,
      networks: [...this.networks.values()].map((n) => {
        const blocks = n
          .ownedBlocks()
          .map((b) => ({ cidr: b.cidr, state: b.state, used: b.used, free: b.usable - b.used }));
        return {
          network: n.name,
          blocks,
          used: blocks.reduce((a, b) => a + b.used, 0),
          free: blocks.reduce((a, b) => a + (b.state === 'owned' ? b.free : 0), 0),
        };
      }),
      nodes: nodes.sort((a, b) => (a.node < b.node ? -1 : 1)),
    };
    if (fence !== undefined) reply.fenced = fence;
    const lease = this.node.currentLease;
    if (lease !== undefined) reply.lease = lease;
    return reply;
  }

  /** Like `calicoctl ipam check`: what should not be, in etcd and against this node's files. */
  async check(): Promise<ClusterCheckReply> {
    const problems: string[] = [];
    const nodesR = await this.etcd.range(this.keys.nodes(), { prefix: true });
    const identities = new Map<string, IdentityValue>();
    const alive = new Set<string>();
    const absent = new Map<string, AbsentValue>();
    for (const kv of nodesR.kvs) {
      const k = this.keys.parseNodeKey(kv.key);
      if (k === undefined) continue;
      if (k.what === 'identity') {
        const v = parseValue<IdentityValue>(kv.value);
        if (v !== undefined) identities.set(k.node, v);
      }
      if (k.what === 'alive') alive.add(k.node);
      if (k.what === 'absent') {
        const v = parseValue<AbsentValue>(kv.value);
        if (v !== undefined) absent.set(k.node, v);
      }
    }
    const netsR = await this.etcd.range(this.keys.nets(), { prefix: true });
    let blocks = 0;
    const perNet = new Map<string, { cidr: string; v: BlockValue }[]>();
    const configs = new Map<string, string[][]>();
    for (const kv of netsR.kvs) {
      const rest = kv.key.slice(this.keys.nets().length);
      const [net, what] = rest.split('/');
      if (what === 'config') {
        const c = parseValue<{ pools: string[][] }>(kv.value);
        if (c !== undefined && net !== undefined) configs.set(net, c.pools);
        continue;
      }
      const k = this.keys.parseBlockKey(kv.key);
      const v = parseValue<BlockValue>(kv.value);
      if (k === undefined || v === undefined) {
        if (what === 'blocks') problems.push(`unreadable block key ${kv.key}`);
        continue;
      }
      blocks++;
      perNet.set(k.net, [...(perNet.get(k.net) ?? []), { cidr: k.cidr, v }]);
      const id = identities.get(v.node);
      if (id === undefined)
        problems.push(`block ${k.cidr} of ${k.net} belongs to node ${v.node}, which has no identity`);
      else if (id.uid !== v.uid)
        problems.push(
          `block ${k.cidr} of ${k.net} names node ${v.node} with uid ${v.uid}, but the node's identity is ${id.uid}`,
        );
    }
    for (const [net, list] of perNet) {
      // Overlaps: one key per aligned block, so only blocks of different sizes (nodes whose block sizes
      // differ) can overlap.
      const spans = list.map((b) => {
        const c = parseCidr(b.cidr)!;
        return { cidr: b.cidr, fam: c.ip.family, lo: networkOf(c), hi: lastOf(c) };
      });
      spans.sort((a, b) => (a.fam !== b.fam ? a.fam - b.fam : a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0));
      // Against the span reaching furthest so far, not only the previous one: a large block (another
      // node's block size) can hold several.
      let reach: (typeof spans)[number] | undefined;
      for (const b of spans) {
        if (reach !== undefined && reach.fam === b.fam && b.lo <= reach.hi)
          problems.push(`blocks ${reach.cidr} and ${b.cidr} of ${net} overlap`);
        if (reach === undefined || reach.fam !== b.fam || b.hi > reach.hi) reach = b;
      }
      const pools = configs.get(net);
      const local = this.networks.get(net);
      if (pools === undefined) problems.push(`network ${net} has blocks but no config key`);
      if (local !== undefined) {
        for (const { cidr } of list) {
          if (local.pools.some((p) => p.find(cidr) !== undefined)) continue;
          const span = spans.find((x) => x.cidr === cidr)!;
          const inside = local.poolOverlapping({ family: span.fam, first: span.lo, last: span.hi });
          problems.push(
            inside === undefined
              ? `block ${cidr} of ${net} lies outside every pool`
              : `block ${cidr} of ${net} is a /${cidr.split('/')[1]} block inside the pools; this node's blocks there are /${inside.at(0n).cidr.split('/')[1]} (the nodes' block sizes differ)`,
          );
        }
      }
    }
    for (const [node, id] of identities) {
      if (alive.has(node)) continue;
      const a = absent.get(node);
      const since = a === undefined ? undefined : Date.parse(a.since);
      if (since !== undefined && (Date.now() - since) / 1000 > id.horizonSeconds) {
        problems.push(
          `node ${node} has been absent since ${a!.since}, past its ownership horizon (${id.horizonSeconds} s): \`berth node forget ${node}\` frees its blocks once its pods are gone`,
        );
      }
    }
    // This node: cluster.json against etcd, and leases outside owned blocks.
    for (const [net, n] of this.networks) {
      const etcdMine = new Set(
        (perNet.get(net) ?? [])
          .filter((b) => b.v.node === this.node.name && b.v.uid === this.node.uid)
          .map((b) => b.cidr),
      );
      for (const b of n.ownedBlocks()) {
        if (!etcdMine.has(b.cidr))
          problems.push(`${net}: block ${b.cidr} is used locally but etcd does not say this node owns it`);
      }
      for (const ip of await n.leasesOutsideBlocks())
        problems.push(`${net}: lease ${ip} lies outside the blocks this node owns`);
    }
    return { problems, checked: { blocks, nodes: identities.size, networks: perNet.size } };
  }

  /**
   * `berth node forget <node>`: frees a dead node's blocks. Refused while it is alive, and until it has been
   * absent longer than its ownership horizon + 2 × TTL + a margin (it has fenced itself by then), unless forced.
   */
  async forget(node: string, force: boolean): Promise<{ node: string; blocks: string[] }> {
    const { keys, etcd } = this;
    if (node === this.node.name)
      throw new CniError(ErrorCode.InvalidEnvironmentVariables, 'use `berth node leave` for this node');
    const idKv = await etcd.get(keys.identity(node));
    if (idKv === undefined) return this.finishForget(node, force);
    const id = parseValue<IdentityValue>(idKv.value);
    if (id === undefined)
      throw new CniError(ErrorCode.Internal, `node ${node}'s identity in etcd (${idKv.key}) cannot be read`);
    const aliveKv = await etcd.get(keys.alive(node));
    if (aliveKv !== undefined && !force) {
      throw new CniError(
        ErrorCode.TryAgainLater,
        `node ${node} is alive (its liveness key exists): refusing to forget it`,
      );
    }
    if (!force) {
      let absentKv = await etcd.get(keys.absent(node));
      if (absentKv === undefined) {
        await this.noteAbsent(node);
        absentKv = await etcd.get(keys.absent(node));
      }
      const since = Date.parse(parseValue<AbsentValue>(absentKv?.value ?? '')?.since ?? '');
      const needed = id.horizonSeconds + 2 * id.ttlSeconds + this.o.forgetMarginSeconds;
      const absentFor = Number.isNaN(since) ? 0 : (Date.now() - since) / 1000;
      if (absentFor < needed) {
        throw new CniError(
          ErrorCode.TryAgainLater,
          `node ${node} has been absent for ${Math.round(absentFor)} s; it may still use its blocks until its ownership horizon has passed: forget is accepted after ${needed} s of absence (horizon ${id.horizonSeconds} s + 2 × TTL ${id.ttlSeconds} s + margin ${this.o.forgetMarginSeconds} s), in ${Math.ceil(needed - absentFor)} s; --force accepts the risk of duplicate addresses`,
        );
      }
    }
    const theirs = await this.node.blocksOf(node);
    const forgotten: ForgottenValue = {
      at: new Date().toISOString(),
      by: this.node.name,
      uid: id.uid,
      bootId: id.bootId,
      blocks: theirs.map((x) => x.name),
    };
    const tombstone = JSON.stringify(forgotten);
    // Blocks go in batches of 64 (etcd's --max-txn-ops is 128), each by CAS. The first batch goes with the
    // tombstone and the identity's removal: from then on the node, should it come back, finds the tombstone
    // and stays fenced, so no block is free while the node that had it might still hand out its addresses. A
    // forget cut short after it is finished by running it again (finishForget).
    const [first = [], ...rest] = inBatches(theirs);
    const r = await etcd.txn(
      {
        compare: [
          ...(force ? [] : [{ key: keys.alive(node), target: 'CREATE' as const, createRevision: '0' }]),
          { key: keys.identity(node), target: 'MOD', modRevision: idKv.modRevision },
          ...blockCas(first),
        ],
        success: [
          ...first.map((x): TxnOp => ({ deleteRange: { key: x.kv.key } })),
          { deleteRange: { key: keys.identity(node) } },
          { deleteRange: { key: keys.absent(node) } },
          { put: { key: keys.forgotten(node), value: tombstone } },
        ],
        failure: [],
      },
      'forget',
    );
    if (!r.succeeded) {
      throw new CniError(
        ErrorCode.TryAgainLater,
        `node ${node} changed while being forgotten (it came back, or its blocks changed); nothing was deleted, run it again`,
      );
    }
    await this.deleteForgottenBlocks(node, tombstone, rest);
    this.o.log.log('warn', 'cluster: node forgotten, its blocks are free', {
      node,
      blocks: theirs.length,
      force,
    });
    return { node, blocks: forgotten.blocks };
  }

  /**
   * A forget cut short after its tombstone (lost connection, a batch whose block changed): the node's blocks
   * still claimed under the forgotten uid, or named in the tombstone, are deleted now, under the same tombstone.
   */
  private async finishForget(node: string, force: boolean): Promise<{ node: string; blocks: string[] }> {
    const { etcd, keys } = this;
    const fgKv = await etcd.get(keys.forgotten(node));
    const fg = fgKv === undefined ? undefined : parseValue<ForgottenValue>(fgKv.value);
    if (fgKv === undefined || fg === undefined)
      throw new CniError(ErrorCode.UnknownContainer, `node ${node} has no identity in etcd`);
    // A forced forget leaves a live node's alive key: refused again while it is there, as the first time.
    if (!force && (await etcd.get(keys.alive(node))) !== undefined) {
      throw new CniError(
        ErrorCode.TryAgainLater,
        `node ${node} is alive (its liveness key exists): refusing to forget it`,
      );
    }
    const listed = new Set(fg.blocks);
    const left = (await this.node.blocksOf(node)).filter((x) => x.claim.uid === fg.uid || listed.has(x.name));
    if (left.length === 0) {
      throw new CniError(
        ErrorCode.UnknownContainer,
        `node ${node} was forgotten already (by ${fg.by} at ${fg.at}); none of its blocks is left`,
      );
    }
    await this.deleteForgottenBlocks(node, fgKv.value, inBatches(left));
    this.o.log.log('warn', "cluster: the rest of a forgotten node's blocks are free", {
      node,
      blocks: left.length,
    });
    return { node, blocks: left.map((x) => x.name) };
  }

  /** Deletes batches of a forgotten node's blocks while its tombstone is the one written by this forget. */
  private async deleteForgottenBlocks(
    node: string,
    tombstone: string,
    batches: readonly (readonly { kv: KeyValue }[])[],
  ): Promise<void> {
    for (const batch of batches) {
      const r = await this.etcd.txn(
        {
          compare: [
            { key: this.keys.forgotten(node), target: 'VALUE', value: tombstone },
            ...blockCas(batch),
          ],
          success: batch.map((x): TxnOp => ({ deleteRange: { key: x.kv.key } })),
          failure: [],
        },
        'forget',
      );
      if (!r.succeeded) {
        // The tombstone gone or another: the node registered afresh, and what is left of its blocks is its own
        // again. Running the forget again would forget a live node.
        if ((await this.etcd.get(this.keys.forgotten(node)))?.value !== tombstone) {
          throw new CniError(
            ErrorCode.TryAgainLater,
            `node ${node} registered again while being forgotten: the blocks not freed yet are its own again; do not run the forget again unless it is gone`,
          );
        }
        throw new CniError(
          ErrorCode.TryAgainLater,
          `node ${node} is forgotten, but some of its blocks changed meanwhile; the rest were not deleted, run it again`,
        );
      }
    }
  }

  /** `berth node leave`: this node releases its (empty) blocks and its identity. */
  async leave(): Promise<{ released: string[]; kept: string[] }> {
    // Fenced while it leaves: the background reserve claim (which sees the released blocks' free addresses
    // gone) must not claim a block back between the releases and the lease's revoke, where it would be left
    // claimed by a node with no identity, which forget refuses. Lifted again if leaving fails, however.
    const before = this.node.identityFence;
    this.node.identityFence = `node ${this.node.name} is leaving the cluster`;
    let released: string[];
    try {
      released = await this.releaseAllForLeave();
    } catch (err) {
      this.node.identityFence = before;
      throw err;
    }
    const { keys, etcd } = this;
    await this.node.stop(true);
    await etcd.txn({
      compare: [],
      success: [
        { deleteRange: { key: keys.identity(this.node.name) } },
        { deleteRange: { key: keys.alive(this.node.name) } },
      ],
      failure: [],
    });
    this.node.identityFence = LEFT_FENCE(this.node.name);
    this.hasLeft = true;
    return { released, kept: [] };
  }

  /** leave's part before the identity goes: every empty block released; throws while any is left. */
  private async releaseAllForLeave(): Promise<string[]> {
    const released: string[] = [];
    const kept: string[] = [];
    for (const n of this.networks.values()) {
      const r = await n.leave();
      released.push(...r.released.map((c) => `${n.name} ${c}`));
      kept.push(...r.kept.map((k) => `${n.name} ${k.cidr} (${k.used} leases)`));
    }
    if (kept.length > 0) {
      throw new CniError(
        ErrorCode.TryAgainLater,
        `blocks still hold leases, not leaving: ${kept.join(', ')}; released ${released.length}`,
      );
    }
    // Blocks of networks this daemon has not served since it started (no lease store open for them).
    const left = (await this.node.blocksOf(this.node.name)).filter((b) => b.claim.uid === this.node.uid);
    if (left.length > 0) {
      throw new CniError(
        ErrorCode.TryAgainLater,
        `this node still owns ${left.length} block(s) of networks it has not served since it started (${left.map((b) => b.kv.key).join(', ')}); run an ADD/DEL on them first or forget from another node`,
      );
    }
    return released;
  }

  async rejoin(): Promise<void> {
    // Its lease revoked and keepalive stopped: rejoin would clear the fence without registering, and the
    // node would fence itself for good at its horizon. Joining again after leave is a restart.
    if (this.hasLeft)
      throw new CniError(
        ErrorCode.TryAgainLater,
        `${LEFT_FENCE(this.node.name)}; rejoin is for a forgotten node`,
      );
    await this.node.rejoin();
  }
}

const LEFT_FENCE = (node: string): string => `node ${node} left the cluster; restart berthd to join again`;

/** Batches of 64: with their compares and the tombstone's three writes, within etcd's 128 operations a txn. */
function inBatches<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += 64) out.push(items.slice(i, i + 64));
  return out;
}

/** Each block unchanged since it was read. */
function blockCas(batch: readonly { kv: KeyValue }[]): Compare[] {
  return batch.map((x) => ({ key: x.kv.key, target: 'MOD' as const, modRevision: x.kv.modRevision }));
}

function movedDataDir(network: string, theirs: string, ours: string): CniError {
  return new CniError(
    ErrorCode.InvalidNetworkConfig,
    `cluster network ${network}: this node's blocks are recorded in data dir ${theirs} (its cluster.json, beside its pods' leases), this config names ${ours}; ` +
      "a cluster network keeps its data dir (put dataDir back, or move the network's directory to the new one and restart berthd)",
  );
}

/** Lease files (named by an address) in a network directory; 0 when there is none. */
function leaseCount(dir: string): number {
  try {
    return fs.readdirSync(dir).filter((f) => parseIp(f) !== undefined).length;
  } catch {
    return 0;
  }
}
