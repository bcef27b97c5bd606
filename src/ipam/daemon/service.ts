// What berthd can do, independent of HTTP: run berth-ipam's own handlers against the in-memory network
// stores, and the admin operations (list, show, release, GC, status). The `berth` CLI runs the same
// service in-process on the files when no daemon answers, so both paths behave alike.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { CniError, ErrorCode } from '../../cni-spec/errors';
import { type Request, parseRequest } from '../../cni-spec/request';
import type { Result } from '../../cni-spec/types/result';
import { type Cidr } from '../../address/cidr';
import { type Ip, formatIp, parseIp, sameIp } from '../../address/ip';
import { blockedOrdinals } from '../allocator';
import type { ClusterAllocator } from '../cluster-blocks';
import type { IpamConfig } from '../config';
import { DEFAULT_DATA_DIR, normalDataDir } from '../config';
import { type IpamDeps, add, check, del, gc, status } from '../handlers';
import { networkNameProblem, shortContainerId } from '../../cni-spec/identifiers';
import { describeRangeSet } from '../range-set';
import type { Lease, LeaseSession, LeaseStore } from '../store';
import type { Logger } from './observer';
import type { Counters } from './observer';
import { FilesystemSync } from './fs-sync';
import { NetworkStore, zeroBatchStats } from './network-store';
import type {
  AdminGcReply,
  AdminGcRequest,
  AdminReleaseReply,
  Envelope,
  LeaseView,
  Method,
  NetworkView,
} from './protocol';

/** A CniError that also says which HTTP status carries it. */
export class ServiceError extends CniError {
  constructor(
    readonly status: number,
    code: number,
    msg: string,
    details?: string,
  ) {
    super(code, msg, details);
  }
}

export interface ServiceOptions {
  /** Where networks are listed from when a request names none (`--data-dir`). */
  dataDir?: string;
  bootId: string | undefined;
  /** When the current boot began (ms, wall clock; boot-id.ts bootStartedMs), asked only after a reboot. */
  bootStarted?: () => number | undefined;
  log: Logger;
  metrics?: Counters;
  /** Cluster networks' blocks (berthd started with etcd endpoints); without it a cluster network's ADD fails. */
  cluster?: ClusterAllocator;
  now?: () => Date;
  /** Group commit across networks; a new one by default (tests pass one with a slow or failing syncfs). */
  syncer?: FilesystemSync;
  /**
   * berthd's list of the data dirs it has served (`<state dir>/berthd-data-dirs.json`): read at start and
   * listed beside `dataDir`, so a restarted daemon still shows networks that only a plugin config named.
   * The CLI working on the files has none.
   */
  dataDirsFile?: string;
  /** More such lists, only read (the CLI on the files: each state dir berthd may have used). */
  readDataDirsFiles?: readonly string[];
}

interface DataDirsState {
  version: 1;
  dataDirs: string[];
}

/** What a CNI call did beyond its reply: the leases it newly took (undone when the client is gone). */
export interface CallTrace {
  reserved: Lease[];
  /**
   * Another ADD of the same attachment ran at the same time: it may answer with the lease this one
   * reserved (ADD again is idempotent), so this one's undo must leave it (see Service.undo).
   */
  superseded?: boolean;
}

export interface LeaseFilter {
  network?: string;
  dataDir?: string;
}

/**
 * Whether a lease was made after `at` (ms): berth's recorded time, or its file's mtime (for one it found,
 * and for one host-local wrote again since berth made it: a DEL and ADD of the same id and address).
 */
function madeAfter(store: NetworkStore, l: Lease, at: number): boolean {
  if (l.meta.origin !== 'found' && l.meta.createdAt !== undefined) {
    const created = Date.parse(l.meta.createdAt);
    if (!Number.isNaN(created) && created > at) return true;
  }
  return (leaseFileMtimeMs(store, l) ?? -Infinity) > at;
}

/** The lease file's modification time (ms, with its fraction); undefined when it cannot be read. */
function leaseFileMtimeMs(store: NetworkStore, l: Lease): number | undefined {
  try {
    return fs.statSync(join(store.dir, formatIp(l.ip))).mtimeMs;
  } catch {
    return undefined;
  }
}

