// The file store: host-local's exact layout under <dataDir>/<network>/ (the IP files stay the truth), plus
// berth's metadata and a rebuildable index in a `.berth/` subdirectory, so a node can switch between
// host-local and berth-ipam on the same directory.
//
// Layout (see README "berth-ipam"):
//   <net>/lock                    flock(2), shared with host-local (go-filemutex)
//   <net>/<ip>                    "<containerID>\r\n<ifname>", mode 0600; written to .berth/tmp, fsynced,
//                                 then link(2)ed to its name: exclusive, and never visible half-written
//   <net>/last_reserved_ip.<set>  host-local's round-robin cursor
//   <net>/.berth/state.json       index state: generation, last boot seen, directory mtime sentinel
//   <net>/.berth/att/<id>:<if>    one JSON record per attachment berth wrote: its IPs and metadata (boot id,
//                                 netns, pod); one with no IP left is a tombstone over the found index
//   <net>/.berth/found            the attachments of the leases berth found without a record (host-local's,
//                                 at a take-over), written whole by the scan that found them (lease-dir.ts)
//   <net>/.berth/sets/<hash>      occupancy bitmap of one range set (JSON header line, then bits)
//   <net>/.berth/tmp/             temp files; emptied under the lock
//
// host-local walks the whole tree (subdirectories included) on DEL/CHECK and matches file *contents*
// against "<id>\r\n<ifname>" or "<id>": every file berth keeps under .berth/ starts with "{", which no
// container id can, so host-local never mistakes one for a lease. A lease's temp file (its final content)
// exists only while berth holds the lock, under which host-local scans too; crash leftovers go first thing.
//
// The index is trusted only while the network directory's mtime equals the sentinel berth set at its last
// commit (a value in the past with random nanoseconds, which no later change of the directory can
// reproduce): any lease file created or removed by someone else (host-local, an admin) changes the mtime,
// and the next berth operation rebuilds the index from the IP files.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { loadNativeAddon } from '../native-addon';
import { type Family, type Ip, formatIp, parseIp } from '../address/ip';
import type { Occupancy } from './allocator';
import {
  type AttRecord,
  CorruptFoundIndex,
  type FoundEntry,
  FoundIndex,
  FoundSet,
  type IndexState as State,
  type LeaseAddrs,
  type LeaseDirPaths as Paths,
  attKey,
  clearTemp,
  cursorPath,
  encodeRecord,
  encodeState,
  isRecord,
  leaseContent,
  leaseDirPaths,
  leaseNameIp,
  listLeaseAddrs,
  newFoundId,
  readFoundEntries,
  readState,
  scanLeases,
  stampSentinel,
  unwritableReason,
  inheritedMeta,
  writtenSince,
  readRegularFile,
  ensureBerthDirs,
} from './lease-dir';
import { checkContainerId, checkIfname } from './names';
import { OrdinalBitmap, fitsBitmap, probeOccupancy } from './occupancy';
import { type RangeSet, ordinalOf, rangeSetKey } from './range-set';
import type {
  Attachment,
  Lease,
  LeaseMeta,
  LeaseSession,
  LeaseStore,
  NewLease,
  TransactOptions,
} from './store';

export interface LeaseFileStoreOptions {
  dataDir: string;
  network: string;
  /** The current boot (kernel boot_id): stamped on new leases and on host-local leases first seen. */
  bootId: string;
  /** When the current boot began (ms, wall clock; asked only after a reboot): a lease file written since is this boot's. */
  bootStarted?: () => number | undefined;
  /** Warnings (foreign files, rebuilds) go here: stderr in the plugin. */
  warn?: (msg: string) => void;
  now?: () => Date;
}

/** A contiguous block of addresses, as stored in a bitmap's header (gateways do not matter here). */
interface Span {
  family: Family;
  start: bigint;
  end: bigint;
}

