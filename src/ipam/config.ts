// berth-ipam's configuration: host-local's keys with host-local's merge order and defaults, berth's own
// additions (exclude, allocation, releaseOnReboot), and the requested-IP inputs; every problem is code 7
// (or 4 for CNI_ARGS) and names the key at fault.
import { resolve } from 'node:path';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { withGoFieldNames } from '../cni-spec/request';
import { specHasMultipleIPs } from '../cni-spec/versions';
import type { Route } from '../cni-spec/types/result';
import { type Cidr, parseCidr } from '../address/cidr';
import { type Ip, formatIp, parseIp } from '../address/ip';
import type { Policy } from './allocator';
import { type ClusterSettings, parseClusterSettings } from './cluster-blocks';
import { checkNetworkName } from './names';
import { type Range, canonicalizeRangeSet, rangeSetsOverlap } from './range-set';

/** host-local's default; the docs suggest a tmpfs path, berth's reboot handling makes that unnecessary. */
export const DEFAULT_DATA_DIR = '/var/lib/cni/networks';

export interface IpamConfig {
  network: string;
  cniVersion: string;
  /** Range sets in host-local's order: runtime ipRanges, then legacy top-level range, then `ranges`. */
  rangeSets: Range[][];
  routes: Route[];
  dataDir: string;
  resolvConf?: string;
  /** berth: addresses never handed out. */
  exclude: Cidr[];
  /** berth: `round-robin` (host-local's, default) or `lowest`. */
  policy: Policy;
  /** berth: release leases of an earlier boot on the first allocation of a new boot (default true). */
  releaseOnReboot: boolean;
  /** Requested addresses, merged in host-local's order (CNI_ARGS IP, args.cni.ips, runtimeConfig.ips). */
  requested: Ip[];
  /** berth: `ipam.cluster` makes the range sets pools shared through etcd (design/cluster-ipam.md). */
  cluster?: ClusterSettings;
}

/** What the config is read from: the request's parts, without the rest of the Request. */
export interface ConfigInput {
  config: Readonly<Record<string, unknown>>;
  cniVersion: string;
  cniArgs: ReadonlyMap<string, string>;
  /** `args.cni` of the config. */
  args: Readonly<Record<string, unknown>>;
  runtimeConfig(key: string): unknown;
}

function invalid(msg: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg);
}

/** "IP" or "IP/prefix" (the prefix is ignored, as host-local does). */
function requestedIp(v: unknown, where: string, code: number = ErrorCode.InvalidNetworkConfig): Ip {
  if (typeof v === 'string') {
    const ip = v.includes('/') ? parseCidr(v)?.ip : parseIp(v);
    if (ip !== undefined) return ip;
  }
  throw new CniError(
    code,
    `${where}: cannot understand ip ${JSON.stringify(v)} (expected an IP or IP/prefix)`,
  );
}

function stringList(v: unknown, where: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
    throw invalid(`${where} must be a list of strings`);
  return v;
}

function parseRoutes(v: unknown): Route[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalid('ipam.routes must be a list of {"dst": CIDR, "gw"?: IP}');
  return v.map((r: unknown, i) => {
    const o =
      typeof r === 'object' && r !== null
        ? withGoFieldNames(r as Record<string, unknown>, [
            'dst',
            'gw',
            'mtu',
            'advmss',
            'priority',
            'table',
            'scope',
          ])
        : (r as Record<string, unknown>);
    if (typeof o !== 'object' || o === null || typeof o.dst !== 'string' || parseCidr(o.dst) === undefined) {
      throw invalid(`ipam.routes[${i}].dst must be a CIDR such as 0.0.0.0/0`);
    }
    const route: Route = { dst: o.dst };
    if (o.gw !== undefined && o.gw !== null && o.gw !== '') {
      if (typeof o.gw !== 'string' || parseIp(o.gw) === undefined)
        throw invalid(`ipam.routes[${i}].gw must be an IP address`);
      route.gw = o.gw;
    }
    for (const k of ['mtu', 'advmss', 'priority', 'table', 'scope'] as const) {
      const n = o[k];
      if (n === undefined) continue;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0)
        throw invalid(`ipam.routes[${i}].${k} must be a non-negative integer`);
      route[k] = n;
    }
    return route;
  });
}

function parseRangeSets(raw: unknown, where: string): unknown[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw invalid(`${where} must be a list of range sets (lists of ranges)`);
  return raw;
}