/** One range set's addresses, for /metrics (a network name may exist in several data dirs). */
export interface PoolGauge {
  network: string;
  dataDir: string;
  rangeSet: number;
  size: number;
  used: number;
  free: number;
}

function leaseView(store: NetworkStore, l: Lease): LeaseView {
  const v: LeaseView = {
    network: store.network,
    dataDir: store.dataDir,
    ip: formatIp(l.ip),
    containerId: l.containerId,
    ifname: l.ifname,
  };
  const m = l.meta;
  if (m.pod !== undefined) {
    const pod: NonNullable<LeaseView['pod']> = {};
    if (m.pod.namespace !== undefined) pod.namespace = m.pod.namespace;
    if (m.pod.name !== undefined) pod.name = m.pod.name;
    if (m.pod.uid !== undefined) pod.uid = m.pod.uid;
    v.pod = pod;
  }
  if (m.netns !== undefined) v.netns = m.netns;
  if (m.origin === 'found') {
    // Found (host-local's, at a take-over): its meta holds when, and in which boot, berth first read it. The
    // lease file's time is its age: a leak of last week must not look a second old.
    const written = leaseFileMtimeMs(store, l);
    // Rounded as Node rounds a Stats date (the fraction of a float mtimeMs can fall just below a whole ms).
    if (written !== undefined) v.createdAt = new Date(Math.round(written)).toISOString();
    else if (m.createdAt !== undefined) v.createdAt = m.createdAt;
  } else {
    if (m.createdAt !== undefined) v.createdAt = m.createdAt;
    if (m.bootId !== undefined) v.bootId = m.bootId;
  }
  if (m.origin !== undefined) v.origin = m.origin;
  return v;
}

/** How often a scrape may have a changed network directory read again. */
const SCRAPE_REREAD_MS = 60_000;

/** By network, then address: on the addresses held, not parsed back from the views' text per comparison. */
function compareLeases(a: { view: LeaseView; ip: Ip }, b: { view: LeaseView; ip: Ip }): number {
  if (a.view.network !== b.view.network) return a.view.network < b.view.network ? -1 : 1;
  if (a.ip.family !== b.ip.family) return a.ip.family - b.ip.family;
  return a.ip.value < b.ip.value ? -1 : a.ip.value > b.ip.value ? 1 : 0;
}

export class Service {
  private readonly stores = new Map<string, NetworkStore>();
  /** The traces of the ADDs running now, by attachment (network, container id, ifname). */
  private readonly addsInFlight = new Map<string, Set<CallTrace>>();
  private readonly lastExclude = new Map<string, readonly Cidr[]>();
  readonly dataDir: string;
  private readonly syncer: FilesystemSync;
  /** Batch statistics of networks forgot by `sweep`: the sums exported as counters must never go down. */
  private readonly retiredStats: NetworkStore['stats'] = zeroBatchStats();

  /** Data dirs served besides `dataDir` (remembered in `dataDirsFile` across restarts). */
  private readonly servedDataDirs = new Set<string>();

  constructor(private readonly opts: ServiceOptions) {
    this.dataDir = normalDataDir(opts.dataDir ?? DEFAULT_DATA_DIR);
    this.syncer = opts.syncer ?? new FilesystemSync();
    if (opts.dataDirsFile !== undefined) this.loadDataDirs(opts.dataDirsFile);
    for (const file of opts.readDataDirsFiles ?? []) this.loadDataDirs(file);
  }

  /** Whether berthd serves this data dir already (`--data-dir`, or one a plugin call used). */
  servesDataDir(given: string): boolean {
    const dataDir = normalDataDir(given);
    return dataDir === this.dataDir || this.servedDataDirs.has(dataDir);
  }

  /** Data dirs listed when a request names none: `--data-dir`, then the others served, in order. */
  get knownDataDirs(): string[] {
    return [this.dataDir, ...[...this.servedDataDirs].filter((d) => d !== this.dataDir)];
  }

