// This node in the cluster: its permanent identity key (a second machine with the same name cannot inherit
// its blocks), its `alive` key under a lease kept alive every TTL/3, re-registration when the lease lapsed,
// and the self-fence: past the ownership horizon since etcd last answered, the node stops allocating even in
// its own blocks, which is what lets `berth node forget` elsewhere free them safely afterwards.
import type { EtcdGateway, KeyValue } from './etcd-gateway';
import { EtcdUnavailableError } from './etcd-gateway';
import type { ClusterKeys } from './keys';
import {
  type AliveValue,
  type BlockValue,
  type ForgottenValue,
  type IdentityValue,
  parseValue,
} from './keys';
import type { ClusterStats } from './stats';
import type { Underlay } from './underlay';
import { contactAheadFence } from '../ipam/cluster-blocks';
import { loadNativeAddon } from '../native-addon';

export interface ClusterLog {
  log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void;
}

export interface ClusterNodeOptions {
  etcd: EtcdGateway;
  keys: ClusterKeys;
  name: string;
  uid: string;
  bootId: string;
  ttlSeconds: number;
  horizonSeconds: number;
  version: string;
  /** Published in `alive` for the other nodes' routes (src/cluster/underlay.ts). */
  underlay?: Underlay;
  log: ClusterLog;
  stats: ClusterStats;
  /** Monotonic ms. */
  clock?: () => number;
  wallClock?: () => Date;
}

/** The node refuses to run: its name belongs to another machine. */
export class IdentityConflictError extends Error {}

/**
 * The clock of ownership ages: CLOCK_BOOTTIME, which counts the time the machine was suspended (the
 * monotonic clock of performance.now() stops meanwhile, and a node suspended past its horizon, forgotten by
 * then, went on allocating in blocks others had taken). performance.now() with an addon built before it.
 */
export function suspendAwareClock(): () => number {
  let addon: ReturnType<typeof loadNativeAddon> | undefined;
  try {
    addon = loadNativeAddon();
  } catch {
    addon = undefined;
  }
  const boot = addon?.bootTimeMs?.bind(addon);
  return boot ?? (() => performance.now());
}

export class ClusterNode {
  readonly name: string;
  readonly uid: string;
  private lease: string | undefined;
  private registering: Promise<string> | undefined;
  private keepalive: NodeJS.Timeout | undefined;
  /** Set when etcd says this node must not allocate (forgotten with its pods possibly alive, identity lost). */
  identityFence: string | undefined;
  /** Monotonic time of an earlier process's last contact, from cluster.json (until this one reaches etcd). */
  private inheritedContact: number | undefined;
  private readonly started: number;
  private readonly clock: () => number;
  readonly wallClock: () => Date;
  /** Called when etcd says a forgotten node came back with a new boot: its local blocks are gone. */
  onForgottenNewBoot: (() => void) | undefined;
  private stopped = false;
  /** Seen past the ownership horizon since the last registration (see fenceReason). */
  private pastHorizon = false;
  /** A fence an earlier process recorded in cluster.json: held until this process has registered. */
  private inheritedFence: string | undefined;
  /** The identity and start of the current alive key, set by this process's first registration on. */
  private aliveAs: { identityText: string; since: string } | undefined;
  /** Times the node went past its horizon: a registration begun before the latest one does not lift it. */
  private gaps = 0;

  constructor(readonly o: ClusterNodeOptions) {
    this.name = o.name;
    this.uid = o.uid;
    this.clock = o.clock ?? (() => performance.now());
    this.wallClock = o.wallClock ?? (() => new Date());
    this.started = this.clock();
  }

  get etcd(): EtcdGateway {
    return this.o.etcd;
  }

  get keys(): ClusterKeys {
    return this.o.keys;
  }

  get currentLease(): string | undefined {
    return this.lease;
  }

  /** An earlier process's last contact (wall clock, from cluster.json): the fence does not restart with the daemon. */
  inheritContact(wall: string): void {
    const t = Date.parse(wall);
    if (Number.isNaN(t)) return;
    const ahead = contactAheadFence(this.name, wall, this.wallClock());
    if (ahead !== undefined) {
      this.inheritFence(ahead);
      return;
    }
    const mono = this.clock() - (this.wallClock().getTime() - t);
    if (this.inheritedContact === undefined || mono > this.inheritedContact) this.inheritedContact = mono;
  }

