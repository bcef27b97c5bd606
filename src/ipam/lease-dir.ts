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

/** The lock, the cursors and `.berth`: names in the network directory that are never leases. */
export function isBookkeepingName(name: string): boolean {
  return name === 'lock' || name === BERTH_DIR || name.startsWith(CURSOR_PREFIX);
}

/** The address a lease file name stands for: only the canonical text form counts (as host-local writes it). */
export function leaseNameIp(name: string): Ip | undefined {
  if (!name.includes(':')) return dottedQuad(name);
  const ip = parseIp(name);
  return ip !== undefined && formatIp(ip) === name ? ip : undefined;
}

/**
 * A canonical dotted quad (no leading zero, each part up to 255), as formatIp writes it: what parseIp and
 * formatIp answer together, without their splits and bigint steps (a scan asks once per lease file).
 */
function dottedQuad(name: string): Ip | undefined {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c === 0x2e) {
      if (digits === 0 || dots === 3) return undefined;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 0x30 && c <= 0x39) {
      if (digits > 0 && part === 0) return undefined;
      part = part * 10 + (c - 0x30);
      if (++digits > 3 || part > 255) return undefined;
    } else return undefined;
  }
  if (dots !== 3 || digits === 0) return undefined;
  return { family: 4, value: BigInt(value * 256 + part) };
}

/** The name of an attachment's record under `.berth/att/`. */
export function attKey(a: Attachment): string {
  return `${a.containerId}:${a.ifname}`;
}

/** host-local's lease file content; legacy files hold only the id. */
export function leaseContent(a: Attachment): string {
  return a.ifname === '' ? a.containerId.trim() : `${a.containerId.trim()}\r\n${a.ifname}`;
}

export function parseLeaseContent(raw: string): Attachment | undefined {
  const t = raw.trim();
  const nl = t.indexOf('\r\n');
  const containerId = nl === -1 ? t : t.slice(0, nl);
  const ifname = nl === -1 ? '' : t.slice(nl + 2);
  // Anything host-local could have written passes; binary junk and JSON do not.
  if (!/^[^\s{}\0]{1,1024}$/.test(containerId)) return undefined;
  if (ifname !== '' && !/^[^\s/\0]{1,64}$/.test(ifname)) return undefined;
  return { containerId, ifname };
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
}

/** Flags of a scan's open: never follow a symlink, never wait on a FIFO put there in place of a lease. */
const SCAN_OPEN = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;

/**
 * Reads every lease of a network directory once: the listing (whose entry types say which names are regular
 * files, so no stat per file), then open, read, close of each regular file, all in one call of the native
 * addon (`readSmallFiles`; one by one from JavaScript without it, or with `native: false`). This is the one scan a
 * take-over or a rebuild costs; host-local pays about the same on each ADD and DEL (a walk with an lstat, an
 * open, an fstat, two reads and a close per file). Names that are neither leases nor bookkeeping go to
 * `foreign`; `visit` sees every other one (the objects it gets are its to keep or drop: a take-over keeps as
 * few as it can, since what survives the scan is what the garbage collector copies).
 */
export function scanLeaseDir(
  dir: string,
  visit: (l: ScannedLease) => void,
  opts: { native?: boolean } = {},
): { foreign: string[] } {
  const foreign: string[] = [];
  const one = (name: string, read: () => string | { problem: string }): void => {
    if (isBookkeepingName(name)) return;
    const ip = leaseNameIp(name);
    if (ip === undefined) {
      foreign.push(name);
      return;
    }
    const text = read();
    if (typeof text !== 'string') {
      visit({ name, ip, problem: text.problem });
      return;
    }
    const att = parseLeaseContent(text);
    if (att === undefined) visit({ name, ip, corrupt: true, problem: JSON.stringify(text.slice(0, 40)) });
    else visit({ name, ip, att });
  };
  const all = opts.native === false ? undefined : readSmallFiles(dir);
  if (all !== undefined) {
    // kind u8 (0 read, 1 not a regular file, 2 failed), name length u16, content length or errno u16.
    let off = 0;
    while (off < all.length) {
      const kind = all[off]!;
      const nameEnd = off + 5 + all.readUInt16LE(off + 1);
      const extra = all.readUInt16LE(off + 3);
      const name = all.toString('utf8', off + 5, nameEnd);
      off = kind === 0 ? nameEnd + extra : nameEnd;
      const end = off;
      one(name, () =>
        kind === 0
          ? all.toString('utf8', nameEnd, end)
          : { problem: kind === 1 ? 'not a regular file' : `${getSystemErrorName(-extra)} on open or read` },
      );
    }
    return { foreign };
  }
  const buf = Buffer.alloc(4096);
  for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
    one(ent.name, () => {
      if (!ent.isFile()) return { problem: 'not a regular file' };
      try {
        const fd = fs.openSync(`${dir}/${ent.name}`, SCAN_OPEN);
        try {
          return buf.toString('utf8', 0, fs.readSync(fd, buf, 0, buf.length, 0));
        } finally {
          fs.closeSync(fd);
        }
      } catch (err) {
        return { problem: (err as Error).message };
      }
    });
  }
  return { foreign };
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
    const s = JSON.parse(fs.readFileSync(p.state, 'utf8')) as IndexState;
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

/** FNV-1a (32 bits) of the attachment key's UTF-16 code units. */
function foundBucket(key: string, buckets: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return (h >>> 0) % buckets;
}

export function encodeFound(id: string, entries: readonly FoundEntry[]): Buffer {
  let buckets = 1;
  while (buckets * FOUND_PER_BUCKET < entries.length) buckets *= 2;
  const metas: LeaseMeta[] = [];
  // Found entries share a few meta objects (one per sighting): by identity first, by value for the rest.
  const byObject = new Map<LeaseMeta, number>();
  const byValue = new Map<string, number>();
  const lines: string[][] = Array.from({ length: buckets }, () => []);
  for (const e of entries) {
    let mi = byObject.get(e.meta);
    if (mi === undefined) {
      const m = JSON.stringify(e.meta);
      mi = byValue.get(m);
      if (mi === undefined) {
        mi = metas.length;
        metas.push(e.meta);
        byValue.set(m, mi);
      }
      byObject.set(e.meta, mi);
    }
    const b = foundBucket(attKey(e), buckets);
    lines[b]!.push(`${e.containerId}\t${e.ifname}\t${mi}\t${e.ips.join(' ')}\n`);
  }
  const header: FoundHeader = { v: 1, id, metas, buckets };
  const table = Buffer.alloc(4 * (buckets + 1));
  const parts: Buffer[] = [Buffer.from(`${JSON.stringify(header)}\n`), table];
  let off = 0;
  for (let b = 0; b < buckets; b++) {
    table.writeUInt32LE(off, 4 * b);
    const part = Buffer.from(lines[b]!.join(''));
    parts.push(part);
    off += part.length;
  }
  table.writeUInt32LE(off, 4 * buckets);
  return Buffer.concat(parts);
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
      fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
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
    const fd = fs.openSync(this.path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
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
    const b = foundBucket(key, this.table.length - 1);
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
      return undefined;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return `${dir} is not writable: ${(err as Error).message}`;
    }
    const parent = join(dir, '..');
    if (parent === dir) return `no existing directory above ${p.dir}`;
    dir = parent;
  }
}

/** Temp files a crashed writer left: host-local would match their content on CHECK. Only under the lock. */
export function clearTemp(p: LeaseDirPaths): void {
  for (const f of fs.readdirSync(p.tmp)) fs.rmSync(join(p.tmp, f), { force: true });
}
