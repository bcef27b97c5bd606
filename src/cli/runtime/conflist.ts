// Finds and parses a network configuration list exactly as libcni's LoadNetworkConf does, so `berth exec`
// and cnitool pick the same file, the same plugins and the same cniVersion for a given network name.
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { CniError, ErrorCode } from '../../cni-spec/errors';
import { compareVersions, IMPLEMENTED_VERSION } from '../../cni-spec/versions';

/** One plugin object of the list, as written by the administrator (unknown keys kept verbatim). */
export type PluginConf = Record<string, unknown> & { type: string; capabilities?: Record<string, unknown> };

export interface NetworkConfigList {
  name: string;
  /** The version every request of this list carries: `cniVersion`, or the highest usable of `cniVersions`. */
  cniVersion: string;
  disableCheck: boolean;
  disableGC: boolean;
  plugins: PluginConf[];
  /** The list's bytes: stored base64-encoded in the result cache, as libcni does. */
  bytes: Buffer;
  /** Where it came from (for messages); undefined when parsed from memory. */
  file?: string;
}

/**
 * libcni: `*.conflist` files sorted by name, first whose `name` matches; else single-plugin `*.conf` and
 * `*.json` files (sorted) up-converted to a one-element list. A file that does not parse is an error
 * even if it is not the one asked for — libcni stops there too, and a silent skip hides typos.
 */
export async function loadNetworkConfList(dir: string, name: string): Promise<NetworkConfigList> {
  const lists = await confFiles(dir, ['.conflist']);
  for (const file of lists) {
    const list = confListFromBytes(await readFile(file), file);
    if (list.name === name) return list;
  }
  const singles = await confFiles(dir, ['.conf', '.json']);
  if (singles.length === 0) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      lists.length === 0
        ? `no net configurations found in ${dir}`
        : `no net configuration with name "${name}" in ${dir}`,
    );
  }
  for (const file of singles) {
    const bytes = await readFile(file);
    const conf = parsePluginConf(parseJsonObject(bytes, `error parsing configuration (${file})`), file);
    if (conf.name === name) return confListFromConf(conf, file);
  }
  throw new CniError(ErrorCode.InvalidNetworkConfig, `no net configuration with name "${name}" in ${dir}`);
}

async function confFiles(dir: string, extensions: string[]): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new CniError(ErrorCode.IoFailure, `cannot read config directory ${dir}`, String(err), {
      cause: err,
    });
  }
  return entries
    .filter((e) => !e.isDirectory() && extensions.includes(extname(e.name)))
    .map((e) => join(dir, e.name))
    .sort(byteOrder);
}

// Go's sort.Strings compares bytes; localeCompare would not.
function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** libcni ConfListFromBytes (spec 1.1 flavour: `cniVersions`, `disableGC`, boolean strings accepted). */
export function confListFromBytes(bytes: Buffer, file?: string): NetworkConfigList {
  const where = file === undefined ? '' : ` (${file})`;
  const raw = parseJsonObject(bytes, `error parsing configuration list${where}`);
  const fail = (msg: string): never => {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `error parsing configuration list${where}: ${msg}`);
  };
  if (!('name' in raw)) fail('no name');
  if (typeof raw.name !== 'string') fail(`invalid name type ${jsonType(raw.name)}`);
  let cniVersion = '';
  if ('cniVersion' in raw) {
    if (typeof raw.cniVersion !== 'string') fail(`invalid cniVersion type ${jsonType(raw.cniVersion)}`);
    cniVersion = raw.cniVersion as string;
  }
  if ('cniVersions' in raw) cniVersion = pickVersion(raw.cniVersions, cniVersion, fail);
  const disableCheck = parseBoolKey(raw, 'disableCheck', fail);
  const disableGC = parseBoolKey(raw, 'disableGC', fail);
  if (!('plugins' in raw)) fail("no 'plugins' key");
  if (!Array.isArray(raw.plugins)) fail(`invalid 'plugins' type ${jsonType(raw.plugins)}`);
  const rawPlugins = raw.plugins as unknown[];
  if (rawPlugins.length === 0) fail('no plugins in list');
  const plugins = rawPlugins.map((p, i) => {
    if (typeof p !== 'object' || p === null || Array.isArray(p))
      return fail(`plugin config ${i} is not an object`);
    return parsePluginConf(p as Record<string, unknown>, `plugin config ${i}${where}`);
  });
  const list: NetworkConfigList = {
    name: raw.name as string,
    cniVersion,
    disableCheck,
    disableGC,
    plugins,
    bytes,
  };
  if (file !== undefined) list.file = file;
  return list;
}

/** libcni ConfListFromConf: the single config becomes the only plugin; its bytes are re-serialised. */
export function confListFromConf(conf: PluginConf, file?: string): NetworkConfigList {
  const synthesized = { cniVersion: conf.cniVersion ?? '', name: conf.name ?? '', plugins: [conf] };
  return confListFromBytes(Buffer.from(goJson(synthesized)), file);
}

function parsePluginConf(raw: Record<string, unknown>, what: string): PluginConf {
  if (typeof raw.type !== 'string' || raw.type === '') {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `error parsing configuration (${what}): missing 'type'`,
    );
  }
  // The type becomes a file name searched on CNI_PATH: a separator would escape the plugin directories.
  if (/[/\\]/.test(raw.type)) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid plugin type "${raw.type}" (${what})`);
  }
  return raw as PluginConf;
}

// spec 1.1: the highest of cniVersion + cniVersions that this runtime implements; newer ones are skipped.
function pickVersion(rawVersions: unknown, cniVersion: string, fail: (msg: string) => never): string {
  if (!Array.isArray(rawVersions)) return fail(`invalid cniVersions type ${jsonType(rawVersions)}`);
  const usable: string[] = [];
  const consider = (v: string, what: string): void => {
    let newer: boolean;
    try {
      newer = compareVersions(v, IMPLEMENTED_VERSION) > 0;
    } catch {
      return fail(`invalid ${what}`);
    }
    if (!newer) usable.push(v);
  };
  rawVersions.forEach((v, i) => {
    if (typeof v !== 'string') fail(`invalid cniVersions entry at index ${i}: ${jsonType(v)}`);
    consider(v, `cniVersions entry ${String(v)} at index ${i}`);
  });
  if (cniVersion !== '') consider(cniVersion, `cniVersion ${cniVersion}`);
  if (usable.length === 0) return cniVersion;
  return usable.sort(compareVersions)[usable.length - 1] as string;
}

function parseBoolKey(raw: Record<string, unknown>, key: string, fail: (msg: string) => never): boolean {
  if (!(key in raw)) return false;
  const v = raw[key];
  if (typeof v === 'boolean') return v;
  // libcni accepts Go's strconv.ParseBool spellings, as the official docs write "true" in quotes.
  if (typeof v === 'string') {
    if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v)) return true;
    if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(v)) return false;
    return fail(`invalid ${key} value "${v}"`);
  }
  return fail(`invalid ${key} type ${jsonType(v)}`);
}

function parseJsonObject(bytes: Buffer, what: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new CniError(ErrorCode.DecodingFailure, `${what}: ${(err as Error).message}`, undefined, {
      cause: err,
    });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new CniError(ErrorCode.DecodingFailure, `${what}: not a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

function jsonType(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/**
 * JSON the way Go's encoding/json writes a map: keys sorted at every level. libcni re-serialises every
 * request config through a map, so doing the same keeps the bytes a plugin sees close to cnitool's.
 */
export function goJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value !== 'object' || value === null) return value;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value).sort(byteOrder))
    out[key] = sortKeys((value as Record<string, unknown>)[key]);
  return out;
}
