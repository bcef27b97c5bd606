// The on-disk format of one network directory, in one place: berth-ipam working on the files
// (lease-file-store) and berthd (daemon/network-store) read and write it at the same moment under the same
// flock, so the names, the bytes of a lease, a record and state.json, and the mtime sentinel must never
// differ between the two. Layout and rules: README "berth-ipam", section "On disk".
import * as fs from 'node:fs';
import { join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { type Ip, formatIp, parseIp } from '../address/ip';
import { loadNativeAddon } from '../native-addon';
import { checkNetworkName } from './names';
import type { Attachment, LeaseMeta } from './store';

export const BERTH_DIR = '.berth';
export const CURSOR_PREFIX = 'last_reserved_ip.';

export interface LeaseDirPaths {
  dir: string;
  lock: string;
  berth: string;
  state: string;
  att: string;
  sets: string;
  tmp: string;
  spare: string;
  found: string;
}

export function leaseDirPaths(dataDir: string, network: string): LeaseDirPaths {
  const dir = join(dataDir, checkNetworkName(network));
  const berth = join(dir, BERTH_DIR);
  return {
    dir,
    lock: join(dir, 'lock'),
    berth,
    state: join(berth, 'state.json'),
    att: join(berth, 'att'),
    sets: join(berth, 'sets'),
    tmp: join(berth, 'tmp'),
    spare: join(berth, 'spare'),
    found: join(berth, 'found'),
  };
}

/** host-local's round-robin cursor of one range set. */
export function cursorPath(p: LeaseDirPaths, setId: number): string {
  return join(p.dir, `${CURSOR_PREFIX}${setId}`);
}

/**
 * A small file read whole (a record, a cursor, the state, cluster.json, a resolv.conf), never blocking: opened
 * non-blocking and read only when it is a regular file. A FIFO or a device in its place would hold the reader
 * in open(2) or read(2): in berthd, every call of every network (host-local blocks in its own process only).
 * Errors as readFileSync's; another kind of file is EINVAL, one over `maxBytes` EFBIG.
 */
export function readRegularFile(path: string, maxBytes = Infinity): Buffer {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile())
      throw Object.assign(new Error(`${path} is not a regular file`), { code: 'EINVAL', path });
    if (st.size > maxBytes)
      throw Object.assign(new Error(`${path} is larger than ${maxBytes} bytes`), { code: 'EFBIG', path });
    return fs.readFileSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Makes `.berth` and the given subdirectories of it (0700), and refuses any that is not a directory of this
 * user's: a symlink or another user's directory there (a data dir others can write to) would have berth write
 * its files, and delete others, wherever it points. Errors: ENOTDIR, EPERM, or mkdir's.
 */
export function ensureBerthDirs(p: LeaseDirPaths, subdirs: readonly string[]): void {
  for (const d of [p.berth, ...subdirs]) {
    try {
      fs.mkdirSync(d, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = fs.lstatSync(d);
    if (!st.isDirectory())
      throw Object.assign(
        new Error(
          `${d} is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}: berth keeps its own files there; remove it`,
        ),
        { code: 'ENOTDIR' },
      );
    const me = process.geteuid?.();
    if (me !== undefined && st.uid !== me)
      throw Object.assign(new Error(`${d} belongs to uid ${st.uid}, not to this user (${me}); remove it`), {
        code: 'EPERM',
      });
  }
}

/** The lock, the cursors and `.berth`: names in the network directory that are never leases. */
export function isBookkeepingName(name: string): boolean {
  return name === 'lock' || name === BERTH_DIR || name.startsWith(CURSOR_PREFIX);
}

/** The address a lease file name stands for: only the canonical text form counts (as host-local writes it). */
export function leaseNameIp(name: string): Ip | undefined {
  if (!name.includes(':')) {
    const v = dottedQuad(name, 0, name.length);
    return v < 0 ? undefined : { family: 4, value: BigInt(v) };
  }
  const ip = parseIp(name);
  return ip !== undefined && formatIp(ip) === name ? ip : undefined;
}

/**
 * The value of a canonical dotted quad (no leading zero, each part up to 255) in `src` from `start` to `end`,
 * or -1: what parseIp and formatIp answer together, without their splits and bigint steps (a scan asks once
 * per lease file), on a name's text or straight on the bytes of the scan's buffer.
 */
function dottedQuad(src: string | Uint8Array, start: number, end: number): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = start; i < end; i++) {
    const c = typeof src === 'string' ? src.charCodeAt(i) : src[i]!;
    if (c === 0x2e) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 0x30 && c <= 0x39) {
      if (digits > 0 && part === 0) return -1;
      part = part * 10 + (c - 0x30);
      if (++digits > 3 || part > 255) return -1;
    } else return -1;
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + part;
}

/** The name of an attachment's record under `.berth/att/`. */
export function attKey(a: Attachment): string {
  return `${a.containerId}:${a.ifname}`;
}

/** host-local's lease file content; legacy files hold only the id. */
export function leaseContent(a: Attachment): string {
  return a.ifname === '' ? a.containerId.trim() : `${a.containerId.trim()}\r\n${a.ifname}`;
}

/**
 * The longest container id a lease file is read with: host-local has no limit (a runtime's ids are 64 hex
 * characters); the directory scan reads files of up to 4096 bytes whole (native readSmallFiles).
 */
const MAX_LEASE_ID = 4000;

export function parseLeaseContent(raw: string): Attachment | undefined {
  const t = raw.trim();
  const nl = t.indexOf('\r\n');
  const containerId = nl === -1 ? t : t.slice(0, nl);
  const ifname = nl === -1 ? '' : t.slice(nl + 2);
  // Anything host-local could have written passes; binary junk and JSON do not.
  if (containerId.length > MAX_LEASE_ID || !/^[^\s{}\0]+$/.test(containerId)) return undefined;
  if (ifname !== '' && !/^[^\s/\0]{1,64}$/.test(ifname)) return undefined;
  return { containerId, ifname };
}

/** An ASCII byte `\s` matches (and `trim` removes): tab, line feed, vertical tab, form feed, return, space. */
const isSpace = (c: number): boolean => c === 0x20 || (c >= 0x09 && c <= 0x0d);

/** FNV-1a (32 bits) of an attachment key's UTF-16 code units: the found index's buckets and the scan's table. */
function keyHash(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** One IP-named entry of the network directory, as a scan found it. */
export interface ScannedLease {
  name: string;
  ip: Ip;
  /** Undefined when the file could not be read or holds no lease (`problem` says why): its address stays taken. */
  att?: Attachment;
  problem?: string;
  /** The file was read, but what it holds is no lease. */
  corrupt?: boolean;
  /**
   * What it holds starts with `{`, berthd's stamp on a removed lease's inode (.berth/spare): host-local never
   * writes one. Under a lease's name only after a power cut that kept the stamp and lost the rename.
   */
  spareStamp?: boolean;
}

/**
 * Leases as columns of byte ranges: the name of each, and the container id and ifname of its attachment,
 * all in one buffer (`arena`), so that a scan of tens of thousands of leases creates no object per lease
 * (what survives a scan is what the garbage collector copies, a large part of a take-over in a fresh
 * process). The scan's own columns, and those FoundSet builds from found entries, have this form.
 */
interface LeaseColumns {
  arena: Buffer;
  count: number;
  nameStart: Int32Array;
  nameEnd: Int32Array;
  /** -1: the lease holds no attachment (unreadable, or no lease inside). */
  idStart: Int32Array;
  idEnd: Int32Array;
  ifStart: Int32Array;
  ifEnd: Int32Array;
  /** keyHash of the attachment key. */
  hash: Uint32Array;
}

/** The addresses of a directory's lease files: IPv4 ones as numbers (no object each), the others as Ips. */
export interface LeaseAddrs {
  v4: Float64Array;
  other: Ip[];
}

function newColumns(arena: Buffer, capacity: number): LeaseColumns {
  return {
    arena,
    count: 0,
    nameStart: new Int32Array(capacity),
    nameEnd: new Int32Array(capacity),
    idStart: new Int32Array(capacity),
    idEnd: new Int32Array(capacity),
    ifStart: new Int32Array(capacity),
    ifEnd: new Int32Array(capacity),
    hash: new Uint32Array(capacity),
  };
}

/** Every lease of a network directory, as one scan read it (`scanLeases`). */
export class LeaseScan {
  /** Names that are neither leases nor bookkeeping. */
  readonly foreign: string[] = [];
  readonly cols: LeaseColumns;
  /** The address of each IPv4 lease as a number; -1 for the others, whose Ip is in `otherIps`. */
  readonly v4: Float64Array;
  readonly otherIps = new Map<number, Ip>();
  /** Why a lease holds no attachment, by its index. */
  readonly problems = new Map<number, { problem: string; corrupt: boolean; spareStamp?: boolean }>();

  constructor(arena: Buffer, capacity: number) {
    this.cols = newColumns(arena, capacity);
    this.v4 = new Float64Array(capacity);
  }

  /** Leases (IP-named entries, readable or not). */
  get count(): number {
    return this.cols.count;
  }

  name(i: number): string {
    return this.cols.arena.toString('latin1', this.cols.nameStart[i], this.cols.nameEnd[i]);
  }

  /** Lease `i` as an object (for callers that keep one per lease anyway, like berthd's memory). */
  lease(i: number): ScannedLease {
    const v = this.v4[i]!;
    const l: ScannedLease = {
      name: this.name(i),
      ip: v >= 0 ? { family: 4, value: BigInt(v) } : this.otherIps.get(i)!,
    };
    const p = this.problems.get(i);
    if (p !== undefined) {
      if (p.corrupt) l.corrupt = true;
      if (p.spareStamp === true) l.spareStamp = true;
      l.problem = p.problem;
    } else l.att = columnAttachment(this.cols, i);
    return l;
  }

  /** The addresses of every lease (readable or not: each keeps its address taken). */
  addrs(): LeaseAddrs {
    let n4 = 0;
    for (let i = 0; i < this.count; i++) if (this.v4[i]! >= 0) n4++;
    const v4 = new Float64Array(n4);
    n4 = 0;
    for (let i = 0; i < this.count; i++) if (this.v4[i]! >= 0) v4[n4++] = this.v4[i]!;
    return { v4, other: [...this.otherIps.values()] };
  }
}

function columnAttachment(c: LeaseColumns, i: number): Attachment {
  return {
    containerId: c.arena.toString('utf8', c.idStart[i], c.idEnd[i]),
    ifname: c.arena.toString('utf8', c.ifStart[i], c.ifEnd[i]),
  };
}

/**
 * parseLeaseContent on the bytes from `start` to `end`, for contents in ASCII that pass as they are (every
 * lease host-local writes): sets lease `i`'s attachment columns and answers true. Anything else (non-ASCII,
 * or no lease) answers false and goes the way of parseLeaseContent, whose rules these are.
 */
function asciiLease(c: LeaseColumns, i: number, buf: Buffer, start: number, end: number): boolean {
  let a = start;
  let b = end;
  for (let k = a; k < b; k++) if (buf[k]! >= 0x80) return false;
  while (a < b && isSpace(buf[a]!)) a++;
  while (b > a && isSpace(buf[b - 1]!)) b--;
  let nl = b;
  for (let k = a; k + 1 < b; k++)
    if (buf[k] === 0x0d && buf[k + 1] === 0x0a) {
      nl = k;
      break;
    }
  const ifStart = nl === b ? b : nl + 2;
  if (nl - a < 1 || nl - a > MAX_LEASE_ID || b - ifStart > 64) return false;
  let h = 0x811c9dc5;
  for (let k = a; k < nl; k++) {
    const c = buf[k]!;
    if (c === 0 || c === 0x7b || c === 0x7d || isSpace(c)) return false;
    h = Math.imul(h ^ c, 0x01000193);
  }
  h = Math.imul(h ^ 0x3a, 0x01000193);
  for (let k = ifStart; k < b; k++) {
    const c = buf[k]!;
    if (c === 0 || c === 0x2f || isSpace(c)) return false;
    h = Math.imul(h ^ c, 0x01000193);
  }
  c.idStart[i] = a;
  c.idEnd[i] = nl;
  c.ifStart[i] = ifStart;
  c.ifEnd[i] = b;
  c.hash[i] = h >>> 0;
  return true;
}

/** Flags of a scan's open: never follow a symlink, never wait on a FIFO put there in place of a lease. */
const SCAN_OPEN = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

/**
 * Reads every lease of a network directory once: the listing (whose entry types say which names are regular
 * files, so no stat per file), then open, read, close of each regular file, all in one call of the native
 * addon (`readSmallFiles`; one by one from JavaScript without it, or with `native: false`, into a buffer of
 * the same layout). This is the one scan a take-over or a rebuild costs; host-local pays about the same on
 * each ADD and DEL (a walk with an lstat, an open, an fstat, two reads and a close per file). The leases are
 * read straight from the buffer into columns (LeaseScan): no string or object per lease when its name is a
 * dotted quad and its content ASCII (host-local's own leases); any other goes through leaseNameIp and
 * parseLeaseContent.
 */
export function scanLeases(dir: string, opts: { native?: boolean } = {}): LeaseScan {
  const buf = (opts.native === false ? undefined : readSmallFiles(dir)) ?? readFilesOneByOne(dir);
  // Each entry: kind u8 (0 read, 1 not a regular file, 2 failed), name length u16, content length or errno
  // u16, the name, the content.
  const next = (off: number): number =>
    off + 5 + buf.readUInt16LE(off + 1) + (buf[off] === 0 ? buf.readUInt16LE(off + 3) : 0);
  let entries = 0;
  for (let off = 0; off < buf.length; off = next(off)) entries++;
  const s = new LeaseScan(buf, entries);
  const c = s.cols;
  /** Attachments decoded the slow way, whose bytes follow the buffer's in the arena. */
  const extra: Buffer[] = [];
  let arenaEnd = buf.length;
  const place = (text: string): [number, number] => {
    const b = Buffer.from(text);
    extra.push(b);
    arenaEnd += b.length;
    return [arenaEnd - b.length, arenaEnd];
  };
  for (let off = 0; off < buf.length;) {
    const kind = buf[off]!;
    const nameStart = off + 5;
    const nameEnd = nameStart + buf.readUInt16LE(off + 1);
    const x = buf.readUInt16LE(off + 3);
    off = kind === 0 ? nameEnd + x : nameEnd;
    const first = buf[nameStart]!;
    const v4 = first >= 0x30 && first <= 0x39 ? dottedQuad(buf, nameStart, nameEnd) : -1;
    let ip: Ip | undefined;
    if (v4 < 0) {
      const name = buf.toString('utf8', nameStart, nameEnd);
      if (isBookkeepingName(name)) continue;
      ip = leaseNameIp(name);
      if (ip === undefined) {
        s.foreign.push(name);
        continue;
      }
    }
    const i = c.count++;
    c.nameStart[i] = nameStart;
    c.nameEnd[i] = nameEnd;
    s.v4[i] = v4;
    if (ip !== undefined) s.otherIps.set(i, ip);
    c.idStart[i] = -1;
    if (kind !== 0) {
      const problem = kind === 1 ? 'not a regular file' : `${getSystemErrorName(-x)} on open or read`;
      s.problems.set(i, { problem, corrupt: false });
      continue;
    }
    if (asciiLease(c, i, buf, nameEnd, off)) continue;
    const text = buf.toString('utf8', nameEnd, off);
    const att = parseLeaseContent(text);
    if (att === undefined) {
      s.problems.set(i, {
        problem: JSON.stringify(text.slice(0, 40)),
        corrupt: true,
        ...(text.startsWith('{') ? { spareStamp: true } : {}),
      });
      continue;
    }
    [c.idStart[i], c.idEnd[i]] = place(att.containerId);
    [c.ifStart[i], c.ifEnd[i]] = place(att.ifname);
    c.hash[i] = keyHash(attKey(att));
  }
  if (extra.length > 0) c.arena = Buffer.concat([buf, ...extra]);
  return s;
}

/** scanLeases with an object per lease, each handed to `visit` in the order read; the foreign names after. */
export function scanLeaseDir(
  dir: string,
  visit: (l: ScannedLease) => void,
  opts: { native?: boolean } = {},
): { foreign: string[] } {
  const s = scanLeases(dir, opts);
  for (let i = 0; i < s.count; i++) visit(s.lease(i));
  return { foreign: s.foreign };
}

/** The addresses of the lease files from the listing alone (no file read). */
export function listLeaseAddrs(dir: string): LeaseAddrs {
  const v4: number[] = [];
  const other: Ip[] = [];
  for (const name of fs.readdirSync(dir)) {
    const v = name.includes(':') ? -1 : dottedQuad(name, 0, name.length);
    if (v >= 0) v4.push(v);
    else if (!isBookkeepingName(name)) {
      const ip = leaseNameIp(name);
      if (ip !== undefined) other.push(ip);
    }
  }
  return { v4: Float64Array.from(v4), other };
}

/** readSmallFiles' buffer, made from JavaScript (an addon without it, or `native: false`). */
function readFilesOneByOne(dir: string): Buffer {
  const parts: Buffer[] = [];
  const content = Buffer.alloc(4096);
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    const name = Buffer.from(ent.name);
    const head = Buffer.alloc(5);
    head.writeUInt16LE(name.length, 1);
    parts.push(head, name);
    if (!ent.isFile()) {
      head[0] = 1;
      continue;
    }
    let n: number;
    try {
      const fd = fs.openSync(`${dir}/${ent.name}`, SCAN_OPEN);
      try {
        n = fs.readSync(fd, content, 0, content.length, 0);
      } finally {
        fs.closeSync(fd);
      }
    } catch (err) {
      head[0] = 2;
      head.writeUInt16LE(-((err as NodeJS.ErrnoException).errno ?? -5), 3);
      continue;
    }
    head.writeUInt16LE(n, 3);
    parts.push(Buffer.from(content.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

/** The native one-call read of a directory, or undefined when the addon (or that function of it) is missing. */
function readSmallFiles(dir: string): Buffer | undefined {
  let addon: ReturnType<typeof loadNativeAddon>;
  try {
    addon = loadNativeAddon();
  } catch {
    return undefined;
  }
  return addon.readSmallFiles?.(dir);
}

/** One `.berth/att/<id>:<ifname>` record. It starts with `{`, so host-local never takes it for a lease. */
export interface AttRecord {
  v: 1;
  containerId: string;
  ifname: string;
  ips: string[];
  meta: LeaseMeta;
}

export function encodeRecord(r: {
  containerId: string;
  ifname: string;
  ips: Iterable<string>;
  meta: LeaseMeta;
}): string {
  const rec: AttRecord = {
    v: 1,
    containerId: r.containerId,
    ifname: r.ifname,
    ips: [...r.ips],
    meta: r.meta,
  };
  return JSON.stringify(rec);
}

export function isRecord(x: unknown): x is AttRecord {
  const r = x as AttRecord;
  return (
    typeof r === 'object' &&
    r !== null &&
    r.v === 1 &&
    typeof r.containerId === 'string' &&
    typeof r.ifname === 'string' &&
    Array.isArray(r.ips) &&
    r.ips.every((i) => typeof i === 'string') &&
    typeof r.meta === 'object' &&
    r.meta !== null
  );
}

/**
 * `.berth/state.json`: index generation, the directory mtime sentinel of the last commit, last boot seen,
 * and the id of the `.berth/found` index that belongs to this state (none: every attachment has its record
 * under `.berth/att/`). Version 2 is written since the found index exists: a berth-ipam of before reads it as
 * no state at all and rebuilds its records from the lease files, so going back a version loses nothing.
 * Version 1 (no found index) is still read.
 */
export interface IndexState {
  v: 1 | 2;
  gen: number;
  dirMtimeNs: string;
  bootId?: string;
  found?: string;
}

export function encodeState(s: { gen: number; dirMtimeNs: string; bootId?: string; found?: string }): string {
  const state: IndexState = { v: 2, gen: s.gen, dirMtimeNs: s.dirMtimeNs };
  if (s.bootId !== undefined) state.bootId = s.bootId;
  if (s.found !== undefined) state.found = s.found;
  return JSON.stringify(state);
}

/** The state, or undefined when missing or corrupt (the index is then rebuilt). */
export function readState(p: LeaseDirPaths): IndexState | undefined {
  try {
    const s = JSON.parse(readRegularFile(p.state).toString('utf8')) as IndexState;
    if (
      (s.v === 1 || s.v === 2) &&
      typeof s.gen === 'number' &&
      typeof s.dirMtimeNs === 'string' &&
      (s.found === undefined || typeof s.found === 'string')
    )
      return s;
  } catch {
    // Missing or corrupt.
  }
  return undefined;
}

/**
 * `.berth/found`: the attachments of the lease files berth found without a record of its own (host-local's
 * leases at a take-over, or after host-local changed the directory), written whole, in one write, by the
 * scan that found them, instead of a record per attachment under `.berth/att/` (a take-over of 60,000
 * leases wrote 60,000 files). A record under `.berth/att/` overrides the attachment's entry here; a record
 * with no address left (a tombstone) says the attachment released what it had been found with. The file
 * belongs to the state whose `found` names its id, and is ignored otherwise (the index is then rebuilt).
 *
 * Layout: a JSON header line (so the file starts with `{` and host-local never takes it for a lease:
 * `{"v":1,"id":…,"metas":[…],"buckets":B}`), then B+1 little-endian uint32 offsets into the entries, then
 * the entries grouped by bucket (FNV-1a of the attachment key, modulo B), one line each:
 * `<containerID>\t<ifname>\t<meta index>\t<ip> <ip>…`. A lookup reads the header, the table and one bucket.
 */
export interface FoundEntry {
  containerId: string;
  ifname: string;
  ips: string[];
  meta: LeaseMeta;
}

interface FoundHeader {
  v: 1;
  id: string;
  metas: LeaseMeta[];
  buckets: number;
}

/** Entries per bucket aimed at: a lookup reads a few KiB. */
const FOUND_PER_BUCKET = 32;
/** The first read of a lookup: the header and the table of any directory up to ~500,000 attachments. */
const FOUND_PREFIX_BYTES = 64 * 1024;

/**
 * Found attachments in memory, grouped from lease columns (a scan's, or those of given entries) and kept as
 * byte ranges with a hash table over them: a take-over of 60,000 leases creates no object per attachment,
 * and writes the found index straight from the scan's bytes. Entries become objects only when asked for.
 */
export class FoundSet {
  /** Per attachment: its first and last lease (leases chained by `nextLease`), key hash, meta index. */
  private readonly head: Int32Array;
  private readonly tail: Int32Array;
  private readonly attHash: Uint32Array;
  private readonly metaOf: Int32Array;
  /** Released from the set (delete): still in the hash table, skipped by everything else. */
  private readonly gone: Uint8Array;
  private readonly nextLease: Int32Array;
  /** Open addressing: attachment index + 1, 0 for a free slot. */
  private readonly slots: Int32Array;
  private atts = 0;
  private live = 0;
  private readonly metas: LeaseMeta[] = [];
  private readonly metaIds = new Map<LeaseMeta, number>();

  private constructor(private readonly c: LeaseColumns) {
    const n = c.count;
    this.head = new Int32Array(n);
    this.tail = new Int32Array(n);
    this.attHash = new Uint32Array(n);
    this.metaOf = new Int32Array(n);
    this.gone = new Uint8Array(n);
    this.nextLease = new Int32Array(n);
    let size = 16;
    while (size < 2 * n) size *= 2;
    this.slots = new Int32Array(size);
  }

  /** The attachments of the scan's readable leases, all with `meta` (the moment they were first seen). */
  static fromScan(scan: LeaseScan, meta: LeaseMeta): FoundSet {
    const set = new FoundSet(scan.cols);
    const mi = set.metaIndex(meta);
    for (let i = 0; i < scan.count; i++) if (scan.cols.idStart[i]! >= 0) set.add(i, mi);
    return set;
  }

  /** A set holding these entries (each with at least one address). */
  static fromEntries(entries: readonly FoundEntry[]): FoundSet {
    let count = 0;
    let units = 0;
    for (const e of entries) {
      count += e.ips.length;
      units += e.containerId.length + e.ifname.length;
      for (const ip of e.ips) units += ip.length;
    }
    // One buffer for every string (3 bytes of UTF-8 at most per UTF-16 unit), not a Buffer each.
    const arena = Buffer.allocUnsafe(3 * units);
    let len = 0;
    const place = (text: string): number => {
      const at = len;
      len += arena.write(text, at);
      return at;
    };
    const cols = newColumns(arena, count);
    cols.count = count;
    let i = 0;
    for (const e of entries) {
      const idStart = place(e.containerId);
      const ifStart = place(e.ifname);
      const ifEnd = len;
      const hash = keyHash(attKey(e));
      for (const ip of e.ips) {
        cols.nameStart[i] = place(ip);
        cols.nameEnd[i] = len;
        cols.idStart[i] = idStart;
        cols.idEnd[i] = ifStart;
        cols.ifStart[i] = ifStart;
        cols.ifEnd[i] = ifEnd;
        cols.hash[i++] = hash;
      }
    }
    const set = new FoundSet(cols);
    i = 0;
    for (const e of entries) {
      const mi = set.metaIndex(e.meta);
      for (let k = 0; k < e.ips.length; k++) set.add(i++, mi);
    }
    return set;
  }

  /** Attachments in the set. */
  get size(): number {
    return this.live;
  }

  private metaIndex(meta: LeaseMeta): number {
    let mi = this.metaIds.get(meta);
    if (mi === undefined) {
      mi = this.metas.push(meta) - 1;
      this.metaIds.set(meta, mi);
    }
    return mi;
  }

  private keyAt(i: number): string {
    const a = columnAttachment(this.c, i);
    return attKey(a);
  }

  /** Whether leases i and j belong to one attachment key (`<id>:<ifname>`, as the records' Maps compare). */
  private sameKey(i: number, j: number): boolean {
    const { arena, idStart, idEnd, ifStart, ifEnd } = this.c;
    const idLen = idEnd[i]! - idStart[i]!;
    const ifLen = ifEnd[i]! - ifStart[i]!;
    if (idLen + ifLen !== idEnd[j]! - idStart[j]! + ifEnd[j]! - ifStart[j]!) return false;
    // The same key split elsewhere (a colon inside an id or an ifname) is rare enough for strings.
    if (idLen !== idEnd[j]! - idStart[j]!) return this.keyAt(i) === this.keyAt(j);
    return (
      arena.compare(arena, idStart[j], idEnd[j], idStart[i], idEnd[i]) === 0 &&
      arena.compare(arena, ifStart[j], ifEnd[j], ifStart[i], ifEnd[i]) === 0
    );
  }

  private add(i: number, mi: number): void {
    const h = this.c.hash[i]!;
    const mask = this.slots.length - 1;
    this.nextLease[i] = -1;
    for (let slot = h & mask; ; slot = (slot + 1) & mask) {
      const a = this.slots[slot]! - 1;
      if (a < 0) {
        const n = this.atts++;
        this.head[n] = i;
        this.tail[n] = i;
        this.attHash[n] = h;
        this.metaOf[n] = mi;
        this.slots[slot] = n + 1;
        this.live++;
        return;
      }
      if (this.attHash[a] === h && this.sameKey(this.head[a]!, i)) {
        this.nextLease[this.tail[a]!] = i;
        this.tail[a] = i;
        return;
      }
    }
  }

  /** The attachment with this key (`attKey`) still in the set, or -1. */
  private find(key: string): number {
    const h = keyHash(key);
    const mask = this.slots.length - 1;
    for (let slot = h & mask; ; slot = (slot + 1) & mask) {
      const a = this.slots[slot]! - 1;
      if (a < 0) return -1;
      if (this.attHash[a] === h && this.keyAt(this.head[a]!) === key) return this.gone[a] === 1 ? -1 : a;
    }
  }

  private ipsOf(a: number): string[] {
    const ips: string[] = [];
    for (let i = this.head[a]!; i >= 0; i = this.nextLease[i]!)
      ips.push(this.c.arena.toString('utf8', this.c.nameStart[i], this.c.nameEnd[i]));
    return ips;
  }

  private entry(a: number): FoundEntry {
    const att = columnAttachment(this.c, this.head[a]!);
    return {
      containerId: att.containerId,
      ifname: att.ifname,
      ips: this.ipsOf(a),
      meta: this.metas[this.metaOf[a]!]!,
    };
  }

  get(key: string): FoundEntry | undefined {
    const a = this.find(key);
    return a < 0 ? undefined : this.entry(a);
  }

  has(key: string): boolean {
    return this.find(key) >= 0;
  }

  delete(key: string): boolean {
    const a = this.find(key);
    if (a < 0) return false;
    this.gone[a] = 1;
    this.live--;
    return true;
  }

  /** The attachment with this key, if in the set, keeps `meta` instead of its own. */
  setMeta(key: string, meta: LeaseMeta): void {
    const a = this.find(key);
    if (a >= 0) this.metaOf[a] = this.metaIndex(meta);
  }

  /** The entries (by key) whose meta passes `want`, asked once per distinct meta: most are never made. */
  *entries(want: (m: LeaseMeta) => boolean = () => true): Generator<[string, FoundEntry]> {
    const wanted = this.metas.map(want);
    for (let a = 0; a < this.atts; a++) {
      if (this.gone[a] === 1 || !wanted[this.metaOf[a]!]) continue;
      const e = this.entry(a);
      yield [attKey(e), e];
    }
  }

  /** The same attachments with the same addresses as `old` (a found index read back). */
  sameAs(old: ReadonlyMap<string, FoundEntry>): boolean {
    if (this.live !== old.size) return false;
    for (const [key, e] of this.entries()) {
      const o = old.get(key);
      if (o === undefined || o.ips.length !== e.ips.length || !e.ips.every((i) => o.ips.includes(i)))
        return false;
    }
    return true;
  }

  /**
   * The found index file (layout: see FoundEntry's comment above), written from the byte ranges: lines of
   * one bucket in the order the attachments were found, metas numbered in that order and shared by value.
   */
  encode(id: string): Buffer {
    let buckets = 1;
    while (buckets * FOUND_PER_BUCKET < this.live) buckets *= 2;
    const { arena, nameStart, nameEnd, idStart, idEnd, ifStart, ifEnd } = this.c;
    const metas: LeaseMeta[] = [];
    const byValue = new Map<string, number>();
    const metaOut = new Int32Array(this.metas.length).fill(-1);
    const miText: Buffer[] = [];
    const bucketLen = new Float64Array(buckets + 1);
    for (let a = 0; a < this.atts; a++) {
      if (this.gone[a] === 1) continue;
      const mi = this.metaOf[a]!;
      if (metaOut[mi] === -1) {
        const m = JSON.stringify(this.metas[mi]);
        let out = byValue.get(m);
        if (out === undefined) {
          out = metas.push(this.metas[mi]!) - 1;
          byValue.set(m, out);
        }
        metaOut[mi] = out;
        miText[mi] = Buffer.from(String(out));
      }
      const h = this.head[a]!;
      // `<id>\t<ifname>\t<meta>\t<ip> <ip>…\n`
      let len = idEnd[h]! - idStart[h]! + ifEnd[h]! - ifStart[h]! + miText[mi]!.length + 3;
      for (let i = h; i >= 0; i = this.nextLease[i]!) len += nameEnd[i]! - nameStart[i]! + 1;
      bucketLen[(this.attHash[a]! % buckets) + 1]! += len;
    }
    const header: FoundHeader = { v: 1, id, metas, buckets };
    const head = Buffer.from(`${JSON.stringify(header)}\n`);
    const bodyStart = head.length + 4 * (buckets + 1);
    for (let b = 1; b <= buckets; b++) bucketLen[b] = bucketLen[b]! + bucketLen[b - 1]!;
    const out = Buffer.allocUnsafe(bodyStart + bucketLen[buckets]!);
    head.copy(out, 0);
    for (let b = 0; b <= buckets; b++) out.writeUInt32LE(bucketLen[b]!, head.length + 4 * b);
    // bucketLen[b] is now where bucket b's next line goes.
    for (let a = 0; a < this.atts; a++) {
      if (this.gone[a] === 1) continue;
      const b = this.attHash[a]! % buckets;
      const h = this.head[a]!;
      let p = bodyStart + bucketLen[b]!;
      p = copyBytes(arena, idStart[h]!, idEnd[h]!, out, p);
      out[p++] = 0x09;
      p = copyBytes(arena, ifStart[h]!, ifEnd[h]!, out, p);
      out[p++] = 0x09;
      const mt = miText[this.metaOf[a]!]!;
      p = copyBytes(mt, 0, mt.length, out, p);
      out[p++] = 0x09;
      for (let i = h; i >= 0; i = this.nextLease[i]!) {
        p = copyBytes(arena, nameStart[i]!, nameEnd[i]!, out, p);
        out[p++] = this.nextLease[i]! >= 0 ? 0x20 : 0x0a;
      }
      bucketLen[b] = p - bodyStart;
    }
    return out;
  }
}

/**
 * Copies src[start, end) to dst at p and answers the position after: a loop, since Buffer#copy goes through
 * JavaScript argument checks per call, which cost more than the few dozen bytes of a field.
 */
function copyBytes(src: Uint8Array, start: number, end: number, dst: Uint8Array, p: number): number {
  for (let k = start; k < end; k++) dst[p++] = src[k]!;
  return p;
}

/** The found index file of these entries (layout: FoundEntry). */
export function encodeFound(id: string, entries: readonly FoundEntry[]): Buffer {
  return FoundSet.fromEntries(entries).encode(id);
}

/** Thrown for a found index that exists but cannot be used (the caller rebuilds it from the lease files). */
export class CorruptFoundIndex extends Error {}

function parseFoundLines(text: string, metas: readonly LeaseMeta[], out: FoundEntry[]): void {
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [containerId, ifname, mi, ips] = line.split('\t');
    const meta = metas[Number(mi)];
    if (containerId === undefined || ifname === undefined || ips === undefined || meta === undefined)
      throw new CorruptFoundIndex(`bad entry ${JSON.stringify(line.slice(0, 80))}`);
    out.push({ containerId, ifname, ips: ips === '' ? [] : ips.split(' '), meta });
  }
}

/** A `.berth/found` file opened for lookups: its header and bucket table, read once. */
export class FoundIndex {
  private constructor(
    private readonly path: string,
    readonly id: string,
    private readonly metas: readonly LeaseMeta[],
    private readonly table: Uint32Array,
    private readonly bodyStart: number,
  ) {}

  /** The index with this id; undefined when there is no file; throws CorruptFoundIndex for any other file. */
  static open(path: string, id: string): FoundIndex | undefined {
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new CorruptFoundIndex((err as Error).message);
    }
    try {
      let buf = Buffer.alloc(FOUND_PREFIX_BYTES);
      let len = fs.readSync(fd, buf, 0, buf.length, 0);
      const nl = buf.subarray(0, len).indexOf(0x0a);
      if (nl === -1 || buf[0] !== 0x7b) throw new CorruptFoundIndex('no header');
      let header: FoundHeader;
      try {
        header = JSON.parse(buf.toString('utf8', 0, nl)) as FoundHeader;
      } catch {
        throw new CorruptFoundIndex('bad header');
      }
      if (
        header.v !== 1 ||
        header.id !== id ||
        !Array.isArray(header.metas) ||
        !Number.isInteger(header.buckets) ||
        header.buckets < 1
      )
        throw new CorruptFoundIndex(`not the index ${id}`);
      const tableEnd = nl + 1 + 4 * (header.buckets + 1);
      if (tableEnd > len) {
        buf = Buffer.alloc(tableEnd);
        len = fs.readSync(fd, buf, 0, tableEnd, 0);
        if (len < tableEnd) throw new CorruptFoundIndex('short table');
      }
      const table = new Uint32Array(header.buckets + 1);
      for (let b = 0; b <= header.buckets; b++) table[b] = buf.readUInt32LE(nl + 1 + 4 * b);
      return new FoundIndex(path, id, header.metas, table, tableEnd);
    } finally {
      fs.closeSync(fd);
    }
  }

  private read(start: number, end: number): string {
    if (end < start) throw new CorruptFoundIndex('bad table');
    const fd = fs.openSync(
      this.path,
      fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK,
    );
    try {
      const buf = Buffer.alloc(end - start);
      const n = fs.readSync(fd, buf, 0, buf.length, this.bodyStart + start);
      if (n !== buf.length) throw new CorruptFoundIndex('short file');
      return buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The entry of the attachment with this key (`attKey`), if it was found: one read of its bucket. */
  lookup(key: string): FoundEntry | undefined {
    const b = keyHash(key) % (this.table.length - 1);
    const out: FoundEntry[] = [];
    parseFoundLines(this.read(this.table[b]!, this.table[b + 1]!), this.metas, out);
    return out.find((e) => attKey(e) === key);
  }

  /** Every entry. */
  all(): FoundEntry[] {
    const out: FoundEntry[] = [];
    parseFoundLines(this.read(0, this.table[this.table.length - 1]!), this.metas, out);
    return out;
  }
}

/**
 * The entries of the found index `id` by attachment key (what a rebuild keeps the metadata of); undefined
 * when there is none, or it is missing or unusable.
 */
export function readFoundEntries(
  p: LeaseDirPaths,
  id: string | undefined,
): Map<string, FoundEntry> | undefined {
  if (id === undefined) return undefined;
  try {
    const idx = FoundIndex.open(p.found, id);
    return idx === undefined ? undefined : new Map(idx.all().map((e) => [attKey(e), e]));
  } catch (err) {
    if (!(err instanceof CorruptFoundIndex)) throw err;
    return undefined;
  }
}

let foundSeq = 0;

/** Writes the found index whole: a temp file in `.berth/tmp`, renamed over the old one (only under the lock). */
export function writeFound(p: LeaseDirPaths, data: Uint8Array): void {
  const tmp = join(p.tmp, `found-${process.pid}-${foundSeq++}`);
  fs.writeFileSync(tmp, data, { mode: 0o600, flag: 'wx' });
  fs.renameSync(tmp, p.found);
}

/** A new found index id: any value no earlier index of the directory had. */
export function newFoundId(): string {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/** What `stampSentinel` returns when the directory could not be stamped: matches no real mtime. */
export const NO_SENTINEL = 'unset';

/**
 * Sets the directory's mtime to a moment 10 s in the past with random nanoseconds and returns the value the
 * kernel stored (decimal nanoseconds): any later change of the directory stamps the current time, which
 * cannot equal it, so whoever finds it unchanged may trust the index.
 */
export function stampSentinel(dir: string, now: Date, warn: (m: string) => void): string {
  const secs = Math.floor(now.getTime() / 1000) - 10 + Math.random();
  try {
    fs.utimesSync(dir, now, secs);
  } catch (err) {
    warn(`cannot stamp ${dir} (${(err as Error).message}); the index will be rebuilt on every operation`);
    return NO_SENTINEL;
  }
  return fs.statSync(dir, { bigint: true }).mtimeNs.toString();
}

/** Why the network directory cannot be written (STATUS), or undefined. The nearest existing ancestor decides: the stores create the rest. */
export function unwritableReason(p: LeaseDirPaths): string | undefined {
  let dir = p.dir;
  for (;;) {
    try {
      const st = fs.statSync(dir);
      if (!st.isDirectory()) return `${dir} is not a directory`;
      fs.accessSync(dir, fs.constants.W_OK);
      return fullReason(dir) ?? shutDownReason(p);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return `${dir} is not writable: ${(err as Error).message}`;
    }
    const parent = join(dir, '..');
    if (parent === dir) return `no existing directory above ${p.dir}`;
    dir = parent;
  }
}

/**
 * A filesystem with no block or no inode left fails every ADD (a lease is a new file with content) while
 * `access` still says writable. Root may use the blocks reserved for it; others only those available.
 */
function fullReason(dir: string): string | undefined {
  let fsStat: fs.StatsFs;
  try {
    fsStat = fs.statfsSync(dir);
  } catch {
    return undefined; // no answer is no evidence
  }
  const free = process.getuid?.() === 0 ? fsStat.bfree : fsStat.bavail;
  // blocks 0: a filesystem that keeps no count (ramfs, FUSE without statfs), not a full one.
  if (fsStat.blocks > 0 && free === 0) return `the filesystem of ${dir} is full`;
  if (fsStat.files > 0 && fsStat.ffree === 0) return `the filesystem of ${dir} has no free inode`;
  return undefined;
}

/**
 * A filesystem that shut itself down after an error (ext4's errors=remount-ro: "emergency_ro") refuses
 * writes with EROFS while its mount still says rw: opening the lock file for writing (no write, no mtime
 * change) tells. Nothing to open on a network with no lock file yet.
 */
function shutDownReason(p: LeaseDirPaths): string | undefined {
  let fd: number;
  try {
    fd = fs.openSync(p.lock, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'EROFS' || code === 'EIO'
      ? `${p.dir} is not writable: ${(err as Error).message}`
      : undefined;
  }
  fs.closeSync(fd);
  return undefined;
}

/** Temp files a crashed writer left: host-local would match their content on CHECK. Only under the lock. */
export function clearTemp(p: LeaseDirPaths): void {
  for (const f of fs.readdirSync(p.tmp)) fs.rmSync(join(p.tmp, f), { force: true });
}

/**
 * The metadata (boot, pod) of an attachment whose leases are `holds`: the first of `sources` (its record,
 * then its found-index entry) that names an address it still holds, else `fresh`. A container id that came
 * back with other addresses (a restart under the same id, through host-local) is new to berth: the old boot
 * id would make the reboot rule release its live lease. So is one that came back with the same address
 * after a reboot (a static IP; host-local's DEL and ADD): an earlier boot's metadata is not taken over for a
 * lease file `writtenThisBoot` says was written since this boot began.
 */
export function inheritedMeta(
  holds: (name: string) => boolean,
  sources: readonly ({ ips: readonly string[]; meta: LeaseMeta } | undefined)[],
  fresh: LeaseMeta,
  writtenThisBoot: (name: string) => boolean = () => false,
): LeaseMeta {
  const from = sources.find((s) => s !== undefined && s.ips.some(holds));
  if (from === undefined) return fresh;
  if (from.meta.bootId !== fresh.bootId && from.ips.some((i) => holds(i) && writtenThisBoot(i))) return fresh;
  return from.meta;
}

/**
 * Whether the lease file `name` in `dir` was written since the time `since` gives (ms); false when unknown.
 * `since` is asked once, and only when a file is: after a reboot, not on every call.
 */
export function writtenSince(
  dir: string,
  since: (() => number | undefined) | undefined,
): (name: string) => boolean {
  let at: number | undefined | null = null;
  return (name) => {
    if (at === null) at = since?.();
    if (at === undefined) return false;
    try {
      return fs.statSync(join(dir, name)).mtimeMs > at;
    } catch {
      return false;
    }
  };
}
