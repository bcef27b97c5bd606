// The runtimes' result cache (libcni's cniCacheV1 files), byte-compatible so that `berth exec`, cnitool,
// containerd and CRI-O can each DEL or GC attachments the others added.
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CniError, ErrorCode } from '../../cni-spec/errors';
import { containerIdProblem, ifnameProblem, networkNameProblem } from '../../cni-spec/identifiers';

/** libcni's default: the cache files live in `<dir>/results/`. */
export const DEFAULT_CACHE_DIR = '/var/lib/cni';
export const CACHE_KIND = 'cniCacheV1';

/** What identifies an attachment on disk: network name, container id and interface name. */
export interface AttachmentKey {
  networkName: string;
  containerId: string;
  ifName: string;
}

export interface CachedAttachment extends AttachmentKey {
  netns: string;
  /** The list bytes at ADD time (base64 on disk). */
  config: Buffer;
  cniArgs: [string, string][];
  capabilityArgs: Record<string, unknown>;
  /** The final ADD result, in the version the last plugin printed it. */
  result: Record<string, unknown> | undefined;
}

/** libcni validates these three before ADD/CHECK/DEL: they become a file name under the cache dir. */
export function validateAttachmentKey(key: AttachmentKey): void {
  const id = containerIdProblem(key.containerId);
  if (id !== undefined) {
    const code = key.containerId === '' ? ErrorCode.UnknownContainer : ErrorCode.InvalidEnvironmentVariables;
    throw new CniError(code, `invalid container id "${key.containerId}": ${id}`);
  }
  const net = networkNameProblem(key.networkName);
  if (net !== undefined)
    throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid network name "${key.networkName}": ${net}`);
  const ifn = ifnameProblem(key.ifName);
  if (ifn !== undefined)
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `invalid interface name "${key.ifName}": ${ifn}`,
    );
}

export function cacheFilePath(cacheDir: string, key: AttachmentKey): string {
  return join(cacheDir, 'results', `${key.networkName}-${key.containerId}-${key.ifName}`);
}

/** The file libcni writes after a successful ADD of the whole list. Optional fields follow Go's omitempty. */
export function encodeCacheEntry(entry: CachedAttachment): string {
  const out: Record<string, unknown> = {
    kind: CACHE_KIND,
    containerId: entry.containerId,
    config: entry.config.toString('base64'),
    ifName: entry.ifName,
    networkName: entry.networkName,
  };
  // libcni >= 1.2 records the netns (omitempty) so GC can DEL a stale attachment properly; 1.1 does not.
  if (entry.netns !== '') out.netns = entry.netns;
  if (entry.cniArgs.length > 0) out.cniArgs = entry.cniArgs;
  if (Object.keys(entry.capabilityArgs).length > 0) out.capabilityArgs = entry.capabilityArgs;
  if (entry.result !== undefined) out.result = entry.result;
  return JSON.stringify(out);
}

export async function writeCacheEntry(cacheDir: string, entry: CachedAttachment): Promise<void> {
  const file = cacheFilePath(cacheDir, entry);
  await mkdir(join(cacheDir, 'results'), { recursive: true, mode: 0o700 });
  // Write-then-rename: a reader (a concurrent DEL or GC) never sees half a file.
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, encodeCacheEntry(entry), { mode: 0o600 });
  await rename(tmp, file);
}

/** Decodes a cache file; undefined when it is not a cniCacheV1 entry (libcni's legacy result-only files). */
export function decodeCacheEntry(text: string): CachedAttachment | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null || (raw as { kind?: unknown }).kind !== CACHE_KIND)
    return undefined;
  const o = raw as Record<string, unknown>;
  const str = (k: string): string => (typeof o[k] === 'string' ? o[k] : '');
  const args = Array.isArray(o.cniArgs)
    ? (o.cniArgs as unknown[]).filter(
        (p): p is [string, string] =>
          Array.isArray(p) && p.length === 2 && p.every((x) => typeof x === 'string'),
      )
    : [];
  const caps = typeof o.capabilityArgs === 'object' && o.capabilityArgs !== null ? o.capabilityArgs : {};
  const result = typeof o.result === 'object' && o.result !== null ? o.result : undefined;
  return {
    networkName: str('networkName'),
    containerId: str('containerId'),
    ifName: str('ifName'),
    netns: str('netns'),
    config: Buffer.from(str('config'), 'base64'),
    cniArgs: args,
    capabilityArgs: caps as Record<string, unknown>,
    result: result as Record<string, unknown> | undefined,
  };
}

/**
 * The cached final result of an attachment, as libcni reads it for CHECK and DEL: absent file → undefined;
 * a legacy file holding just the result → that result; an unparseable file is ignored (DEL must go on).
 */
export async function readCachedResult(
  cacheDir: string,
  key: AttachmentKey,
): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(cacheFilePath(cacheDir, key), 'utf8');
  } catch {
    return undefined;
  }
  const entry = decodeCacheEntry(text);
  if (entry !== undefined) return entry.result;
  try {
    const legacy: unknown = JSON.parse(text);
    return typeof legacy === 'object' && legacy !== null && !Array.isArray(legacy)
      ? (legacy as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

export async function removeCacheEntry(cacheDir: string, key: AttachmentKey): Promise<void> {
  await rm(cacheFilePath(cacheDir, key), { force: true });
}

/** libcni GetCachedAttachments: every cniCacheV1 file of the cache dir (other files skipped). */
export async function listCachedAttachments(cacheDir: string): Promise<CachedAttachment[]> {
  const dir = join(cacheDir, 'results');
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new CniError(ErrorCode.IoFailure, `cannot list result cache ${dir}`, String(err), { cause: err });
  }
  const out: CachedAttachment[] = [];
  for (const name of names.sort()) {
    let text: string;
    try {
      text = await readFile(join(dir, name), 'utf8');
    } catch {
      continue; // removed by a concurrent DEL, or not a regular file
    }
    const entry = decodeCacheEntry(text);
    // As libcni's GetCachedAttachments: an entry without its interface or network names no attachment
    // (a DEL of it could only fail, and fail the whole GC).
    if (entry !== undefined && entry.ifName !== '' && entry.networkName !== '') out.push(entry);
  }
  return out;
}