interface BitmapHeader {
  v: 1;
  gen: number;
  key: string;
  size: number;
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function ioError(what: string, err: unknown): CniError {
  return new CniError(ErrorCode.IoFailure, `${what}: ${(err as Error).message}`, undefined, { cause: err });
}

function parseSetKey(key: string): Span[] | undefined {
  const spans: Span[] = [];
  for (const part of key.split(',')) {
    const [a, b] = part.split('-');
    const s = a === undefined ? undefined : parseIp(a);
    const e = b === undefined ? undefined : parseIp(b);
    if (s === undefined || e === undefined || s.family !== e.family || s.value > e.value) return undefined;
    spans.push({ family: s.family, start: s.value, end: e.value });
  }
  return spans;
}

function spanOrdinal(spans: readonly Span[], ip: Ip): number | undefined {
  let base = 0n;
  for (const s of spans) {
    if (ip.family === s.family && ip.value >= s.start && ip.value <= s.end)
      return Number(base + ip.value - s.start);
    base += s.end - s.start + 1n;
  }
  return undefined;
}

function spanAt(spans: readonly Span[], ordinal: bigint): Ip {
  let rest = ordinal;
  for (const s of spans) {
    const n = s.end - s.start + 1n;
    if (rest < n) return { family: s.family, value: s.start + rest };
    rest -= n;
  }
  throw new RangeError(`ordinal ${ordinal} outside the set`);
}

/** Occupancy of one range set as a bitmap over its ordinals, with the set it numbers and its file form. */
class Bitmap extends OrdinalBitmap {
  constructor(
    readonly key: string,
    readonly spans: readonly Span[],
    size: number,
    bits?: Uint8Array,
  ) {
    super(size, bits);
  }

  setTaken(ip: Ip, taken: boolean): void {
    const o = spanOrdinal(this.spans, ip);
    if (o === undefined) return;
    this.setOrdinal(o, taken);
  }

  /** Resets the bits from the addresses of the lease files. */
  refill(addrs: LeaseAddrs): void {
    this.clear();
    // The IPv4 spans as numbers: a lease costs a comparison and a subtraction, no bigint step.
    const v4: { start: number; end: number; base: number }[] = [];
    let base = 0n;
    for (const s of this.spans) {
      if (s.family === 4) v4.push({ start: Number(s.start), end: Number(s.end), base: Number(base) });
      base += s.end - s.start + 1n;
    }
    for (const v of addrs.v4)
      for (const s of v4)
        if (v >= s.start && v <= s.end) {
          this.setOrdinal(s.base + v - s.start, true);
          break;
        }
    for (const ip of addrs.other) this.setTaken(ip, true);
  }

  encode(gen: number): Buffer {
    const header: BitmapHeader = { v: 1, gen, key: this.key, size: this.size };
    return Buffer.concat([Buffer.from(`${JSON.stringify(header)}\n`), this.bits]);
  }

  static decode(buf: Buffer): { header: BitmapHeader; bitmap: Bitmap } | undefined {
    const nl = buf.indexOf(0x0a);
    if (nl === -1 || buf[0] !== 0x7b) return undefined;
    let header: BitmapHeader;
    try {
      header = JSON.parse(buf.subarray(0, nl).toString()) as BitmapHeader;
    } catch {
      return undefined;
    }
    if (header.v !== 1 || typeof header.key !== 'string' || typeof header.gen !== 'number') return undefined;
    const spans = parseSetKey(header.key);
    if (spans === undefined) return undefined;
    const bits = new Uint8Array(buf.subarray(nl + 1));
    if (bits.length !== OrdinalBitmap.bytesFor(header.size)) return undefined;
    return { header, bitmap: new Bitmap(header.key, spans, header.size, bits) };
  }
}

function spansOf(set: RangeSet): Span[] {
  return set.map((r) => ({ family: r.family, start: r.start, end: r.end }));
}

function setHash(key: string): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 32);
}

let tmpSeq = 0;

/** Writes a whole file atomically: temp file in .berth/tmp, optional fsync, rename over the target. */
function writeAtomic(p: Paths, target: string, data: string | Uint8Array, opts: { fsync: boolean }): void {
  const tmp = join(p.tmp, `w-${process.pid}-${tmpSeq++}`);
  const fd = fs.openSync(tmp, 'wx', 0o600);
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    if (opts.fsync) fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, target);
}

/** What a rebuild of the index from the lease files leaves for the rest of the session and its commit. */
interface Rebuilt {
  /** The attachments without a record of their own: the found index the commit writes (unless unchanged). */
  found: FoundSet;
  /** The state's found index as the session's first rebuild read it, by attachment key: metadata it keeps. */
  old: Map<string, FoundEntry>;
  /** Its id; undefined when the state named none, or it was missing or unusable. */
  oldId: string | undefined;
}