/**
 * The old-style single range (`ipam.subnet`, `rangeStart`, `rangeEnd`, `gateway`) is used only when
 * `subnet` is set, but host-local decodes every key into its typed field first, so a wrong type is an
 * error whatever else is present; berth says so too instead of ignoring the key.
 */
function checkLegacyRangeKeys(ipam: Readonly<Record<string, unknown>>): void {
  const subnet = ipam.subnet;
  if (subnet !== undefined && subnet !== null && typeof subnet !== 'string') {
    throw invalid(`ipam.subnet must be a CIDR such as 198.18.64.0/24, got ${JSON.stringify(subnet)}`);
  }
  for (const key of ['rangeStart', 'rangeEnd', 'gateway'] as const) {
    const v = ipam[key];
    if (v === undefined || v === null || v === '') continue;
    if (typeof v !== 'string' || parseIp(v) === undefined) {
      throw invalid(`ipam.${key} must be an IP address, got ${JSON.stringify(v)}`);
    }
  }
}

/** host-local's own ipam keys, read in any case as Go does (berth's additions are read as written). */
const HOST_LOCAL_FIELDS = [
  'subnet',
  'rangeStart',
  'rangeEnd',
  'gateway',
  'ranges',
  'routes',
  'dataDir',
  'resolvConf',
];

function ipamObject(config: Readonly<Record<string, unknown>>): Record<string, unknown> | undefined {
  const ipam = config.ipam;
  if (typeof ipam !== 'object' || ipam === null || Array.isArray(ipam)) return undefined;
  return withGoFieldNames(ipam as Record<string, unknown>, HOST_LOCAL_FIELDS);
}

export function parseIpamConfig(input: ConfigInput): IpamConfig {
  const network = checkNetworkName(input.config.name);
  const ipam = ipamObject(input.config);
  if (ipam === undefined) {
    throw invalid(`IPAM config missing 'ipam' key`);
  }

  // host-local: the legacy single range is prepended to `ranges`, runtime ipRanges before both.
  const rawSets: { raw: unknown; where: string }[] = [];
  parseRangeSets(input.runtimeConfig('ipRanges'), 'runtimeConfig.ipRanges').forEach((raw, i) =>
    rawSets.push({ raw, where: `runtimeConfig.ipRanges[${i}]` }),
  );
  checkLegacyRangeKeys(ipam);
  if (ipam.subnet !== undefined && ipam.subnet !== null && ipam.subnet !== '') {
    const { subnet, rangeStart, rangeEnd, gateway } = ipam;
    rawSets.push({ raw: [{ subnet, rangeStart, rangeEnd, gateway }], where: 'ipam (top-level subnet)' });
  }
  parseRangeSets(ipam.ranges, 'ipam.ranges').forEach((raw, i) =>
    rawSets.push({ raw, where: `ipam.ranges[${i}]` }),
  );
  if (rawSets.length === 0) throw invalid('no IP ranges specified (set ipam.ranges or ipam.subnet)');
  const rangeSets = rawSets.map((s, i) => canonicalizeRangeSet(s.raw, `invalid range set ${i} (${s.where})`));

  const perFamily = { 4: 0, 6: 0 };
  for (const s of rangeSets) perFamily[s[0]!.family]++;
  if ((perFamily[4] > 1 || perFamily[6] > 1) && !specHasMultipleIPs(input.cniVersion)) {
    throw invalid(`CNI version ${input.cniVersion} does not support more than 1 address per family`);
  }
  for (let i = 0; i < rangeSets.length; i++) {
    for (let j = i + 1; j < rangeSets.length; j++) {
      if (rangeSetsOverlap(rangeSets[i]!, rangeSets[j]!)) throw invalid(`range set ${i} overlaps with ${j}`);
    }
  }

  const requested: Ip[] = [];
  const ipArg = input.cniArgs.get('IP');
  if (ipArg !== undefined && ipArg !== '') {
    requested.push(requestedIp(ipArg, 'CNI_ARGS IP', ErrorCode.InvalidEnvironmentVariables));
  }
  stringList(input.args.ips, 'args.cni.ips').forEach((v, i) =>
    requested.push(requestedIp(v, `args.cni.ips[${i}]`)),
  );
  stringList(input.runtimeConfig('ips'), 'runtimeConfig.ips').forEach((v, i) =>
    requested.push(requestedIp(v, `runtimeConfig.ips[${i}]`)),
  );
  const seen = new Set<string>();
  const uniqueRequested = requested.filter((ip) => {
    const k = formatIp(ip);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });

  const dataDir = dataDirOf(ipam);
  const resolvConf = ipam.resolvConf;
  if (resolvConf !== undefined && resolvConf !== null && typeof resolvConf !== 'string') {
    throw invalid('ipam.resolvConf must be a path');
  }

  const exclude = stringList(ipam.exclude, 'ipam.exclude').map((e) => {
    const c = e.includes('/')
      ? parseCidr(e)
      : ((ip) => (ip === undefined ? undefined : { ip, prefix: ip.family === 4 ? 32 : 128 }))(parseIp(e));
    if (c === undefined) throw invalid(`ipam.exclude: ${JSON.stringify(e)} is not an IP address or CIDR`);
    return c;
  });

  const allocation = ipam.allocation ?? 'round-robin';
  if (allocation !== 'round-robin' && allocation !== 'lowest') {
    throw invalid(`ipam.allocation must be "round-robin" or "lowest", got ${JSON.stringify(allocation)}`);
  }
  const releaseOnReboot = ipam.releaseOnReboot ?? true;
  if (typeof releaseOnReboot !== 'boolean') throw invalid('ipam.releaseOnReboot must be true or false');

  const conf: IpamConfig = {
    network,
    cniVersion: input.cniVersion,
    rangeSets,
    routes: parseRoutes(ipam.routes),
    dataDir,
    exclude,
    policy: allocation,
    releaseOnReboot,
    requested: uniqueRequested,
  };
  if (typeof resolvConf === 'string' && resolvConf !== '') conf.resolvConf = resolvConf;
  const cluster = parseClusterSettings(ipam.cluster);
  if (cluster !== undefined) conf.cluster = cluster;
  return conf;
}