  private loadDataDirs(file: string): void {
    let text: string;
    try {
      // Every data dir it names is opened as root: only a file of our own that nobody else may write counts
      // (a state dir in /tmp, say, where any user could leave one naming a directory of theirs).
      const st = fs.lstatSync(file);
      const uid = process.getuid?.();
      if (!st.isFile() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o022) !== 0) {
        this.opts.log.log('warn', 'ignoring a list of data dirs served that is not our own private file', {
          file,
        });
        return;
      }
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        this.opts.log.log('warn', 'cannot read the list of data dirs served', {
          file,
          error: (err as Error).message,
        });
      return;
    }
    try {
      const st = JSON.parse(text) as Partial<DataDirsState>;
      if (!Array.isArray(st.dataDirs)) throw new Error('no "dataDirs" list');
      for (const d of st.dataDirs)
        if (typeof d === 'string' && d.startsWith('/')) this.servedDataDirs.add(normalDataDir(d));
    } catch (err) {
      // An index, not the truth: a corrupt list only costs the networks it named until a plugin names them.
      this.opts.log.log('warn', 'ignoring a corrupt list of data dirs served', {
        file,
        error: (err as Error).message,
      });
    }
  }

  /** Writes the list whole (temp file, rename): a crash leaves the old list or the new one. */
  private saveDataDirs(): void {
    const file = this.opts.dataDirsFile;
    if (file === undefined) return;
    const state: DataDirsState = { version: 1, dataDirs: [...this.servedDataDirs] };
    const tmp = `${file}.tmp-${process.pid}`;
    try {
      // A new file (no symlink followed), not one someone put there.
      fs.rmSync(tmp, { force: true });
      fs.writeFileSync(tmp, `${JSON.stringify(state)}\n`, { mode: 0o600, flag: 'wx' });
      fs.renameSync(tmp, file);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      this.opts.log.log('warn', 'cannot write the list of data dirs served', {
        file,
        error: (err as Error).message,
      });
    }
  }

  private rememberDataDir(dataDir: string): void {
    if (dataDir === this.dataDir || this.servedDataDirs.has(dataDir)) return;
    // Not a path a call could make its directory (a file, a NUL byte): that call fails, and its data dir
    // must not be listed for good after it.
    if (!usableDirPath(dataDir)) return;
    this.servedDataDirs.add(dataDir);
    this.saveDataDirs();
  }

  /**
   * The store of a network directory; one per directory for the daemon's lifetime. A data dir a plugin call
   * uses is remembered (listed again after a restart); one an admin read only looked at (`served` false) is
   * not, so that naming a directory in a listing does not make it berthd's.
   */
  store(given: string, network: string, served = true): NetworkStore {
    // One data dir, one name: `/x/`, `/x` and `//x` in configs must not make three served data dirs, each
    // listing the same networks (and `berth gc` find each network "in several data dirs").
    const dataDir = normalDataDir(given);
    const key = join(dataDir, network);
    if (served) this.rememberDataDir(dataDir);
    let s = this.stores.get(key);
    if (s === undefined) {
      s = new NetworkStore({
        dataDir,
        network,
        bootId: this.opts.bootId ?? 'unknown',
        ...(this.opts.bootStarted ? { bootStarted: this.opts.bootStarted } : {}),
        log: this.opts.log,
        syncer: this.syncer,
        ...(this.opts.now ? { now: this.opts.now } : {}),
      });
      this.stores.set(key, s);
    }
    return s;
  }

  /** Waits for every batch and fsync in flight (shutdown), then closes the lock files. */
  async drain(): Promise<void> {
    await Promise.all([...this.stores.values()].map((s) => s.idle()));
  }

  close(): void {
    for (const s of this.stores.values()) s.close();
    this.syncer.close();
  }

  /**
   * Forgets idle networks whose directory is gone (a temp data dir removed, a network deleted), closing
   * their lock file; a later request for them starts afresh from the files.
   */
  sweep(): number {
    let n = 0;
    for (const [key, s] of this.stores) {
      if (!s.isIdle || fs.existsSync(s.dir)) continue;
      for (const k of Object.keys(this.retiredStats) as (keyof NetworkStore['stats'])[])
        this.retiredStats[k] += s.stats[k];
      s.close();
      this.stores.delete(key);
      this.lastExclude.delete(s.dir);
      n++;
    }
    if (n > 0) {
      const devices = [...this.stores.values()].map((s) => s.device).filter((d) => d !== undefined);
      this.syncer.closeExcept(new Set(devices));
    }
    // A data dir that is gone (a removed temp dir) is no longer listed, nor remembered.
    let forgot = false;
    for (const d of this.servedDataDirs) {
      if (fs.existsSync(d) || [...this.stores.values()].some((s) => s.dataDir === d)) continue;
      this.servedDataDirs.delete(d);
      forgot = true;
    }
    if (forgot) this.saveDataDirs();
    return n;
  }

  private deps(trace: CallTrace, req?: Request): IpamDeps {
    const metrics = this.opts.metrics;
    return {
      bootId: this.opts.bootId,
      // To the log, and to the caller's stderr as the program on the files prints it (a no-op on the HTTP API).
      warn: (msg) => {
        this.opts.log.log('warn', msg);
        req?.stderr(`${msg}\n`);
      },
      now: this.opts.now ?? (() => new Date()),
      ...(this.opts.cluster !== undefined ? { cluster: this.opts.cluster } : {}),
      openStore: (conf: IpamConfig): LeaseStore => {
        const store = this.store(conf.dataDir, conf.network);
        // The pools the metrics and `berth status` show: not from a DEL or GC whose ranges no longer parse
        // (released by attachment, no range sets), which emptied them until the next ADD.
        if (conf.rangeSets.length > 0) {
          store.lastRangeSets = conf.rangeSets;
          this.lastExclude.set(store.dir, conf.exclude);
        }
        const network = conf.network;
        return {
          unwritableReason: () => store.unwritableReason(),
          transact: (fn, o) =>
            store.transact(
              (s) =>
                fn({
                  ...s,
                  reserve: async (lease, setId) => {
                    const ok = await s.reserve(lease, setId);
                    if (ok) {
                      trace.reserved.push({ ...lease });
                      metrics?.inc('berthd_allocations_total', 'Addresses handed out.', { network });
                    }
                    return ok;
                  },
                  release: async (lease) => {
                    await s.release(lease);
                    const i = trace.reserved.findIndex((r) => sameIp(r.ip, lease.ip));
                    if (i !== -1) trace.reserved.splice(i, 1);
                    this.countRelease(network);
                  },
                } satisfies LeaseSession),
              o,
            ),
        };
      },
    };
  }

  /** Runs one forwarded CNI command with berth-ipam's handlers; the reply is the result (ADD) or undefined. */
  async call(
    method: Method<unknown>,
    envelope: unknown,
    trace: CallTrace = { reserved: [] },
  ): Promise<Result | undefined> {
    if (typeof envelope !== 'object' || envelope === null || Array.isArray(envelope)) {
      throw new ServiceError(
        400,
        ErrorCode.DecodingFailure,
        'request body must be a JSON object {"env": {...}, "config": {...}}',
      );
    }
    const e = envelope as Partial<Envelope>;
    if (
      typeof e.env !== 'object' ||
      e.env === null ||
      Array.isArray(e.env) ||
      !Object.values(e.env).every((v) => typeof v === 'string')
    ) {
      throw new ServiceError(
        400,
        ErrorCode.DecodingFailure,
        'request "env" must be an object of strings (the CNI_* variables)',
      );
    }
    if (
      typeof e.config !== 'string' &&
      (typeof e.config !== 'object' || e.config === null || Array.isArray(e.config))
    ) {
      throw new ServiceError(
        400,
        ErrorCode.DecodingFailure,
        'request "config" must be the network config (object or JSON text)',
      );
    }
    // The daemon never executes other plugins: a curl caller need not invent a CNI_PATH.
    const env: Record<string, string> = { CNI_PATH: '/opt/cni/bin', ...e.env, CNI_COMMAND: method.command };
    const req = parseRequest({
      env,
      stdin: typeof e.config === 'string' ? e.config : JSON.stringify(e.config),
    });
    return this.run(req, trace);
  }

  /**
   * Runs berth-ipam's handler for an already parsed request (its `command` decides which): the warm path's
   * berth-ipam calls, and berth-bridge's IPAM calls in berthd, go straight here.
   */
  async run(req: Request, trace: CallTrace = { reserved: [] }): Promise<Result | undefined> {
    const deps = this.deps(trace, req);
    switch (req.command) {
      case 'ADD': {
        // ADDs of one attachment at the same time (a runtime's retry while the first waits for its sync
        // round) each mark the others: whichever of them is answered may hand out what another reserved.
        const key = `${req.config.name}\0${req.containerId}\0${req.ifname}`;
        const others = this.addsInFlight.get(key) ?? new Set<CallTrace>();
        for (const t of others) t.superseded = true;
        if (others.size > 0) trace.superseded = true;
        this.addsInFlight.set(key, others.add(trace));
        try {
          return await add(req, deps);
        } catch (err) {
          // Failed after its lease was reserved (the lease's sync round failed: ENOSPC, EIO): the caller is
          // told the ADD failed, and a runtime need not DEL after that, so the address goes back now.
          if (trace.reserved.length > 0)
            await this.undo(trace).catch((e: unknown) =>
              this.opts.log.log('warn', 'cannot give back the address of a failed ADD', {
                network: req.config.name,
                container: req.containerId,
                error: String(e),
              }),
            );
          throw err;
        } finally {
          others.delete(trace);
          if (others.size === 0) this.addsInFlight.delete(key);
        }
      }
      case 'DEL':
        await del(req, deps);
        return undefined;
      case 'CHECK':
        await check(req, deps);
        return undefined;
      case 'GC':
        await gc(req, deps);
        return undefined;
      case 'STATUS':
        await status(req, deps);
        return undefined;
    }
  }

  /**
   * Gives back what an ADD took when its caller went away before the reply (it will never use it); nothing
   * when another ADD of the attachment ran at the same time, which may have answered with it (the runtime's
   * DEL after its failed ADD releases it then). An ADD of it that starts later queues behind this undo.
   */
  async undo(trace: CallTrace): Promise<number> {
    if (trace.superseded === true) {
      trace.reserved.length = 0;
      return 0;
    }
    let undone = 0;
    const byStore = new Map<NetworkStore, Lease[]>();
    for (const l of trace.reserved) {
      for (const s of this.stores.values()) {
        if (
          s
            .snapshot()
            .some((h) => sameIp(h.ip, l.ip) && h.containerId === l.containerId && h.ifname === l.ifname)
        ) {
          byStore.set(s, [...(byStore.get(s) ?? []), l]);
        }
      }
    }
    for (const [store, leases] of byStore) {
      await store.transact(async (s) => {
        for (const l of leases) {
          const held = (await s.leasesOf(l)).find((h) => sameIp(h.ip, l.ip));
          if (held !== undefined) {
            await s.release(held);
            undone++;
            this.countRelease(store.network);
          }
        }
      });
    }
    trace.reserved.length = 0;
    return undone;
  }

  /** Every release berthd makes counts (plugin calls, admin release and GC, a gone caller's undo). */
  private countRelease(network: string): void {
    this.opts.metrics?.inc('berthd_releases_total', 'Addresses released.', { network });
  }

  /** Network directories under a data dir (those with host-local's `lock` file), plus those served. */
  private networks(given: LeaseFilter): NetworkStore[] {
    const filter = given.dataDir !== undefined ? { ...given, dataDir: normalDataDir(given.dataDir) } : given;
    const dirs = filter.dataDir !== undefined ? [filter.dataDir] : this.knownDataDirs;
    const out = new Map<string, NetworkStore>();
    for (const s of this.stores.values()) {
      if (filter.dataDir !== undefined && s.dataDir !== filter.dataDir) continue;
      // A data dir an admin read named once (`berth leases --data-dir X`) is not listed as served after it.
      if (filter.dataDir === undefined && !this.servesDataDir(s.dataDir)) continue;
      if (filter.network !== undefined && s.network !== filter.network) continue;
      if (fs.existsSync(s.dir)) out.set(s.dir, s);
    }
    for (const dataDir of dirs) {
      let names: string[];
      try {
        names = fs.readdirSync(dataDir);
      } catch (err) {
        // A data dir served but not made yet (no ADD so far) holds nothing; another one the caller named
        // (a typo in a script) is a mistake to say, not an empty node.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          if (filter.dataDir === undefined || this.servesDataDir(dataDir)) continue;
          throw new ServiceError(404, ErrorCode.InvalidNetworkConfig, `data dir ${dataDir} does not exist`);
        }
        const why = `cannot list ${dataDir}: ${(err as Error).message}`;
        if (filter.dataDir !== undefined) throw new ServiceError(500, ErrorCode.IoFailure, why);
        // One data dir gone bad (a file now, no permission) does not hide every other's networks.
        this.opts.log.log('warn', why);
        continue;
      }
      for (const name of names) {
        if (filter.network !== undefined && name !== filter.network) continue;
        if (networkNameProblem(name) !== undefined || !fs.existsSync(join(dataDir, name, 'lock'))) continue;
        const s = this.store(dataDir, name, false);
        out.set(s.dir, s);
      }
    }
    if (filter.network !== undefined && out.size === 0) {
      throw new ServiceError(
        404,
        ErrorCode.InvalidNetworkConfig,
        `unknown network ${JSON.stringify(filter.network)}: no lease directory under ${dirs.join(', ')}`,
      );
    }
    return [...out.values()];
  }

  private leasesIn(store: NetworkStore): Promise<Lease[]> {
    return store.transact(async (s) => s.all(), { readOnly: true });
  }

  /** A read-only turn on the network: its files read again when someone else changed them. */
  private reread(store: NetworkStore): Promise<void> {
    return store.transact(async () => undefined, { readOnly: true });
  }

  async list(filter: LeaseFilter): Promise<LeaseView[]> {
    // Appended one by one: a network's leases spread into one push() overflowed the stack past ~125,000.
    const rows: { view: LeaseView; ip: Ip }[] = [];
    for (const s of this.networks(filter))
      for (const l of await this.leasesIn(s)) rows.push({ view: leaseView(s, l), ip: l.ip });
    return rows.sort(compareLeases).map((r) => r.view);
  }

  /** Leases by address, or by container id (a unique prefix of at least 4 characters counts too). */
  async show(query: string, filter: LeaseFilter): Promise<LeaseView[]> {
    const all = await this.list(filter);
    const ip = parseIp(query);
    if (ip !== undefined) return all.filter((l) => sameIp(parseIp(l.ip)!, ip));
    const exact = all.filter((l) => l.containerId === query);
    if (exact.length > 0 || query.length < 4) return exact;
    return all.filter((l) => l.containerId.startsWith(query));
  }

  /**
   * `berth leases release`: frees the lease of an address. With `holder` (the attachment the operator saw and
   * confirmed), only while that attachment still holds it: between the look and the release, the pod may
   * have gone and another taken the address.
   */
  async release(
    ipText: string,
    filter: LeaseFilter,
    holder?: { containerId: string; ifname: string },
  ): Promise<AdminReleaseReply> {
    const ip = parseIp(ipText);
    if (ip === undefined)
      throw new ServiceError(
        400,
        ErrorCode.InvalidEnvironmentVariables,
        `${JSON.stringify(ipText)} is not an IP address`,
      );
    const holders = this.networks(filter).filter((s) => fs.existsSync(join(s.dir, formatIp(ip))));
    if (holders.length > 1) {
      throw new ServiceError(
        409,
        ErrorCode.InvalidEnvironmentVariables,
        `${formatIp(ip)} is leased in several networks (${holders.map((s) => s.network).join(', ')}): name one with --network`,
      );
    }
    const released: LeaseView[] = [];
    for (const store of holders) {
      await store.transact(async (s) => {
        const lease = (await s.all()).find((l) => sameIp(l.ip, ip));
        if (lease === undefined) return;
        if (
          holder !== undefined &&
          (lease.containerId !== holder.containerId || lease.ifname !== holder.ifname)
        ) {
          throw new ServiceError(
            409,
            ErrorCode.InvalidEnvironmentVariables,
            `${formatIp(ip)} changed hands: now held by ${lease.containerId}${lease.ifname !== '' ? `/${lease.ifname}` : ''}, not ${holder.containerId}${holder.ifname !== '' ? `/${holder.ifname}` : ''}; not released`,
          );
        }
        await s.release(lease);
        released.push(leaseView(store, lease));
        this.countRelease(store.network);
      });
    }
    if (released.length === 0)
      throw new ServiceError(404, ErrorCode.UnknownContainer, `no lease holds ${formatIp(ip)}`);
    return { released };
  }

  async adminGc(body: unknown): Promise<AdminGcReply> {
    const r = body as Partial<AdminGcRequest>;
    if (typeof r.network !== 'string' || !Array.isArray(r.valid)) {
      throw new ServiceError(
        400,
        ErrorCode.DecodingFailure,
        'GC needs {"network": N, "valid": [{"containerID", "ifname"}...], "dryRun"?}',
      );
    }
    for (const a of r.valid) {
      if (
        typeof a !== 'object' ||
        a === null ||
        typeof a.containerID !== 'string' ||
        typeof a.ifname !== 'string'
      ) {
        throw new ServiceError(
          400,
          ErrorCode.DecodingFailure,
          'each valid attachment needs string "containerID" and "ifname"',
        );
      }
    }
    // A string "true" taken for false would release for real what the operator meant to look at.
    if (r.dryRun !== undefined && typeof r.dryRun !== 'boolean')
      throw new ServiceError(400, ErrorCode.DecodingFailure, '"dryRun" must be true or false');
    const dryRun = r.dryRun === true;
    const stores = this.networks({
      network: r.network,
      ...(typeof r.dataDir === 'string' ? { dataDir: r.dataDir } : {}),
    });
    if (stores.length === 0)
      throw new ServiceError(404, ErrorCode.UnknownContainer, `no network ${JSON.stringify(r.network)} here`);
    if (stores.length > 1) {
      throw new ServiceError(
        409,
        ErrorCode.InvalidEnvironmentVariables,
        `network ${r.network} is in several data dirs (${stores.map((s) => s.dataDir).join(', ')}): name one with --data-dir`,
      );
    }
    const store = stores[0];
    const listedAt = typeof r.listedAt === 'string' ? Date.parse(r.listedAt) : NaN;
    const validKeys = new Set(r.valid.map((a) => `${a.containerID}\n${a.ifname}`));
    const validIds = new Set(r.valid.map((a) => a.containerID));
    const released = await store!.transact(
      async (s) => {
        const leases = await s.all();
        // A valid entry that is only the start of a lease's container id (`berth leases` prints 12
        // characters) matches nothing, and the pod it means would be released: refused instead.
        const short = shortContainerId(
          validIds,
          leases.map((l) => l.containerId),
        );
        if (short !== undefined)
          throw new ServiceError(
            400,
            ErrorCode.InvalidEnvironmentVariables,
            `valid container ${JSON.stringify(short.id)} is only the start of ${short.whole}: give whole ids`,
          );
        const gone: Lease[] = [];
        for (const l of leases) {
          // As berth-ipam's GC: a legacy lease names no interface and stays while its container is valid.
          const keep =
            l.ifname === '' ? validIds.has(l.containerId) : validKeys.has(`${l.containerId}\n${l.ifname}`);
          if (keep) continue;
          // Made after the list was taken: its pod is newer than the list. A lease berth made carries its
          // time; one it found (host-local's) carries when berth first read it, so its file's time counts.
          if (!Number.isNaN(listedAt) && madeAfter(store!, l, listedAt)) continue;
          if (!dryRun) {
            await s.release(l);
            this.countRelease(store!.network);
          }
          gone.push(l);
        }
        return gone;
      },
      { readOnly: dryRun },
    );
    return { network: r.network, dryRun, released: released.map((l) => leaseView(store!, l)) };
  }

  async networkViews(filter: LeaseFilter = {}): Promise<NetworkView[]> {
    const out: NetworkView[] = [];
    for (const s of this.networks(filter)) {
      const view: NetworkView = {
        network: s.network,
        dataDir: s.dataDir,
        // Counted, not copied (a list of 100,000 leases only to take its length).
        leases: await this.reread(s).then(() => s.leaseCount),
      };
      const pools = s.pools();
      if (pools.length > 0) {
        const exclude = this.lastExclude.get(s.dir) ?? [];
        view.pools = pools.map((p, i) => {
          const blocked = blockedOrdinals(p.set, exclude).reduce((n, b) => n + (b.hi - b.lo + 1n), 0n);
          const size = Number(p.size - blocked);
          return {
            rangeSet: i,
            ranges: describeRangeSet(p.set),
            size,
            used: p.used,
            free: Math.max(0, size - p.used),
          };
        });
      }
      out.push(view);
    }
    return out.sort((a, b) => (a.network < b.network ? -1 : a.network > b.network ? 1 : 0));
  }

  /** Leases per network from memory (a scrape must not take locks), also before any config was seen. */
  leaseGauges(): { network: string; dataDir: string; leases: number }[] {
    const stores = this.servedStores();
    for (const s of stores) this.rereadIfChanged(s);
    return stores.map((s) => ({
      network: s.network,
      dataDir: s.dataDir,
      leases: s.leaseCount,
    }));
  }

  /** When each store was last read again for a scrape (monotonic ms). */
  private readonly scrapeRereads = new WeakMap<NetworkStore, number>();

  /**
   * A directory someone else changed (host-local's ADD or DEL) is read again in the background, at most once a
   * minute per network: the gauges, read from memory, kept what berthd last saw until its next call there.
   * The scrape after it shows the files.
   */
  private rereadIfChanged(s: NetworkStore): void {
    const now = performance.now();
    const last = this.scrapeRereads.get(s);
    if ((last !== undefined && now - last < SCRAPE_REREAD_MS) || !s.changedOnDisk()) return;
    this.scrapeRereads.set(s, now);
    this.reread(s).catch((err: unknown) => {
      this.opts.log.log('debug', 'cannot read a network again for the metrics', {
        network: s.network,
        error: String(err),
      });
    });
  }

  /** The stores of data dirs served: not one an admin read opened (`berth leases --data-dir X`). */
  private servedStores(): NetworkStore[] {
    return [...this.stores.values()].filter((s) => this.servesDataDir(s.dataDir));
  }

  /** Pool gauges from memory only (a scrape must not take locks). */
  poolGauges(): PoolGauge[] {
    const out: PoolGauge[] = [];
    for (const s of this.servedStores()) {
      const exclude = this.lastExclude.get(s.dir) ?? [];
      s.pools().forEach((p, i) => {
        const blocked = blockedOrdinals(p.set, exclude).reduce((n, b) => n + (b.hi - b.lo + 1n), 0n);
        const size = Number(p.size - blocked);
        const free = Math.max(0, size - p.used);
        out.push({ network: s.network, dataDir: s.dataDir, rangeSet: i, size, used: p.used, free });
      });
    }
    return out;
  }

  /** Sums since start over every network served, forgotten ones included. */
  batchStats(): NetworkStore['stats'] {
    const t = { ...this.retiredStats };
    for (const s of this.stores.values())
      for (const k of Object.keys(t) as (keyof typeof t)[]) t[k] += s.stats[k];
    return t;
  }
}

/** A directory, or nothing yet (made by the call), and a path the kernel takes. */
function usableDirPath(dir: string): boolean {
  if (dir.includes('\0')) return false;
  try {
    return fs.statSync(dir).isDirectory();
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}
