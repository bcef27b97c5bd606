// berthd's view of one network: its leases in memory (by address, by attachment, occupancy per range set),
// kept in step with the lease files under the same flock berth-ipam and host-local take, and the requests
// of a moment committed as one batch so that one sync round covers all of them.
//
// The files stay the truth and keep lease-file-store's layout exactly (host-local's IP files and cursors,
// berth's `.berth/att/` records and `state.json` sentinel), so a plugin working on the files directly, before,
// after or at the same moment as the daemon, sees the same leases and trusts the same index.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { CniError, ErrorCode } from '../../cni-spec/errors';
import { loadNativeAddon } from '../../native-addon';
import { type Ip, formatIp, parseIp } from '../../address/ip';
import type { Occupancy } from '../allocator';
import * as disk from '../lease-dir';
import { checkContainerId, checkIfname } from '../names';
import { OrdinalBitmap, fitsBitmap, probeOccupancy } from '../occupancy';
import { type RangeSet, ipAtOrdinal, ordinalOf, rangeSetKey, rangeSetSize } from '../range-set';
import type {
  Attachment,
  Lease,
  LeaseMeta,
  LeaseSession,
  LeaseStore,
  NewLease,
  TransactOptions,
} from '../store';
import type { Logger } from './observer';
import type { FilesystemSync } from './fs-sync';
import { SpareFiles } from './spare-files';

/** Requests per batch: bounds the time the flock is held while plugins working on the files wait. */
const MAX_BATCH = 256;
/** Longest pause between attempts to take a flock held by someone else. */
const MAX_LOCK_BACKOFF_MS = 20;
/** Range-set bitmaps a network keeps (up to 2 MiB each); a set used again after eviction is rebuilt. */
const MAX_OCCUPANCIES = 8;

/**
 * Longest time batches follow each other under one flock hold before the index is written and the lock
 * let go, so that plugins working on the files get their turn under a steady load.
 */
const MAX_HOLD_NS = 25_000_000n;

// Only the sync leaves the event loop. Creates, writes and unlinks of small files are done in place: through
// the thread pool each cost several futex wake-ups and context switches (≈ 56 futex calls per pair against
// ≈ 5, and ~20 % less daemon CPU per pair, in README's berthd bench notes).

export interface NetworkStoreOptions {
  dataDir: string;
  network: string;
  bootId: string;
  /** When the current boot began (ms, wall clock; asked only after a reboot): a lease file written since is this boot's. */
  bootStarted?: () => number | undefined;
  log: Logger;
  /** The daemon's group commit, shared by every network (sync rounds per filesystem, fs-sync.ts). */
  syncer: FilesystemSync;
  now?: () => Date;
}

/**
 * One hold of the network's flock: several batches run under it back to back, each creating and removing
 * its lease files as its requests run; the index beside them (attachment records, cursors, the sentinel
 * and state.json) is written once, when the hold ends (queue empty, or held long enough that plugins on the
 * files get their turn). An attachment that came and went within one hold never gets a record.
 */
interface Hold {
  cursors: Set<number>;
  /** Attachments whose `.berth/att` record must be written or removed when the hold ends. */
  atts: Set<string>;
  /** The found index must be written again (the files were re-read and differ from it). */
  found: boolean;
  /** Anything in the network directory changed (the sentinel and state must follow). */
  changed: boolean;
  bootSeen: boolean;
  /** File work failed: end the hold, re-read the files at the next one. */
  failed: boolean;
  started: bigint;
}

/** One batch: what must reach the disk before its replies leave. */
interface Tx {
  /**
   * Its replies wait for a sync round: the batch created lease files, or answers with a lease an earlier
   * batch wrote whose round has not succeeded yet (an ADD again while the first is on its way to the disk).
   */
  waitsForSync: boolean;
  /** Its number: the sync round started after it covers every lease written by it and before it. */
  gen: number;
}

interface Pending {
  fn: (s: LeaseSession) => Promise<unknown>;
  readOnly: boolean;
  resolve(v: unknown): void;
  reject(err: unknown): void;
}

interface AttEntry {
  containerId: string;
  ifname: string;
  meta: LeaseMeta;
  ips: Set<string>;
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function ioError(what: string, err: unknown): CniError {
  return new CniError(ErrorCode.IoFailure, `${what}: ${(err as Error).message}`, undefined, { cause: err });
}

/** Occupancy over the set's ordinals, built from the taken addresses and updated on every change. */
class SetBitmap extends OrdinalBitmap {
  constructor(
    private readonly set: RangeSet,
    size: number,
  ) {
    super(size);
  }