class FileSession implements LeaseSession {
  /** Records read or changed in this session; null = known absent. */
  private readonly records = new Map<string, AttRecord | null>();
  private readonly dirtyRecords = new Set<string>();
  /** All records are in `records` (after a rebuild): the disk copies are not consulted. */
  private recordsComplete = false;
  private readonly bitmaps = new Map<string, Bitmap>();
  /** IPs whose lease file this session created (true) or removed (false). */
  private readonly changes = new Map<string, { ip: Ip; taken: boolean }>();
  /** The addresses of the IP-named files of the directory, once listed (or read by a rebuild). */
  private addrs: LeaseAddrs | undefined;
  /** The found index of the state, once opened (null: the state has none, or a rebuild replaced it). */
  private found: FoundIndex | null | undefined;
  /** What the last rebuild of the index from the lease files left for the commit; undefined: none ran. */
  private rebuilt: Rebuilt | undefined;
  private bootSeen = false;
  private builtBitmaps = false;

  constructor(
    private readonly p: Paths,
    private readonly state: State,
    private readonly opts: LeaseFileStoreOptions,
  ) {}

  private warn(msg: string): void {
    this.opts.warn?.(`berth-ipam: ${msg}`);
  }

  private now(): Date {
    return this.opts.now?.() ?? new Date();
  }

  /** Something to persist: lease changes, a rebuilt index or bitmap, a newly seen boot. */
  get dirty(): boolean {
    return (
      this.changes.size > 0 ||
      this.rebuilt !== undefined ||
      this.bootSeen ||
      this.dirtyRecords.size > 0 ||
      this.builtBitmaps
    );
  }

  /** Sets a bitmap from the lease files (the listing, unless a scan already read them) and this session's changes. */
  private fill(b: Bitmap): void {
    b.refill((this.addrs ??= listLeaseAddrs(this.p.dir)));
    // Changes made before the listing or scan are in it already: setting them again changes nothing.
    for (const c of this.changes.values()) b.setTaken(c.ip, c.taken);
  }

  /** The state's found index; a missing or corrupt one rebuilds the index (and returns null after). */
  private foundIndex(): FoundIndex | null {
    if (this.found !== undefined) return this.found;
    if (this.state.found === undefined || this.rebuilt !== undefined) return (this.found = null);
    let idx: FoundIndex | undefined;
    try {
      idx = FoundIndex.open(this.p.found, this.state.found);
    } catch (err) {
      if (!(err instanceof CorruptFoundIndex)) throw err;
      this.rebuild(`found index unusable: ${err.message}`);
      return null;
    }
    if (idx === undefined) {
      this.rebuild('found index missing');
      return null;
    }
    return (this.found = idx);
  }