  /** Monotonic ms of the last answer from etcd (this process, else the inherited one, else start). */
  lastContact(): number {
    return this.o.etcd.lastContact ?? this.inheritedContact ?? this.started;
  }

  lastContactAgeSeconds(): number {
    return (this.clock() - this.lastContact()) / 1000;
  }

  /** Wall-clock time of the last contact (for cluster.json). */
  lastContactWall(): string {
    return new Date(this.wallClock().getTime() - (this.clock() - this.lastContact())).toISOString();
  }

  /**
   * Why this node must not allocate now, or undefined. Once seen past the horizon, the node stays fenced
   * after etcd answers again, until it has registered anew: meanwhile another node may have forgotten it and
   * taken its blocks, and only the registration (which finds the `forgotten` tombstone) says so. The first
   * answer after the gap, a keepalive's, says nothing about that.
   */
  fenceReason(): string | undefined {
    if (this.identityFence !== undefined) return this.identityFence;
    if (this.inheritedFence !== undefined)
      return `${this.inheritedFence} (recorded before berthd restarted; it allocates again once it has registered)`;
    const age = this.lastContactAgeSeconds();
    if (age > this.o.horizonSeconds) {
      if (!this.pastHorizon) {
        this.pastHorizon = true;
        this.gaps++;
      }
      return `node ${this.name} has not reached etcd for ${Math.round(age)} s (ownership horizon ${this.o.horizonSeconds} s): it no longer allocates, even in its own blocks, until etcd answers again and it has registered anew`;
    }
    if (this.pastHorizon) {
      return `node ${this.name} was cut off from etcd past its ownership horizon (${this.o.horizonSeconds} s); it allocates again once it has registered anew (its blocks may have been forgotten meanwhile)`;
    }
    return undefined;
  }

  /**
   * An earlier process's fence, from cluster.json (forgotten, left, or cut off past the horizon): a restart
   * does not lift it, only this process's registration does (which finds a `forgotten` tombstone again).
   */
  inheritFence(reason: string): void {
    // Registered already (a network first used after the start): the registration has had its say.
    if (this.aliveAs === undefined) this.inheritedFence ??= reason;
  }

  /**
   * The fence cluster.json must carry, for berth-ipam on the files and for the next berthd: the one in force,
   * including the sticky one after a gap past the horizon that etcd's first answers do not lift.
   */
  recordedFence(): string | undefined {
    return this.identityFence ?? this.inheritedFence ?? (this.pastHorizon ? this.fenceReason() : undefined);
  }

  /** Registers (identity, lease, alive) and keeps the lease alive. Throws IdentityConflictError only. */
  async start(): Promise<void> {
    try {
      await this.ensureAlive();
    } catch (err) {
      if (err instanceof IdentityConflictError) throw err;
      this.o.log.log('warn', 'cluster: not registered yet, retrying in the background', {
        error: (err as Error).message,
      });
    }
    const every = Math.max(200, (this.o.ttlSeconds * 1000) / 3);
    this.keepalive = setInterval(() => {
      this.tick().catch((err: unknown) =>
        this.o.log.log('debug', 'cluster: keepalive failed', { error: String(err) }),
      );
    }, every);
    this.keepalive.unref();
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    // Before anything is sent: a gap past the horizon must be seen before an answer ends it.
    this.fenceReason();
    if (this.pastHorizon && this.lease !== undefined && this.registering === undefined) {
      // The lease may have outlived the gap (a horizon shorter than the TTL); register anyway.
      const old = this.lease;
      this.lease = undefined;
      await this.o.etcd.leaseRevoke(old).catch(() => undefined);
    }
    if (this.lease === undefined) {
      await this.ensureAlive();
      return;
    }
    const ttl = await this.o.etcd.leaseKeepAlive(this.lease);
    if (ttl <= 0) {
      this.o.log.log(
        'warn',
        'cluster: liveness lease lapsed (etcd unreachable or the process paused); registering again',
        {
          lease: this.lease,
        },
      );
      this.lease = undefined;
      await this.ensureAlive();
    }
  }

  /** Stops the keepalive; with `revoke`, the alive key goes at once (graceful stop). */
  async stop(revoke: boolean): Promise<void> {
    this.stopped = true;
    if (this.keepalive !== undefined) clearInterval(this.keepalive);
    if (revoke && this.lease !== undefined) {
      try {
        await this.o.etcd.leaseRevoke(this.lease);
      } catch {
        // Its TTL ends it anyway.
      }
    }
  }