  mark(ip: Ip, taken: boolean): void {
    const o = ordinalOf(this.set, ip);
    if (o !== undefined) this.setOrdinal(Number(o), taken);
  }
}

/** A network store's batch statistics before its first batch (also the sums of forgotten stores). */
export function zeroBatchStats() {
  return {
    batches: 0,
    batchedRequests: 0,
    fsyncRounds: 0,
    rescans: 0,
    lockWaits: 0,
    lockWaitSeconds: 0,
    batchSeconds: 0,
    fsyncSeconds: 0,
  };
}

/** The in-memory store of one network directory; `transact` joins the next batch. */
export class NetworkStore implements LeaseStore {
  readonly dataDir: string;
  readonly network: string;
  private readonly p: disk.LeaseDirPaths;
  /** Inodes of removed files, reused for new ones (see spare-files.ts). */
  private readonly spares: SpareFiles;
  /** Every IP-named file, parseable or not: an unreadable lease still holds its address. */
  private readonly taken = new Map<string, Ip>();
  /** IP-named files read at the last scan that hold no lease (see LeaseSession.releaseDeadFiles). */
  private readonly dead = new Set<string>();
  private readonly byIp = new Map<string, Lease>();
  private readonly byAtt = new Map<string, AttEntry>();
  /** Bitmaps of the range sets in use, least recently used first (at most MAX_OCCUPANCIES). */
  private readonly occupancies = new Map<string, SetBitmap>();
  private readonly cursors = new Map<number, Ip | undefined>();
  private indexState: { gen: number; bootId?: string; found?: string } = { gen: 0 };
  /** Attachments in the found index the state names (see lease-dir.ts): released, they leave a tombstone. */
  private foundKeys = new Set<string>();
  /** Since the last re-read: attachments without a record of their own, whose record is the found index. */
  private foundManaged = new Set<string>();
  /** The directory mtime berth stamped at its last commit; anything else means someone changed it. */
  private knownMtime: bigint | undefined;
  private lockFd: number | undefined;
  private lockIno: number | bigint | undefined;
  /** The filesystem of the network directory (its sync rounds are shared with the other networks on it). */
  private dev: number | bigint | undefined;
  /** The device of the network directory's filesystem, once the directory was opened. */
  get device(): number | bigint | undefined {
    return this.dev;
  }
  /** The last sync round this network's batches were covered by (stats count distinct rounds). */
  private lastRound = 0;
  private readonly queue: Pending[] = [];
  private running = false;
  private tx: Tx | undefined;
  /** Whether the request the batch is running now is read-only (TransactOptions.readOnly). */
  private runningReadOnly = false;
  private hold: Hold | undefined;
  /** Committed batches whose replies wait for a sync round. */
  private syncs = 0;
  /** Batches run so far (Tx.gen). */
  private batchGen = 0;
  /** Lease files written whose sync round has not succeeded yet, with the batch that wrote each. */
  private readonly unsynced = new Map<string, number>();
  /** Wakes the batch loop while it keeps a hold waiting for a request or the end of a sync round. */
  private wake: (() => void) | undefined;
  private readonly idleWaiters: (() => void)[] = [];
  /** The ranges of the last request that named them: pool gauges and `berth status`. */
  lastRangeSets: readonly RangeSet[] = [];
  readonly stats = zeroBatchStats();

  constructor(private readonly opts: NetworkStoreOptions) {
    this.dataDir = opts.dataDir;
    this.network = opts.network;
    this.p = disk.leaseDirPaths(opts.dataDir, opts.network);
    this.spares = new SpareFiles(this.p.spare);
  }

  get dir(): string {
    return this.p.dir;
  }