  /**
   * Reconciles the index with the lease files (take-over, a foreign change, corruption): one read of every
   * lease file. Attachments with a record of berth's keep it (rewritten only when its addresses differ);
   * every other one goes into the found index, written whole at commit: no file per attachment. The scan's
   * leases stay byte ranges of its buffer (FoundSet): on 60,000 leases no object per lease is made, which
   * the garbage collector of a fresh process would otherwise copy, a large part of a take-over.
   */
  rebuild(reason: string, quiet = false): void {
    const scan = scanLeases(this.p.dir);
    for (const [i, l] of scan.problems) {
      const file = join(this.p.dir, scan.name(i));
      this.warn(
        l.corrupt
          ? `skipping corrupt lease file ${file} (${l.problem}); the address stays taken`
          : `skipping unreadable lease file ${file}: ${l.problem}; the address stays taken`,
      );
    }
    for (const name of scan.foreign) {
      // Another spelling of an address (upper case, zeros written out) is no lease to host-local either: it
      // looks for the name it writes (Go's canonical text), and neither hands out what such a file names.
      const ip = parseIp(name);
      this.warn(
        `skipping foreign file ${join(this.p.dir, name)} (${ip === undefined ? 'not named after an IP address' : `named after ${formatIp(ip)}, but not as host-local writes it: neither berth nor host-local counts the address taken`})`,
      );
    }
    const firstSeen: LeaseMeta = {
      bootId: this.opts.bootId,
      createdAt: this.now().toISOString(),
      origin: 'found',
    };
    const found = FoundSet.fromScan(scan, firstSeen);
    const thisBoot = writtenSince(this.p.dir, this.opts.bootStarted);
    this.addrs = scan.addrs();
    if (found.size > 0 || !quiet) this.warn(`rebuilt the lease index of ${this.p.dir} (${reason})`);
    // Bitmaps already handed to the allocator are refilled in place: it keeps using the same objects.
    for (const b of this.bitmaps.values()) this.fill(b);
    // What the found index of the state said (read once per session) keeps its metadata (boot, time first seen).
    let old = this.rebuilt?.old;
    let oldId = this.rebuilt?.oldId;
    if (old === undefined) {
      const entries = readFoundEntries(this.p, this.state.found);
      old = entries ?? new Map<string, FoundEntry>();
      oldId = entries === undefined ? undefined : this.state.found;
    }
    const onDisk = new Set(this.readAllRecordKeys());
    // Records this session changed before the rebuild keep their metadata (pod, netns of a lease it took).
    const mine = new Map<string, AttRecord>();
    for (const key of this.dirtyRecords) {
      const r = this.records.get(key);
      if (r !== null && r !== undefined && r.ips.length > 0) mine.set(key, r);
    }
    this.records.clear();
    for (const key of onDisk) this.records.set(key, null);
    // Attachments with a record of their own (on disk, or this session's) leave the found entries.
    for (const key of new Set([...onDisk, ...mine.keys()])) {
      const t = found.get(key);
      if (t === undefined) continue;
      found.delete(key);
      const own = mine.get(key);
      const rec: AttRecord = { v: 1, ...t };
      if (own !== undefined) {
        rec.meta = own.meta;
        this.dirtyRecords.add(key);
      } else {
        const prev = this.readRecordQuiet(key);
        const sameIps =
          prev !== undefined && prev.ips.length === t.ips.length && t.ips.every((i) => prev.ips.includes(i));
        // Metadata (boot, pod) stays only with an address it was about (a tombstone's is that of leases
        // released since).
        rec.meta = inheritedMeta((i) => t.ips.includes(i), [prev, old.get(key)], firstSeen, thisBoot);
        if (!sameIps) this.dirtyRecords.add(key);
      }
      this.records.set(key, rec);
    }
    // The others keep the metadata the found index gave them, while they hold an address it was about.
    for (const [key, e] of old) {
      const now = found.get(key);
      if (now !== undefined)
        found.setMeta(
          key,
          inheritedMeta((i) => now.ips.includes(i), [e], now.meta, thisBoot),
        );
    }
    for (const key of onDisk) if (this.records.get(key) === null) this.dirtyRecords.add(key);
    this.rebuilt = { found, old, oldId };
    this.found = null;
    this.recordsComplete = true;
  }

  private readAllRecordKeys(): string[] {
    try {
      return fs.readdirSync(this.p.att);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return [];
      throw err;
    }
  }

  /** A record from disk, or undefined when absent or unreadable (no rebuild). */
  private readRecordQuiet(key: string): AttRecord | undefined {
    try {
      const rec: unknown = JSON.parse(readRegularFile(join(this.p.att, key)).toString('utf8'));
      return isRecord(rec) ? rec : undefined;
    } catch {
      return undefined;
    }
  }

