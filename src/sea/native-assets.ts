// Native addons inside the single executable: a .node file can only be dlopen()ed from disk, so each
// embedded addon is written once to a root-owned directory under its content hash and loaded from there.
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';

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
 * unless sticky (so a private dir under /tmp is fine, a dir inside a world-writable one is not).
 */
export function assertPrivateDir(dir: string): void {
  const me = euid();
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory (a symlink is refused)`);
  if (st.uid !== me) throw new Error(`${dir} is owned by uid ${st.uid}, not by uid ${me}`);
  if ((st.mode & 0o022) !== 0)
    throw new Error(`${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
  for (let up = dirname(dir); ; up = dirname(up)) {
    const a = lstatSync(up);
    const sticky = (a.mode & 0o1000) !== 0;
    if (a.uid !== 0 && a.uid !== me) throw new Error(`${up} (above ${dir}) is owned by uid ${a.uid}`);
    if ((a.mode & 0o022) !== 0 && !sticky)
      throw new Error(`${up} (above ${dir}) is writable by group or others`);
    if (up === dirname(up)) break;
  }
}

function trustedFile(file: string): boolean {
  try {
    const st = lstatSync(file);
    return st.isFile() && st.uid === euid() && (st.mode & 0o022) === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Writes `bytes` to `file` through a temp file in the same directory and a rename, so no reader sees half a library. */
function writeAtomically(file: string, bytes: Uint8Array): void {
  const tmp = `${file}.${process.pid}.tmp`;
  // Left behind only by a process of the same pid that died mid-write: ours to replace.
  try {
    unlinkSync(tmp);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const fd = openSync(tmp, 'wx', 0o500);
  try {
    writeSync(fd, bytes);
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
  const file = join(dir, `${entry.sha256}.node`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  assertPrivateDir(dir);
  if (trustedFile(file)) return file;
  const bytes = new Uint8Array(sea().getRawAsset(entry.asset) as ArrayBuffer);
  // Required here: only a first extraction needs node:crypto, which is slow to load.
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== entry.sha256)
    throw new Error(`embedded addon ${name} is corrupt (sha256 ${actual}, expected ${entry.sha256})`);
  writeAtomically(file, bytes);
  return file;
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