  transact<T>(fn: (s: LeaseSession) => Promise<T>, opts?: TransactOptions): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({
        fn,
        readOnly: opts?.readOnly === true,
        resolve: resolve,
        reject,
      });
      this.wake?.();
      if (!this.running) {
        this.running = true;
        // The loop reports every outcome through the queued promises; nothing can escape it.
        this.runBatches().catch((err: unknown) =>
          this.opts.log.log('error', 'batch loop failed', { error: String(err) }),
        );
      }
    });
  }

  async unwritableReason(): Promise<string | undefined> {
    return disk.unwritableReason(this.p);
  }

  /** Resolves once no batch runs or waits for its sync round (shutdown). */
  idle(): Promise<void> {
    if (!this.running && this.syncs === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Leases currently held, from memory (callers that need them fresh run a read-only transact first). */
  snapshot(): Lease[] {
    return [...this.byIp.values()];
  }

  /** Leases held, from memory (as of the last batch). */
  get leaseCount(): number {
    return this.byIp.size;
  }

  /** Someone else changed the directory since berthd last read or wrote it (host-local's ADD or DEL). */
  changedOnDisk(): boolean {
    if (this.knownMtime === undefined) return false;
    try {
      return fs.statSync(this.p.dir, { bigint: true }).mtimeNs !== this.knownMtime;
    } catch {
      return false;
    }
  }

  /** Used addresses per range set of the last config seen. */
  pools(): { set: RangeSet; size: bigint; used: number }[] {
    return this.lastRangeSets.map((set) => {
      let used = 0;
      for (const ip of this.taken.values()) if (ordinalOf(set, ip) !== undefined) used++;
      return { set, size: rangeSetSize(set), used };
    });
  }

  /** Nothing queued, running or waiting for its sync round. */
  get isIdle(): boolean {
    return !this.running && this.syncs === 0 && this.queue.length === 0;
  }

  close(): void {
    if (this.lockFd !== undefined) fs.closeSync(this.lockFd);
    this.lockFd = undefined;
    this.spares.close();
  }

  private checkIdle(): void {
    if (this.running || this.syncs > 0) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async runBatches(): Promise<void> {
    try {
      // Requests whose bytes arrived in the same turn of the event loop join this batch.
      await new Promise<void>((resolve) => setImmediate(resolve));
      for (;;) {
        if (this.queue.length === 0) {
          const hold = this.hold;
          if (hold === undefined) break;
          const heldTooLong = process.hrtime.bigint() - hold.started > MAX_HOLD_NS;
          // While a round's replies are out, their clients' next requests are on their way: keep the hold (and
          // the index writes it defers) for them rather than commit the index after every round.
          const waitingForReplies = this.syncs > 0;
          if (!waitingForReplies || hold.failed || heldTooLong) {
            await this.releaseHold();
            // A plugin blocked on the flock was just woken: give it a moment to take it before we do again.
            if (heldTooLong) await new Promise((resolve) => setTimeout(resolve, 1));
          } else {
            // Until a request comes, a round ends, or the hold has lasted its limit (a slow round, when
            // something else writes a lot to the filesystem, must not keep plugins on the files waiting).
            const left = Number(MAX_HOLD_NS - (process.hrtime.bigint() - hold.started)) / 1e6;
            await new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, Math.max(1, Math.ceil(left)));
              this.wake = () => {
                clearTimeout(timer);
                resolve();
              };
            });
            this.wake = undefined;
          }
          continue;
        }
        const batch = this.queue.splice(0, MAX_BATCH);
        const tx: Tx = { waitsForSync: false, gen: ++this.batchGen };
        const outcomes: ({ ok: true; value: unknown } | { ok: false; err: unknown })[] = [];
        let failure: unknown;
        const t0 = process.hrtime.bigint();
        try {
          if (this.hold === undefined) {
            await this.lock();
            this.stats.lockWaitSeconds += Number(process.hrtime.bigint() - t0) / 1e9;
            this.hold = {
              cursors: new Set(),
              atts: new Set(),
              found: false,
              changed: false,
              bootSeen: false,
              failed: false,
              started: process.hrtime.bigint(),
            };
            this.tx = tx;
            this.refresh();
          }
          this.tx = tx;
          for (const item of batch) {
            this.runningReadOnly = item.readOnly;
            try {
              outcomes.push({ ok: true, value: await item.fn(this.session) });
            } catch (err) {
              outcomes.push({ ok: false, err });
            }
          }
        } catch (err) {
          // Taking the lock or re-reading the files failed: nothing of this batch ran, and a hold taken
          // without a good view of the files must end now.
          failure = err instanceof CniError ? err : ioError(`lease store ${this.p.dir}`, err);
          this.knownMtime = undefined;
          if (this.hold !== undefined) {
            // Memory may be half re-read: write none of it.
            this.hold.failed = true;
            this.hold.atts.clear();
            this.hold.found = false;
            this.hold.cursors.clear();
          }
        } finally {
          this.tx = undefined;
        }
        this.stats.batches++;
        this.stats.batchedRequests += batch.length;
        const settle = (err?: unknown): void => {
          batch.forEach((item, i) => {
            const o = outcomes[i];
            if (failure !== undefined) item.reject(failure);
            else if (err !== undefined && !item.readOnly)
              item.reject(err instanceof CniError ? err : ioError('cannot make the leases durable', err));
            else if (o === undefined)
              item.reject(new CniError(ErrorCode.Internal, 'request lost in its batch'));
            else if (o.ok) item.resolve(o.value);
            else item.reject(o.err);
          });
        };
        // Only new leases wait for a sync round: a removal lost to a power cut brings back a lease of a
        // container that is gone (released by GC or the reboot rule), never a duplicate; the next round
        // covers it anyway.
        if (failure !== undefined || !tx.waitsForSync) settle();
        // The batch's files are written: its sync round next, while the next batch runs under the same hold.
        else this.syncBatch(settle, tx.gen);
        this.stats.batchSeconds += Number(process.hrtime.bigint() - t0) / 1e9;
        // More requests may have arrived while this batch ran; a short turn of the event loop lets them in.
        await new Promise<void>((resolve) => setImmediate(resolve));
        const heldTooLong =
          this.hold !== undefined && process.hrtime.bigint() - this.hold.started > MAX_HOLD_NS;
        if (this.hold !== undefined && this.queue.length > 0 && (this.hold.failed || heldTooLong)) {
          await this.releaseHold();
          if (heldTooLong) await new Promise((resolve) => setTimeout(resolve, 1));
        }
      }
    } finally {
      if (this.hold !== undefined)
        await this.releaseHold().catch((err: unknown) =>
          this.opts.log.log('error', 'cannot end the lock hold', { error: String(err) }),
        );
      this.running = false;
      this.checkIdle();
    }
  }

  /** Ends a hold: waits for its file work, writes the index beside the files, lets go of the flock. */
  private async releaseHold(): Promise<void> {
    const hold = this.hold!;
    const t0 = process.hrtime.bigint();
    try {
      this.commit(hold);
      if (hold.failed) this.knownMtime = undefined;
    } catch (err) {
      this.knownMtime = undefined;
      this.opts.log.log('error', 'cannot update the lease index; the files will be re-read', {
        network: this.network,
        error: String(err),
      });
    } finally {
      this.hold = undefined;
      this.unlock();
      this.stats.batchSeconds += Number(process.hrtime.bigint() - t0) / 1e9;
    }
  }

  /**
   * Group commit: the batch's replies wait for a sync round that starts after its files were written, one
   * syncfs(2) of the filesystem shared with every other network on it (fs-sync.ts): the new files' data, their
   * inodes and the directories' new names, then one flush of the disk's cache. Measured against an fdatasync
   * per file plus one fsync of the directory, for a round of 32 leases: 0.25 ms against 3 ms, and ~8 µs of CPU
   * per lease (the kernel's writeback included) against ~70 µs. The price: a round also writes whatever else is
   * dirty on that filesystem, so under someone else's heavy writing a round takes longer (and gathers more).
   * The same round makes the removals before it durable: only then are their inodes reused (spare-files.ts).
   */
  private syncBatch(settle: (err?: unknown) => void, gen: number): void {
    this.syncs++;
    const cooled = this.spares.takeCooling();
    let sync: Promise<{ round: number; seconds: number }>;
    try {
      sync = this.opts.syncer.sync(this.dev!, this.p.dir);
    } catch (err) {
      sync = Promise.reject(err);
    }
    sync
      .then(
        ({ round, seconds }) => {
          this.spares.warm(cooled);
          for (const [name, g] of this.unsynced) if (g <= gen) this.unsynced.delete(name);
          if (round !== this.lastRound) {
            this.lastRound = round;
            this.stats.fsyncRounds++;
            this.stats.fsyncSeconds += seconds;
          }
          settle();
        },
        (err: unknown) => {
          this.spares.cool(cooled);
          settle(err);
        },
      )
      .finally(() => {
        this.syncs--;
        this.checkIdle();
        this.wake?.();
      })
      .catch(() => undefined);
  }

  /** Takes the network's flock without blocking the event loop: a plugin on the files may hold it. */
  private async lock(): Promise<void> {
    const addon = loadNativeAddon();
    let delay = 1;
    for (;;) {
      if (this.lockFd === undefined) {
        fs.mkdirSync(this.p.dir, { recursive: true, mode: 0o755 });
        disk.ensureBerthDirs(this.p, [this.p.att, this.p.sets, this.p.tmp, this.p.spare]);
        // Non-blocking: a FIFO in the lock's place must not hold berthd in open(2).
        this.lockFd = fs.openSync(
          this.p.lock,
          fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_NONBLOCK,
          0o600,
        );
        const st = fs.fstatSync(this.lockFd);
        this.lockIno = st.ino;
        this.dev = st.dev;
      }
      if (addon.flock(this.lockFd, 'ex', true)) {
        // A lock file removed and recreated (the directory wiped) no longer excludes anyone: start over.
        let current: number | undefined;
        try {
          current = fs.statSync(this.p.lock).ino;
        } catch (err) {
          if (errnoOf(err) !== 'ENOENT') {
            // Not kept over a failed batch: a plugin on the files would wait for berthd's next one.
            this.unlock();
            throw err;
          }
        }
        if (current === this.lockIno) return;
        this.close();
        this.knownMtime = undefined;
        continue;
      }
      this.stats.lockWaits++;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, MAX_LOCK_BACKOFF_MS);
    }
  }

  private unlock(): void {
    if (this.lockFd !== undefined) loadNativeAddon().flock(this.lockFd, 'un');
  }

  /** Re-reads the files when anyone but this daemon changed the directory since its last commit. */
  private refresh(): void {
    const mtime = fs.statSync(this.p.dir, { bigint: true }).mtimeNs;
    if (mtime === this.knownMtime) return;
    this.rescan(this.knownMtime === undefined ? 'first use' : 'the directory changed outside the daemon');
  }

  private rescan(reason: string): void {
    const hold = this.hold!;
    this.stats.rescans++;
    this.taken.clear();
    this.dead.clear();
    this.byIp.clear();
    this.byAtt.clear();
    this.occupancies.clear();
    this.cursors.clear();
    // A plugin on the files recreates `.berth` without `spare`, and anyone may have removed any of it.
    disk.ensureBerthDirs(this.p, [this.p.att, this.p.sets, this.p.tmp, this.p.spare]);
    // Temp files of a writer that died: nobody writes them without the lock, which is held now.
    disk.clearTemp(this.p);
    this.foundKeys.clear();
    this.foundManaged.clear();
    // The spares are taken over again when next used (not by a read-only request).
    this.spares.close();
    // Records of berth's own (a tombstone too: no address left), and the found index of the state.
    const records = new Map<string, { ips: string[]; meta: LeaseMeta }>();
    const attFiles = new Set(fs.readdirSync(this.p.att));
    for (const key of attFiles) {
      try {
        const r: unknown = JSON.parse(disk.readRegularFile(join(this.p.att, key)).toString('utf8'));
        if (disk.isRecord(r)) records.set(key, { ips: r.ips, meta: r.meta });
      } catch {
        // An unreadable record is rewritten from the lease files below.
      }
    }
    const state = disk.readState(this.p);
    const oldFound = disk.readFoundEntries(this.p, state?.found);
    if (state?.found !== undefined && oldFound === undefined)
      this.opts.log.log('warn', 'found index missing or unusable; written again', { network: this.network });
    const firstSeen: LeaseMeta = {
      bootId: this.opts.bootId,
      createdAt: (this.opts.now?.() ?? new Date()).toISOString(),
      origin: 'found',
    };
    const thisBoot = disk.writtenSince(this.p.dir, this.opts.bootStarted);
    const stamped: string[] = [];
    disk.scanLeaseDir(this.p.dir, (l) => {
      if (l.spareStamp === true) {
        stamped.push(l.name);
        return;
      }
      this.taken.set(l.name, l.ip);
      const att = l.att;
      if (att === undefined) {
        if (l.corrupt === true) {
          this.dead.add(l.name);
          this.opts.log.log('warn', 'corrupt lease file keeps its address taken (until a GC)', {
            file: join(this.p.dir, l.name),
          });
        } else
          this.opts.log.log('warn', 'unreadable lease file keeps its address taken', {
            file: join(this.p.dir, l.name),
            error: l.problem,
          });
        return;
      }
      const key = disk.attKey(att);
      let entry = this.byAtt.get(key);
      if (entry === undefined) {
        // Its metadata is decided once all its leases are read (below).
        entry = { ...att, meta: firstSeen, ips: new Set() };
        this.byAtt.set(key, entry);
      }
      entry.ips.add(l.name);
    });
    // The metadata of each attachment, now that all its leases are read (see inheritedMeta).
    for (const [key, entry] of this.byAtt) {
      entry.meta = disk.inheritedMeta(
        (i) => entry.ips.has(i),
        [records.get(key), oldFound?.get(key)],
        firstSeen,
        thisBoot,
      );
      for (const name of entry.ips) {
        const ip = this.taken.get(name)!;
        this.byIp.set(name, { ip, containerId: entry.containerId, ifname: entry.ifname, meta: entry.meta });
      }
    }
    // A lease removed just before a power cut whose rename into .berth/spare was lost and whose stamp was
    // not: nobody's lease (the DEL was answered), and read as corrupt it would keep its address for good.
    for (const name of stamped) {
      try {
        fs.unlinkSync(join(this.p.dir, name));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      this.opts.log.log('warn', "removed a released lease that a power cut left behind (a spare's stamp)", {
        file: join(this.p.dir, name),
      });
    }
    // Attachments without a record of their own belong in the found index: written again when it differs.
    this.foundManaged = new Set([...this.byAtt.keys()].filter((k) => !attFiles.has(k)));
    const sameIps = (ips: readonly string[], entry: AttEntry): boolean =>
      ips.length === entry.ips.size && ips.every((i) => entry.ips.has(i));
    // The index on disk still serves when it holds exactly these, apart from attachments a record of their
    // own overrides (a tombstone hides a released one).
    const foundCurrent =
      oldFound === undefined
        ? this.foundManaged.size === 0
        : [...this.foundManaged].every((k) => {
            const e = oldFound.get(k);
            return e !== undefined && sameIps(e.ips, this.byAtt.get(k)!);
          }) && [...oldFound.keys()].every((k) => this.foundManaged.has(k) || attFiles.has(k));
    this.foundKeys = foundCurrent ? new Set(oldFound?.keys() ?? []) : new Set();
    if (!foundCurrent) {
      hold.found = true;
      hold.changed = true;
    }
    // Records that disagree with the files are rewritten at commit, as lease-file-store's rebuild does; a
    // tombstone stays only while the found index it hides an entry of stays.
    for (const key of attFiles) {
      const rec = records.get(key);
      const entry = this.byAtt.get(key);
      const same =
        rec !== undefined &&
        (entry !== undefined
          ? sameIps(rec.ips, entry)
          : rec.ips.length === 0 && foundCurrent && oldFound?.has(key) === true);
      if (!same) {
        hold.atts.add(key);
        hold.changed = true;
      }
    }
    this.indexState = { gen: state?.gen ?? 0 };
    if (state?.bootId !== undefined) this.indexState.bootId = state.bootId;
    if (foundCurrent && state?.found !== undefined) this.indexState.found = state.found;
    if (state === undefined) hold.changed = true;
    this.knownMtime = fs.statSync(this.p.dir, { bigint: true }).mtimeNs;
    if (reason !== 'first use')
      this.opts.log.log('debug', 're-read lease files', { network: this.network, reason });
  }

  private mark(name: string, ip: Ip, taken: boolean): void {
    if (taken) this.taken.set(name, ip);
    else this.taken.delete(name);
    for (const o of this.occupancies.values()) o.mark(ip, taken);
  }

  private readonly session: LeaseSession = {
    reserve: async (lease: NewLease, setId: number): Promise<boolean> => this.reserve(lease, setId),
    lastReserved: async (setId: number): Promise<Ip | undefined> => this.lastReserved(setId),
    isTaken: async (ip: Ip): Promise<boolean> => this.taken.has(formatIp(ip)),
    occupancy: async (set: RangeSet): Promise<Occupancy> => this.occupancy(set),
    leasesOf: async (a: Attachment): Promise<Lease[]> => this.leasesOf(a),
    all: async (): Promise<Lease[]> => this.snapshot(),
    leasesFromEarlierBoots: async (): Promise<Lease[]> => {
      if (this.indexState.bootId === this.opts.bootId) return [];
      // A read-only request (STATUS, CHECK) releases none of them: the boot is seen only by one that does,
      // else the reboot rule would never run for this boot's earlier leases.
      if (!this.runningReadOnly) this.hold!.bootSeen = true;
      return this.snapshot().filter((l) => l.meta.bootId !== this.opts.bootId);
    },
    release: async (lease: Lease): Promise<void> => this.release(lease),
    releaseDeadFiles: async (): Promise<Ip[]> => this.releaseDeadFiles(),
  };

  private releaseDeadFiles(): Ip[] {
    const out: Ip[] = [];
    for (const name of [...this.dead]) {
      const ip = this.taken.get(name);
      this.dead.delete(name);
      if (ip === undefined || this.byIp.has(name)) continue;
      try {
        this.spares.remove(join(this.p.dir, name));
      } catch (err) {
        this.hold!.failed = true;
        throw ioError(`cannot remove ${join(this.p.dir, name)}`, err);
      }
      this.hold!.changed = true;
      this.mark(name, ip, false);
      out.push(ip);
    }
    return out;
  }

  /** The attachment's `.berth/att` record follows its leases when the hold ends (see `Hold`). */
  private recordAtt(key: string): void {
    this.hold!.atts.add(key);
  }

  private reserve(lease: NewLease, setId: number): boolean {
    checkContainerId(lease.containerId);
    if (lease.ifname !== '') checkIfname(lease.ifname);
    const tx = this.tx!;
    const hold = this.hold!;
    const name = formatIp(lease.ip);
    // Under the lock, with the view re-read whenever anyone else changed the directory, memory is the truth.
    if (this.taken.has(name)) return false;
    const target = join(this.p.dir, name);
    // Written into a spare inode, then link(2)ed into place: host-local's exclusive create, never visible
    // half-written, and no inode allocated (see spare-files.ts). The batch's sync round makes it durable.
    try {
      this.spares.placeNew(target, disk.leaseContent(lease));
    } catch (err) {
      hold.failed = true;
      if (errnoOf(err) !== 'EEXIST') throw ioError(`cannot write lease ${target}`, err);
      // Only a writer ignoring the flock can do this: re-read everything, and let the caller retry.
      this.knownMtime = undefined;
      throw new CniError(
        ErrorCode.TryAgainLater,
        `lease ${target} appeared outside the network's lock; the leases are re-read, retry`,
      );
    }
    tx.waitsForSync = true;
    this.unsynced.set(name, tx.gen);
    hold.changed = true;
    this.mark(name, lease.ip, true);
    const key = disk.attKey(lease);
    let entry = this.byAtt.get(key);
    if (entry === undefined) {
      entry = { containerId: lease.containerId, ifname: lease.ifname, meta: lease.meta, ips: new Set() };
      this.byAtt.set(key, entry);
    }
    entry.ips.add(name);
    this.byIp.set(name, {
      ip: lease.ip,
      containerId: lease.containerId,
      ifname: lease.ifname,
      meta: entry.meta,
    });
    this.recordAtt(key);
    this.cursors.set(setId, lease.ip);
    hold.cursors.add(setId);
    return true;
  }

  private lastReserved(setId: number): Ip | undefined {
    if (this.cursors.has(setId)) return this.cursors.get(setId);
    let ip: Ip | undefined;
    try {
      ip = parseIp(disk.readRegularFile(disk.cursorPath(this.p, setId)).toString('utf8').trim());
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT')
        this.opts.log.log('warn', 'cannot read a cursor', {
          network: this.network,
          setId,
          error: String(err),
        });
    }
    this.cursors.set(setId, ip);
    return ip;
  }

  private occupancy(set: RangeSet): Occupancy {
    const size = rangeSetSize(set);
    // Probed against the map of taken addresses when too large for a bitmap.
    if (!fitsBitmap(size)) return probeOccupancy((o) => this.taken.has(formatIp(ipAtOrdinal(set, o))));
    const key = rangeSetKey(set);
    let occ = this.occupancies.get(key);
    if (occ === undefined) {
      occ = new SetBitmap(set, Number(size));
      for (const ip of this.taken.values()) occ.mark(ip, true);
      // The least recently used goes: pods' runtimeConfig.ipRanges, or a cluster network's owned blocks as
      // they change, each make a set of their own, and every lease change updates every bitmap kept.
      if (this.occupancies.size >= MAX_OCCUPANCIES)
        this.occupancies.delete(this.occupancies.keys().next().value!);
    } else this.occupancies.delete(key);
    this.occupancies.set(key, occ);
    return occ;
  }

  private leasesOf(a: Attachment): Lease[] {
    checkContainerId(a.containerId);
    if (a.ifname !== '') checkIfname(a.ifname);
    const namesOf = (key: string): string[] => [...(this.byAtt.get(key)?.ips ?? [])];
    const exact = namesOf(disk.attKey(a));
    const names =
      exact.length > 0 || a.ifname === ''
        ? exact
        : // host-local matches legacy files (id only) when no exact match exists.
          namesOf(disk.attKey({ containerId: a.containerId, ifname: '' }));
    if (this.tx !== undefined && names.some((n) => this.unsynced.has(n))) this.tx.waitsForSync = true;
    return names.map((n) => this.byIp.get(n)!);
  }

  private release(lease: Lease): void {
    const hold = this.hold!;
    const name = formatIp(lease.ip);
    const target = join(this.p.dir, name);
    try {
      this.spares.remove(target);
    } catch (err) {
      hold.failed = true;
      throw ioError(`cannot remove lease ${target}`, err);
    }
    hold.changed = true;
    this.mark(name, lease.ip, false);
    this.byIp.delete(name);
    const key = disk.attKey(lease);
    const entry = this.byAtt.get(key);
    if (entry !== undefined) {
      entry.ips.delete(name);
      if (entry.ips.size === 0) {
        this.byAtt.delete(key);
        // Kept for the tombstone its record becomes when the found index holds it.
        this.gone.set(key, entry);
      }
      this.recordAtt(key);
    }
  }

  /** Attachments released to nothing since the last commit: the content of a tombstone. */
  private readonly gone = new Map<string, AttEntry>();

  private writeAtomic(target: string, data: string): void {
    this.spares.replace(target, data);
  }

  /**
   * Writes what lease-file-store keeps beside the IP files: cursors, attachment records, then the directory
   * sentinel and state.json, so that a plugin on the files next trusts the index instead of rebuilding it.
   */
  private commit(hold: Hold): void {
    if (!hold.changed && !hold.bootSeen) {
      this.gone.clear();
      return;
    }
    // After a failed step the records still follow memory (which changes only after each file step
    // succeeded), so pod identities are kept; but no sentinel: the next holder re-reads the files.
    for (const setId of hold.cursors) {
      const ip = this.cursors.get(setId);
      if (ip === undefined) continue;
      // A hint where the next search starts: one that cannot be written (a directory in its place) must not
      // stop the records, sentinel and state.json after it, or every batch re-reads the directory.
      try {
        this.writeAtomic(disk.cursorPath(this.p, setId), formatIp(ip));
      } catch (err) {
        this.opts.log.log('warn', 'cannot write a range set cursor', {
          network: this.network,
          rangeSet: setId,
          error: (err as Error).message,
        });
      }
    }
    // The found index, written whole in one write: the attachments without a record of their own.
    let foundId = this.indexState.found;
    if (hold.found && !hold.failed) {
      const entries: disk.FoundEntry[] = [];
      for (const key of this.foundManaged) {
        const e = this.byAtt.get(key);
        if (hold.atts.has(key) || e === undefined || e.ips.size === 0) continue;
        entries.push({ containerId: e.containerId, ifname: e.ifname, ips: [...e.ips], meta: e.meta });
      }
      foundId = entries.length === 0 ? undefined : disk.newFoundId();
      if (foundId !== undefined) disk.writeFound(this.p, disk.encodeFound(foundId, entries));
      this.foundKeys = new Set(entries.map((e) => disk.attKey(e)));
      hold.found = false;
    }
    for (const key of hold.atts) {
      const entry = this.byAtt.get(key);
      const file = join(this.p.att, key);
      if (entry === undefined || entry.ips.size === 0) {
        const gone = this.gone.get(key);
        // A tombstone over the found entry (or the record goes).
        if (this.foundKeys.has(key) && gone !== undefined)
          this.writeAtomic(file, disk.encodeRecord({ ...gone, ips: [] }));
        else if (this.foundKeys.has(key)) {
          const sep = key.lastIndexOf(':');
          const tomb = { containerId: key.slice(0, sep), ifname: key.slice(sep + 1), ips: [], meta: {} };
          this.writeAtomic(file, disk.encodeRecord(tomb));
        } else this.spares.remove(file);
        continue;
      }
      const rec = disk.encodeRecord(entry);
      // A new attachment (the common case) gets its record in place: a torn record only makes readers
      // rebuild it from the lease files, which are written and synced separately.
      try {
        this.spares.placeNew(file, rec);
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
        this.writeAtomic(file, rec);
      }
    }
    this.gone.clear();
    if (hold.failed) return;
    // lease-file-store's sentinel, so that both sides trust one index.
    const dirMtimeNs = disk.stampSentinel(this.p.dir, this.opts.now?.() ?? new Date(), (m) =>
      this.opts.log.log('warn', m, { network: this.network }),
    );
    this.knownMtime = dirMtimeNs === disk.NO_SENTINEL ? undefined : BigInt(dirMtimeNs);
    const gen = this.indexState.gen + 1;
    const bootId = hold.bootSeen ? this.opts.bootId : (this.indexState.bootId ?? this.opts.bootId);
    this.indexState = { gen, bootId };
    if (foundId !== undefined) this.indexState.found = foundId;
    // A new generation also retires lease-file-store's occupancy bitmaps, which it rebuilds from the files.
    this.writeAtomic(this.p.state, disk.encodeState({ gen, dirMtimeNs, bootId, found: foundId }));
    if (foundId === undefined) fs.rmSync(this.p.found, { force: true });
  }
}