  /** The attachment's record: its own under `.berth/att/`, else its entry in the found index, else null. */
  private record(key: string): AttRecord | null {
    if (this.records.has(key)) return this.records.get(key)!;
    if (this.recordsComplete) {
      const e = this.rebuilt?.found.get(key);
      if (e === undefined) return null;
      const rec: AttRecord = { v: 1, ...e };
      this.records.set(key, rec);
      return rec;
    }
    let rec: AttRecord | null;
    try {
      const parsed: unknown = JSON.parse(readRegularFile(join(this.p.att, key)).toString('utf8'));
      if (!isRecord(parsed)) throw new Error('not a lease record');
      rec = parsed;
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') {
        let e: FoundEntry | undefined;
        try {
          e = this.foundIndex()?.lookup(key);
        } catch (err) {
          if (!(err instanceof CorruptFoundIndex)) throw err;
          this.rebuild(`found index unusable: ${err.message}`);
        }
        if (this.recordsComplete) return this.records.get(key) ?? null;
        rec = e === undefined ? null : { v: 1, ...e };
      } else {
        this.rebuild(`index record ${key} unreadable: ${(err as Error).message}`);
        return this.records.get(key) ?? null;
      }
    }
    this.records.set(key, rec);
    return rec;
  }

  private setRecord(key: string, rec: AttRecord | null): void {
    this.records.set(key, rec);
    this.dirtyRecords.add(key);
  }

  private noteChange(ip: Ip, taken: boolean): void {
    const name = formatIp(ip);
    this.changes.set(name, { ip, taken });
    for (const b of this.bitmaps.values()) b.setTaken(ip, taken);
  }

  async reserve(lease: NewLease, setId: number): Promise<boolean> {
    checkContainerId(lease.containerId);
    if (lease.ifname !== '') checkIfname(lease.ifname);
    const name = formatIp(lease.ip);
    const target = join(this.p.dir, name);
    const tmp = join(this.p.tmp, `lease-${process.pid}-${tmpSeq++}`);
    try {
      const fd = fs.openSync(tmp, 'wx', 0o600);
      try {
        fs.writeSync(fd, leaseContent(lease));
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      try {
        // link(2) fails with EEXIST instead of replacing: the exclusive create, with the content already there.
        fs.linkSync(tmp, target);
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
        // The index missed a lease someone else wrote: it is taken, and the records need the truth again.
        this.noteChange(lease.ip, true);
        this.rebuild(`${target} exists although the index had it free`);
        return false;
      } finally {
        fs.rmSync(tmp, { force: true });
      }
    } catch (err) {
      throw ioError(`cannot write lease ${target}`, err);
    }
    // The lease is made: a cursor that cannot be written (a full disk with room for the lease alone) only
    // moves the next search's start, as berthd's commit treats it; failing here reported a failed ADD whose
    // lease stayed.
    try {
      writeAtomic(this.p, cursorPath(this.p, setId), name, { fsync: false });
    } catch (err) {
      this.warn(`cannot write the cursor of range set ${setId}: ${(err as Error).message}`);
    }
    this.noteChange(lease.ip, true);
    const key = attKey(lease);
    const prev = this.record(key);
    this.setRecord(key, {
      v: 1,
      containerId: lease.containerId,
      ifname: lease.ifname,
      ips: [...(prev?.ips ?? []).filter((i) => i !== name), name],
      // A tombstone's metadata is that of leases released before: the new lease's own counts.
      meta: prev !== null && prev.ips.length > 0 ? prev.meta : lease.meta,
    });
    return true;
  }

  async lastReserved(setId: number): Promise<Ip | undefined> {
    let text: string;
    try {
      text = readRegularFile(cursorPath(this.p, setId)).toString('utf8');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return undefined;
      this.warn(`cannot read the cursor of range set ${setId}: ${(err as Error).message}`);
      return undefined;
    }
    const ip = parseIp(text);
    if (ip === undefined && text !== '')
      this.warn(`ignoring corrupt cursor file ${cursorPath(this.p, setId)}`);
    return ip;
  }

  async isTaken(ip: Ip, set: RangeSet): Promise<boolean> {
    const o = ordinalOf(set, ip);
    return o !== undefined && (await this.occupancy(set)).firstFree(o, o) === undefined;
  }

  async occupancy(set: RangeSet): Promise<Occupancy> {
    const key = rangeSetKey(set);
    const spans = spansOf(set);
    const size = spans.reduce((n, s) => n + (s.end - s.start + 1n), 0n);
    if (!fitsBitmap(size)) return this.probeOccupancy(spans);
    const existing = this.bitmaps.get(key);
    if (existing !== undefined) return existing;
    let bitmap: Bitmap | undefined;
    if (this.rebuilt === undefined) {
      try {
        const d = Bitmap.decode(readRegularFile(join(this.p.sets, setHash(key))));
        if (d !== undefined && d.header.gen === this.state.gen && d.header.key === key) bitmap = d.bitmap;
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT')
          this.warn(`rebuilding unreadable occupancy map of ${key}: ${(err as Error).message}`);
      }
    }
    if (bitmap === undefined) {
      bitmap = new Bitmap(key, spans, Number(size));
      this.fill(bitmap);
      this.builtBitmaps = true;
    } else {
      for (const c of this.changes.values()) bitmap.setTaken(c.ip, c.taken);
    }
    this.bitmaps.set(key, bitmap);
    return bitmap;
  }

  private probeOccupancy(spans: readonly Span[]): Occupancy {
    const taken = (ip: Ip): boolean => {
      const name = formatIp(ip);
      const c = this.changes.get(name);
      return c !== undefined ? c.taken : fs.existsSync(join(this.p.dir, name));
    };
    return probeOccupancy((o) => taken(spanAt(spans, o)));
  }

  private leasesOfRecord(rec: FoundEntry): Lease[] {
    return rec.ips.map((t) => ({
      ip: parseIp(t)!,
      containerId: rec.containerId,
      ifname: rec.ifname,
      meta: rec.meta,
    }));
  }

  /** Cheap verification of an index answer against the truth: each listed file holds this attachment. */
  private verified(rec: AttRecord): boolean {
    const want = leaseContent(rec);
    return rec.ips.every((t) => {
      try {
        return readRegularFile(join(this.p.dir, t)).toString('utf8').trim() === want;
      } catch {
        return false;
      }
    });
  }

  async leasesOf(a: Attachment): Promise<Lease[]> {
    checkContainerId(a.containerId);
    if (a.ifname !== '') checkIfname(a.ifname);
    const lookup = (key: string): AttRecord | null => {
      let rec = this.record(key);
      if (rec !== null && !this.dirtyRecords.has(key) && !this.verified(rec)) {
        this.rebuild(`index entry ${key} does not match the lease files`);
        rec = this.record(key);
      }
      return rec;
    };
    const exact = lookup(attKey(a));
    if (exact !== null && exact.ips.length > 0) return this.leasesOfRecord(exact);
    if (a.ifname === '') return [];
    // host-local matches legacy files (id only) when no exact match exists.
    const legacy = lookup(attKey({ containerId: a.containerId, ifname: '' }));
    return legacy === null ? [] : this.leasesOfRecord(legacy);
  }

  /** Every record (own or found), each once; `want` picks, by their metadata, the ones turned into leases. */
  private leasesWhere(want: (meta: LeaseMeta) => boolean): Lease[] {
    const out: Lease[] = [];
    const found = this.recordsComplete ? null : this.foundIndex();
    if (!this.recordsComplete) {
      const keys = new Set<string>(this.readAllRecordKeys());
      for (const k of this.records.keys()) keys.add(k);
      for (const key of keys) {
        const rec = this.record(key);
        if (rec !== null && want(rec.meta)) out.push(...this.leasesOfRecord(rec));
      }
      // A record of its own (a tombstone too) overrides the attachment's found entry.
      let entries: FoundEntry[] = [];
      try {
        entries = found?.all() ?? [];
      } catch (err) {
        if (!(err instanceof CorruptFoundIndex)) throw err;
        this.rebuild(`found index unusable: ${err.message}`);
      }
      for (const e of entries) if (!keys.has(attKey(e)) && want(e.meta)) out.push(...this.leasesOfRecord(e));
      // An unreadable record met on the way rebuilt the index: answer from the rebuilt one.
      if (!this.recordsComplete) return out;
      out.length = 0;
    }
    for (const rec of this.records.values())
      if (rec !== null && want(rec.meta)) out.push(...this.leasesOfRecord(rec));
    // Found entries are made only for the metadata wanted (after a take-over, leases of earlier boots: none).
    for (const [key, e] of this.rebuilt?.found.entries(want) ?? [])
      if (!this.records.has(key)) out.push(...this.leasesOfRecord(e));
    return out;
  }

  async all(): Promise<Lease[]> {
    return this.leasesWhere(() => true);
  }

  async leasesFromEarlierBoots(): Promise<Lease[]> {
    if (this.state.bootId === this.opts.bootId) return [];
    this.bootSeen = true;
    return this.leasesWhere((meta) => meta.bootId !== this.opts.bootId);
  }

  async releaseDeadFiles(): Promise<Ip[]> {
    const scan = scanLeases(this.p.dir);
    const out: Ip[] = [];
    for (const [i, problem] of scan.problems) {
      if (!problem.corrupt) continue;
      const name = scan.name(i);
      const ip = leaseNameIp(name);
      if (ip === undefined) continue;
      try {
        fs.unlinkSync(join(this.p.dir, name));
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw ioError(`cannot remove ${join(this.p.dir, name)}`, err);
      }
      this.noteChange(ip, false);
      out.push(ip);
    }
    return out;
  }

  async release(lease: Lease): Promise<void> {
    const name = formatIp(lease.ip);
    try {
      fs.unlinkSync(join(this.p.dir, name));
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw ioError(`cannot remove lease ${join(this.p.dir, name)}`, err);
    }
    this.noteChange(lease.ip, false);
    const key = attKey(lease);
    const rec = this.record(key);
    // With no address left the record goes at commit, or stays as a tombstone over a found entry.
    if (rec !== null) this.setRecord(key, { ...rec, ips: rec.ips.filter((i) => i !== name) });
  }

  /**
   * What a read-only session (CHECK, STATUS) keeps: occupancy bitmaps it had to build while the index was
   * trusted (typically after berthd's commit retired them with a new generation), written at the *current*
   * generation. They are exact (built from the listing under the lock) and stay valid until the next
   * commit changes the generation, so repeated STATUS reads one small file instead of listing every lease.
   * Nothing else is written: no record, no sentinel (the network directory's mtime stays, so a running
   * berthd does not re-read it), no boot marked as seen (the next ADD must still release earlier boots).
   */
  commitDerived(): void {
    if (this.rebuilt !== undefined || !this.builtBitmaps || this.changes.size > 0) return;
    for (const [key, b] of this.bitmaps)
      writeAtomic(this.p, join(this.p.sets, setHash(key)), b.encode(this.state.gen), { fsync: false });
  }

  /**
   * After a rebuild: the found index the state will name. The same attachments with the same addresses as
   * the index before keep it (no write); otherwise a new one is written whole, in one write (temp + rename).
   */
  private commitFound(r: Rebuilt): string | undefined {
    // Attachments this session gave a record of their own leave it (the set serves nothing after the commit).
    for (const key of this.dirtyRecords) r.found.delete(key);
    if (r.oldId !== undefined && r.found.sameAs(r.old)) return r.oldId;
    if (r.found.size === 0) return undefined;
    const id = newFoundId();
    writeAtomic(this.p, this.p.found, r.found.encode(id), { fsync: false });
    return id;
  }

  /** Whether the found index the state names after this commit holds the attachment (a tombstone must hide it). */
  private foundAfterCommit(key: string, foundId: string | undefined): boolean {
    if (foundId === undefined) return false;
    if (this.rebuilt !== undefined) return foundId === this.rebuilt.oldId && this.rebuilt.old.has(key);
    try {
      return this.found?.lookup(key) !== undefined;
    } catch {
      // Unreadable now: a tombstone is never wrong (the next rebuild drops it).
      return true;
    }
  }

  /** Persists the index: records, the found index, bitmaps (new generation), then the directory sentinel and state. */
  commit(): void {
    if (!this.dirty) return;
    // A tombstone needs the found index: opened now, so that a missing one rebuilds the index before the
    // commit starts, not halfway through it.
    if (this.rebuilt === undefined && this.dirtyRecords.size > 0) this.foundIndex();
    const gen = this.state.gen + 1;
    const foundId = this.rebuilt !== undefined ? this.commitFound(this.rebuilt) : this.state.found;
    for (const key of this.dirtyRecords) {
      const rec = this.records.get(key);
      const file = join(this.p.att, key);
      if (rec === null || rec === undefined || rec.ips.length === 0) {
        if (rec !== null && rec !== undefined && this.foundAfterCommit(key, foundId))
          writeAtomic(this.p, file, encodeRecord(rec), { fsync: false });
        else fs.rmSync(file, { force: true });
      } else writeAtomic(this.p, file, encodeRecord(rec), { fsync: false });
    }
    // Bitmaps of other range sets (an older config, other runtime ipRanges) follow the changes too, or go.
    for (const file of fs.readdirSync(this.p.sets)) {
      const path = join(this.p.sets, file);
      if ([...this.bitmaps.keys()].some((k) => setHash(k) === file)) continue;
      let d: ReturnType<typeof Bitmap.decode>;
      try {
        d = this.rebuilt !== undefined ? undefined : Bitmap.decode(readRegularFile(path));
      } catch {
        d = undefined;
      }
      if (d === undefined || d.header.gen !== this.state.gen) {
        fs.rmSync(path, { force: true });
        continue;
      }
      for (const c of this.changes.values()) d.bitmap.setTaken(c.ip, c.taken);
      writeAtomic(this.p, path, d.bitmap.encode(gen), { fsync: false });
    }
    for (const [key, b] of this.bitmaps)
      writeAtomic(this.p, join(this.p.sets, setHash(key)), b.encode(gen), { fsync: false });
    const dirMtimeNs = stampSentinel(this.p.dir, this.now(), (m) => this.warn(m));
    const bootId = this.bootSeen ? this.opts.bootId : (this.state.bootId ?? this.opts.bootId);
    writeAtomic(this.p, this.p.state, encodeState({ gen, dirMtimeNs, bootId, found: foundId }), {
      fsync: false,
    });
    if (foundId === undefined) fs.rmSync(this.p.found, { force: true });
  }
}

