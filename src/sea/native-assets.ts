// Native addons inside the single executable: a .node file can only be dlopen()ed from disk, so each
// embedded addon is written once to a root-owned directory under its content hash and loaded from there.
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  realpathSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** Default extraction directory; BERTH_NATIVE_DIR replaces it (tests use a private temp dir). */
export const DEFAULT_NATIVE_DIR = '/var/lib/berth/native';

/** What the package script embeds: asset key of each addon and the sha256 of its bytes. */
export interface NativeManifest {
  addons: Record<string, { asset: string; sha256: string }>;
}

/** The asset holding the manifest (written by scripts/package.js). */
export const MANIFEST_ASSET = 'berth/manifest.json';

let manifest: NativeManifest | undefined;
const loadedAddons = new Map<string, unknown>();

function sea(): typeof import('node:sea') {
  return require('node:sea') as typeof import('node:sea');
}

function readManifest(): NativeManifest {
  manifest ??= JSON.parse(sea().getAsset(MANIFEST_ASSET, 'utf8')) as NativeManifest;
  return manifest;
}

function euid(): number {
  return process.geteuid?.() ?? -1;
}

/**
 * Refuses a directory someone else could plant a library in: `dir` must be a real directory owned by us
 * and writable by nobody else, and every ancestor must be owned by root or us and not writable by others
 * unless sticky (so a private dir under /tmp is fine, a dir inside a world-writable one is not), both on
 * the path as written and on the one its symlinked ancestors lead to. Returns `dir` with its ancestors'
 * symlinks resolved (resolved once: what is checked is what the caller goes on to use).
 */
export function assertPrivateDir(dir: string): string {
  const me = euid();
  const parent = realpathSync(dirname(dir));
  const real = join(parent, basename(dir));
  const st = lstatSync(real);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory (a symlink is refused)`);
  if (st.uid !== me) throw new Error(`${dir} is owned by uid ${st.uid}, not by uid ${me}`);
  if ((st.mode & 0o022) !== 0)
    throw new Error(`${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
  assertSafeAncestors(dirname(dir), dir);
  // A symlinked ancestor (/var/lib/berth on a data disk, /var/run → /run): where it leads must hold too.
  if (parent !== dirname(dir)) assertSafeAncestors(parent, dir);
  return real;
}

function assertSafeAncestors(from: string, dir: string): void {
  const me = euid();
  for (let up = from; ; up = dirname(up)) {
    const a = lstatSync(up);
    const sticky = (a.mode & 0o1000) !== 0;
    if (a.uid !== 0 && a.uid !== me) throw new Error(`${up} (above ${dir}) is owned by uid ${a.uid}`);
    // A symlink's own mode is always 0777 and means nothing: its owner and its directory count (checked).
    if (!a.isSymbolicLink() && (a.mode & 0o022) !== 0 && !sticky)
      throw new Error(`${up} (above ${dir}) is writable by group or others`);
    if (up === dirname(up)) break;
  }
}

/**
 * A library of ours nobody else can write, of the embedded asset's size: a file cut short (a full disk
 * when an older berth wrote it without checking) is written again, not dlopen()ed (SIGBUS on every call).
 */
function trustedFile(file: string, size: number): boolean {
  try {
    const st = lstatSync(file);
    return st.isFile() && st.uid === euid() && (st.mode & 0o022) === 0 && st.size === size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Writes `bytes` to `file` through a temp file in the same directory and a rename, so no reader sees half a library. */
function writeAtomically(file: string, bytes: Uint8Array): void {
  // Unique beyond the pid (berth processes of two pid namespaces may share the directory); 'wx' refuses
  // whatever is there already.
  const tmp = `${file}.${process.pid}-${Math.random().toString(36).slice(2, 10)}.tmp`;
  const fd = openSync(tmp, 'wx', 0o500);
  try {
    // write(2) may write less than asked (a disk filling up): the rest, until all of it or an error.
    for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  closeSync(fd);
  try {
    renameSync(tmp, file);
  } catch (err) {
    unlinkSync(tmp);
    throw err;
  }
}

/**
 * Returns the path of the embedded addon `name` on disk, writing it first if this host has not got it
 * yet. Its name is its sha256, so two versions of berth never overwrite each other's library.
 */
export function extractAddon(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const entry = readManifest().addons[name];
  if (entry === undefined) throw new Error(`no embedded addon named ${name}`);
  const dir =
    env.BERTH_NATIVE_DIR !== undefined && env.BERTH_NATIVE_DIR !== ''
      ? env.BERTH_NATIVE_DIR
      : DEFAULT_NATIVE_DIR;
  // The embedded bytes themselves, not a copy (sea.getRawAsset).
  return placeAddon(dir, name, entry.sha256, new Uint8Array(sea().getRawAsset(entry.asset) as ArrayBuffer));
}

/** `bytes` (addon `name`, of that sha256) as `<sha256>.node` in the private directory `dir`, unless there already. */
export function placeAddon(dir: string, name: string, sha256: string, bytes: Uint8Array): string {
  makeDir(dir);
  // Checked, written and loaded through the path with no symlink left in it: a link on the way (one its
  // owner could retarget between the check and the dlopen) is resolved once, by the check.
  const real = assertPrivateDir(dir);
  const file = join(real, `${sha256}.node`);
  if (trustedFile(file, bytes.length)) return file;
  // Required here: only a first extraction needs node:crypto, which is slow to load.
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== sha256)
    throw new Error(`embedded addon ${name} is corrupt (sha256 ${actual}, expected ${sha256})`);
  writeAtomically(file, bytes);
  return file;
}

/** mkdir -p (0700); a failure names its real cause (a recursive mkdir says ENOENT for a read-only parent). */
function makeDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    mkdirSync(dir, { mode: 0o700 });
    throw err;
  }
}

/** Loads the embedded addon `name` (once per process) with process.dlopen, as require() would a .node file. */
export function loadEmbeddedAddon(name: string): unknown {
  const cached = loadedAddons.get(name);
  if (cached !== undefined) return cached;
  let file: string;
  try {
    file = extractAddon(name);
  } catch (err) {
    throw new Error(
      `berth: cannot extract the embedded native addon ${name}: ${(err as Error).message} ` +
        `(needs root; BERTH_NATIVE_DIR names another root-owned directory than ${DEFAULT_NATIVE_DIR})`,
      { cause: err },
    );
  }
  const module = { exports: {} as unknown };
  process.dlopen(module, file);
  loadedAddons.set(name, module.exports);
  return module.exports;
}