  /** The claim txn found `alive` not under our lease: forget it, the next ensureAlive registers again. */
  leaseLost(lease: string): void {
    if (this.lease === lease) this.lease = undefined;
  }

  /** The current lease, registering first when there is none. Throws when etcd is unreachable or fenced. */
  ensureAlive(): Promise<string> {
    if (this.lease !== undefined) return Promise.resolve(this.lease);
    this.registering ??= this.register().finally(() => {
      this.registering = undefined;
    });
    return this.registering;
  }

  private aliveValue(since: string): AliveValue {
    return {
      uid: this.uid,
      bootId: this.o.bootId,
      pid: process.pid,
      version: this.o.version,
      since,
      ...(this.o.underlay?.underlay !== undefined ? { underlay: this.o.underlay.underlay } : {}),
      ...(this.o.underlay?.underlay6 !== undefined ? { underlay6: this.o.underlay.underlay6 } : {}),
    };
  }

  /**
   * An underlay found after the start (the node's network was not up yet): published in the alive key at
   * once, under the current lease while the identity is still ours (true); without a lease, the next
   * registration carries it (false). Other nodes then route this node's blocks. A node that left or was
   * forgotten publishes nothing (false).
   */
  async publishUnderlay(underlay: Underlay): Promise<boolean> {
    this.o.underlay = underlay;
    // A registration on its way built its alive value before this: let it land, then publish over it.
    if (this.registering !== undefined) await this.registering.catch(() => undefined);
    const lease = this.lease;
    const as = this.aliveAs;
    if (this.stopped || this.identityFence !== undefined || lease === undefined || as === undefined)
      return false;
    const { keys } = this.o;
    const r = await this.o.etcd.txn(
      {
        compare: [{ key: keys.identity(this.name), target: 'VALUE', value: as.identityText }],
        success: [
          { put: { key: keys.alive(this.name), value: JSON.stringify(this.aliveValue(as.since)), lease } },
        ],
        failure: [],
      },
      'register',
    );
    if (!r.succeeded) throw new Error(`node ${this.name}'s identity changed: underlay not published`);
    return true;
  }

  private identityValue(): IdentityValue {
    return {
      uid: this.uid,
      since: this.wallClock().toISOString(),
      bootId: this.o.bootId,
      horizonSeconds: this.o.horizonSeconds,
      ttlSeconds: this.o.ttlSeconds,
    };
  }

