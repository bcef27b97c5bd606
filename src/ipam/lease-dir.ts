// The on-disk format of one network directory, in one place: berth-ipam working on the files
// (lease-file-store) and berthd (daemon/network-store) read and write it at the same moment under the same
// flock, so the names, the bytes of a lease, a record and state.json, and the mtime sentinel must never
// differ between the two. Layout and rules: README "berth-ipam", section "On disk".
import * as fs from 'node:fs';
import { join } from 'node:path';
import { type Ip, formatIp, parseIp } from '../address/ip';
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
  const ip = parseIp(name);
  return ip !== undefined && formatIp(ip) === name ? ip : undefined;
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

/**
 * Reads one lease file without following a symlink; throws when it cannot be read or is not a regular file.
 * `buf` is reused across calls by a scan of the whole directory.
 */
export function readLeaseFile(path: string, buf: Buffer): { text: string; mtime: Date } {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new Error('not a regular file');
    return { text: buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString(), mtime: st.mtime };
  } finally {
    fs.closeSync(fd);
  }
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

/** `.berth/state.json`: index generation, the directory mtime sentinel of the last commit, last boot seen. */
export interface IndexState {
  v: 1;
  gen: number;
  dirMtimeNs: string;
  bootId?: string;
}

export function encodeState(s: { gen: number; dirMtimeNs: string; bootId?: string }): string {
  const state: IndexState = { v: 1, gen: s.gen, dirMtimeNs: s.dirMtimeNs };
  if (s.bootId !== undefined) state.bootId = s.bootId;
  return JSON.stringify(state);
}

/** The state, or undefined when missing or corrupt (the index is then rebuilt). */
export function readState(p: LeaseDirPaths): IndexState | undefined {
  try {
    const s = JSON.parse(fs.readFileSync(p.state, 'utf8')) as IndexState;
    if (s.v === 1 && typeof s.gen === 'number' && typeof s.dirMtimeNs === 'string') return s;
  } catch {
    // Missing or corrupt.
  }
  return undefined;
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