/** Where the leases live: all that releasing needs. */
export function parseStoreLocation(config: Readonly<Record<string, unknown>>): {
  network: string;
  dataDir: string;
} {
  return { network: checkNetworkName(config.name), dataDir: dataDirOf(ipamObject(config)) };
}

/**
 * The paths berth-ipam keeps state in or reads for a network config, as its handlers read them (field names
 * in any case, the default data dir): the data dir and an absolute `resolvConf`. [] when the config names
 * no valid data dir (the call is refused on it anyway).
 */
export function ipamStatePaths(config: unknown): string[] {
  if (typeof config !== 'object' || config === null) return [];
  const ipam = ipamObject(config as Record<string, unknown>);
  let dataDir: string;
  try {
    dataDir = dataDirOf(ipam);
  } catch {
    return [];
  }
  const resolvConf = ipam?.resolvConf;
  return [dataDir, ...(typeof resolvConf === 'string' && resolvConf.startsWith('/') ? [resolvConf] : [])];
}

/**
 * One spelling per data dir, to compare them: `/x/`, `//x` and `/x` are one. Lexical, `..` included, as the
 * lease files' own paths are (path.join, like host-local's filepath.Join), so berthd and the program on the
 * files name the same directory. A relative path (a command line's) is taken from the current directory.
 */
export function normalDataDir(path: string): string {
  return resolve(path);
}

function dataDirOf(ipam: Readonly<Record<string, unknown>> | undefined): string {
  // An empty string is the default too, as in host-local (templates that leave the value blank).
  const dataDir = ipam?.dataDir === '' ? DEFAULT_DATA_DIR : (ipam?.dataDir ?? DEFAULT_DATA_DIR);
  if (typeof dataDir !== 'string' || !dataDir.startsWith('/')) {
    throw invalid(`ipam.dataDir must be an absolute path, got ${JSON.stringify(dataDir)}`);
  }
  return dataDir;
}

/**
 * The config for DEL and GC: a config whose ranges no longer parse (edited since the ADD) must not keep
 * leases from being released, so only the store location has to be valid then.
 */
export function parseIpamConfigForRelease(input: ConfigInput, warn: (msg: string) => void): IpamConfig {
  try {
    return parseIpamConfig(input);
  } catch (err) {
    if (!(err instanceof CniError) || err.code !== ErrorCode.InvalidNetworkConfig) throw err;
    const where = parseStoreLocation(input.config);
    warn(`berth-ipam: ${err.message}; releasing by attachment anyway`);
    return {
      ...where,
      cniVersion: input.cniVersion,
      rangeSets: [],
      routes: [],
      exclude: [],
      policy: 'round-robin',
      releaseOnReboot: true,
      requested: [],
    };
  }
}