/** How long a transaction waits for the network's lock before failing with code 11 (try again later). */
const LOCK_TIMEOUT_MS = 60_000;

/**
 * Takes the network's flock without ever blocking the event loop: non-blocking attempts with a short
 * back-off. The first attempt succeeds whenever nobody else holds it (the plugin's usual case), so this
 * costs nothing there; a blocking flock would freeze every other request of a process that serves many.
 */
async function lockFile(path: string): Promise<() => void> {
  const addon = loadNativeAddon();
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_CREAT | fs.constants.O_NONBLOCK, 0o600);
  try {
    const deadline = performance.now() + LOCK_TIMEOUT_MS;
    let wait = 1;
    while (!addon.flock(fd, 'ex', true)) {
      if (performance.now() > deadline) {
        throw new CniError(ErrorCode.TryAgainLater, `timed out waiting for the lock ${path}`);
      }
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(wait * 2, 20);
    }
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return () => {
    // Closing the descriptor drops the flock too; unlock first so a failure to close cannot keep it.
    try {
      addon.flock(fd, 'un');
    } finally {
      fs.closeSync(fd);
    }
  };
}

/** Opens the store of one network; nothing touches the disk until `transact`. */
export function openLeaseFileStore(opts: LeaseFileStoreOptions): LeaseStore {
  const p = leaseDirPaths(opts.dataDir, opts.network);
  const store = {
    async transact<T>(fn: (s: LeaseSession) => Promise<T>, topts?: TransactOptions): Promise<T> {
      let unlock: () => void;
      try {
        fs.mkdirSync(p.dir, { recursive: true, mode: 0o755 });
        ensureBerthDirs(p, [p.att, p.sets, p.tmp]);
        unlock = await lockFile(p.lock);
      } catch (err) {
        if (err instanceof CniError) throw err;
        throw ioError(`cannot open the lease store ${p.dir}`, err);
      }
      try {
        // Temp files left by a crash: host-local would match their content on CHECK; remove them first.
        clearTemp(p);
        const loaded = readState(p);
        const mtime = fs.statSync(p.dir, { bigint: true }).mtimeNs.toString();
        const state: State = loaded ?? { v: 1, gen: 0, dirMtimeNs: '' };
        const session = new FileSession(p, state, opts);
        if (loaded === undefined) session.rebuild('no index yet', true);
        else if (loaded.dirMtimeNs !== mtime) session.rebuild('the directory changed outside berth');
        const commit = (): void => {
          if (topts?.readOnly === true) {
            // Best effort: a store that cannot be written still answers CHECK and STATUS.
            try {
              session.commitDerived();
            } catch (err) {
              opts.warn?.(
                `berth-ipam: cannot keep the occupancy map in ${p.sets}: ${(err as Error).message}`,
              );
            }
            return;
          }
          try {
            session.commit();
          } catch (err) {
            // The lease files, host-local's, are the truth and are right already; the index is derived from
            // them. Without it (a full disk, when kubelet evicts pods) the next call rebuilds it, so the
            // command stands: failing a DEL here would leave the pod Terminating with nothing wrong.
            try {
              fs.rmSync(p.state, { force: true });
            } catch {
              // an index left stale is caught by its directory sentinel
            }
            opts.warn?.(
              `berth-ipam: cannot update the lease index in ${p.berth} (${(err as Error).message}); the next call rebuilds it from the lease files`,
            );
          }
        };
        let result: T;
        try {
          result = await fn(session);
        } catch (err) {
          // A failed command has rolled its own changes back; keep the index in step with the files anyway.
          try {
            commit();
          } catch (commitErr) {
            opts.warn?.(`berth-ipam: ${(commitErr as Error).message}`);
          }
          throw err;
        }
        commit();
        return result;
      } finally {
        unlock();
      }
    },

    async unwritableReason(): Promise<string | undefined> {
      return unwritableReason(p);
    },
  } satisfies LeaseStore;
  return store;
}