  private async register(): Promise<string> {
    const { etcd, keys } = this.o;
    const gapsAtStart = this.gaps;
    const idKey = keys.identity(this.name);
    const forgottenKey = keys.forgotten(this.name);
    // 1. identity: created once; ours (same uid) → refreshed with this boot's settings.
    let identityText: string | undefined;
    for (let attempt = 0; identityText === undefined && attempt < 5; attempt++) {
      const mine = JSON.stringify(this.identityValue());
      const r = await etcd.txn(
        {
          compare: [
            { key: idKey, target: 'CREATE', createRevision: '0' },
            { key: forgottenKey, target: 'CREATE', createRevision: '0' },
          ],
          success: [{ put: { key: idKey, value: mine } }],
          failure: [{ range: { key: idKey } }, { range: { key: forgottenKey } }],
        },
        'register',
      );
      if (r.succeeded) {
        identityText = mine;
        break;
      }
      const idKv = 'range' in r.responses[0]! ? r.responses[0].range.kvs[0] : undefined;
      const fgKv = 'range' in r.responses[1]! ? r.responses[1].range.kvs[0] : undefined;
      if (idKv !== undefined) {
        const id = parseValue<IdentityValue>(idKv.value);
        if (id?.uid !== this.uid) {
          throw new IdentityConflictError(
            `node name ${this.name} belongs to another machine in etcd (uid ${id?.uid ?? '?'}, ours ${this.uid}); refusing to use its blocks. Give this node another --node-name, or run \`berth node forget ${this.name}\` if that machine is gone`,
          );
        }
        // Ours: refresh it (same uid), by CAS so a concurrent forget is not overwritten.
        const u = await etcd.txn(
          {
            compare: [{ key: idKey, target: 'MOD', modRevision: idKv.modRevision }],
            success: [{ put: { key: idKey, value: mine } }],
            failure: [],
          },
          'register',
        );
        if (u.succeeded) identityText = mine;
        continue;
      }
      if (fgKv !== undefined) {
        const fg = parseValue<ForgottenValue>(fgKv.value);
        if (fg?.uid === this.uid && fg.bootId === this.o.bootId) {
          this.identityFence = `node ${this.name} was forgotten (by ${fg.by} at ${fg.at}) while this boot's pods may still run: drain them, then run \`berth node rejoin\``;
          throw new Error(this.identityFence);
        }
        // Another machine under this name, while a forget cut short left blocks under the forgotten uid: they
        // would stay claimed by nobody (this uid never adopts them). The forget is finished first.
        if (fg !== undefined && fg.uid !== this.uid) {
          const left = (await this.blocksOf(this.name)).filter((b) => b.claim.uid === fg.uid).length;
          if (left > 0) {
            throw new IdentityConflictError(
              `node name ${this.name} was forgotten (by ${fg.by} at ${fg.at}), but ${left} of its blocks are still claimed under the forgotten uid ${fg.uid}: run \`berth node forget ${this.name}\` again to free them; this node registers after that`,
            );
          }
        }
        // A new boot (or another machine): nothing of the old blocks is in use any more; start afresh.
        const d = await etcd.txn(
          {
            compare: [{ key: forgottenKey, target: 'MOD', modRevision: fgKv.modRevision }],
            success: [{ deleteRange: { key: forgottenKey } }],
            failure: [],
          },
          'register',
        );
        if (d.succeeded) {
          this.o.log.log('info', 'cluster: this node was forgotten before this boot; registering afresh', {
            node: this.name,
          });
          this.onForgottenNewBoot?.();
        }
      }
    }
    if (identityText === undefined)
      throw new Error(`could not register node ${this.name} (identity kept changing)`);
    // 2. alive under a new lease, only while the identity is still ours.
    const lease = await etcd.leaseGrant(this.o.ttlSeconds);
    const since = this.wallClock().toISOString();
    const alive = this.aliveValue(since);
    const r = await etcd.txn(
      {
        compare: [{ key: idKey, target: 'VALUE', value: identityText }],
        success: [
          { put: { key: keys.alive(this.name), value: JSON.stringify(alive), lease: lease.id } },
          { deleteRange: { key: keys.absent(this.name) } },
        ],
        failure: [],
      },
      'register',
    );
    if (!r.succeeded) {
      await etcd.leaseRevoke(lease.id).catch(() => undefined);
      throw new Error(`node ${this.name}'s identity changed while registering`);
    }
    this.identityFence = undefined;
    this.inheritedFence = undefined;
    if (this.gaps === gapsAtStart) this.pastHorizon = false;
    this.lease = lease.id;
    this.aliveAs = { identityText, since };
    this.o.stats.inc('berthd_cluster_lease_registrations_total', 'Times this node registered its alive key.');
    this.o.log.log('info', 'cluster: node registered', { node: this.name, lease: lease.id });
    return lease.id;
  }

  /** Every block key in etcd whose claim names `node` (any uid), with its `net cidr` name and claim. */
  async blocksOf(node: string): Promise<{ kv: KeyValue; name: string; claim: BlockValue }[]> {
    const { etcd, keys } = this.o;
    const r = await etcd.range(keys.nets(), { prefix: true });
    return keys
      .blocksNamedBy(r.kvs, node)
      .map((b) => ({ kv: b.kv, name: `${b.net} ${b.cidr}`, claim: b.claim }));
  }

  /** Clears the forgotten fence after its pods were drained (`berth node rejoin`). */
  async rejoin(): Promise<void> {
    const fg = await this.o.etcd.get(this.o.keys.forgotten(this.name));
    if (fg !== undefined) {
      await this.o.etcd.txn({
        compare: [{ key: this.o.keys.forgotten(this.name), target: 'MOD', modRevision: fg.modRevision }],
        success: [{ deleteRange: { key: this.o.keys.forgotten(this.name) } }],
        failure: [],
      });
    }
    this.identityFence = undefined;
    this.onForgottenNewBoot?.();
    await this.ensureAlive();
  }

  /** True when `err` means etcd could not be asked (as opposed to an answer we did not like). */
  static unreachable(err: unknown): boolean {
    return err instanceof EtcdUnavailableError;
  }
}
