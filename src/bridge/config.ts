// Reads the bridge network configuration once into a normalised BridgeConf, with the reference
// plugin's keys, defaults and validation, so the handlers never look at raw JSON.
import { CniError, ErrorCode } from '../cni-spec/errors';
import { ifnameProblem } from '../cni-spec/identifiers';
import type { Request } from '../cni-spec/request';
import type { DNS } from '../cni-spec/types/result';

export const DEFAULT_BRIDGE = 'cni0';

export interface BridgeConf {
  /** Network name (config `name`); keys the per-network lock and nftables sets. */
  network: string;
  cniVersion: string;
  bridge: string;
  isGateway: boolean;
  isDefaultGateway: boolean;
  forceAddress: boolean;
  ipMasq: boolean;
  /** The configured value; berth implements masquerade with nftables whatever it says. */
  ipMasqBackend: 'iptables' | 'nftables' | undefined;
  /** undefined = kernel default (the reference treats 0 the same way). */
  mtu: number | undefined;
  hairpinMode: boolean;
  promiscMode: boolean;
  /** Access VLAN (PVID, untagged); 0 = none. */
  vlan: number;
  /** Tagged VLAN ids from `vlanTrunk`, sorted and unique. */
  vlanTrunk: number[];
  preserveDefaultVlan: boolean;
  enableDad: boolean;
  macSpoofCheck: boolean;
  disableContainerInterface: boolean;
  portIsolation: boolean;
  /** IPAM plugin type; undefined means an L2-only attachment (no `ipam` or no `ipam.type`). */
  ipamType: string | undefined;
  /** Set only when the config's `dns` has a field set: it then replaces IPAM's DNS. */
  dns: DNS | undefined;
  /** Container MAC (lower case), from CNI_ARGS MAC=, args.cni.mac or runtimeConfig.mac (last wins). */
  mac: string | undefined;
}

export interface BridgeConfInput {
  config: Record<string, unknown>;
  cniArgs: ReadonlyMap<string, string>;
  /** Case-insensitive runtimeConfig lookup (runtimes disagree on key case). */
  runtimeConfig(key: string): unknown;
}

function invalid(key: string, msg: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, `invalid "${key}": ${msg}`);
}

/** Booleans as JSON booleans, or the strings "true"/"false" (cni.dev's own example writes one). */
function bool(config: Record<string, unknown>, key: string, dflt: boolean): boolean {
  const v = config[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v === 'boolean') return v;
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw invalid(key, `expected a boolean (or "true"/"false"), got ${JSON.stringify(v)}`);
}

function int(config: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = config[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    throw invalid(key, `expected an integer, got ${JSON.stringify(v)}`);
  }
  if (v < min || v > max) throw invalid(key, `${v} is out of range ${min}..${max}`);
  return v;
}

function str(config: Record<string, unknown>, key: string): string | undefined {
  const v = config[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalid(key, `expected a string, got ${JSON.stringify(v)}`);
  return v;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

function parseMac(raw: unknown, source: string): string | undefined {
  if (raw === undefined || raw === null || raw === '') return undefined;
  if (typeof raw !== 'string' || !MAC_RE.test(raw)) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `invalid MAC address from ${source}: ${JSON.stringify(raw)}`,
    );
  }
  const mac = raw.toLowerCase();
  // A multicast (group) address cannot be a unicast interface's address.
  if ((parseInt(mac.slice(0, 2), 16) & 1) === 1) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `invalid MAC address from ${source}: ${raw} is a multicast address`,
    );
  }
  return mac;
}

/** Same rules and messages as the reference's collectVlanTrunk, code 7 naming `vlanTrunk`. */
export function parseVlanTrunk(raw: unknown): number[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw invalid('vlanTrunk', 'expected a list of {id} or {minID, maxID}');
  const ids = new Set<number>();
  const vid = (v: unknown, what: string): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 4094) {
      throw invalid('vlanTrunk', `incorrect trunk ${what} parameter ${JSON.stringify(v)} (must be 1..4094)`);
    }
    return v;
  };
  for (const item of raw) {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw invalid('vlanTrunk', `expected {id} or {minID, maxID}, got ${JSON.stringify(item)}`);
    }
    const o = item as Record<string, unknown>;
    const hasMin = o.minID !== undefined && o.minID !== null;
    const hasMax = o.maxID !== undefined && o.maxID !== null;
    if (hasMin !== hasMax) {
      throw invalid(
        'vlanTrunk',
        `minID and maxID should be configured simultaneously, ${hasMin ? 'maxID' : 'minID'} is missing`,
      );
    }
    if (hasMin) {
      const lo = vid(o.minID, 'minID');
      const hi = vid(o.maxID, 'maxID');
      if (hi < lo) throw invalid('vlanTrunk', `minID ${lo} is greater than maxID ${hi}`);
      for (let v = lo; v <= hi; v++) ids.add(v);
    }
    if (o.id !== undefined && o.id !== null) ids.add(vid(o.id, 'id'));
  }
  return [...ids].sort((a, b) => a - b);
}

function parseDns(raw: unknown): DNS | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw invalid('dns', 'expected an object');
  const o = raw as Record<string, unknown>;
  const list = (k: string): string[] | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) {
      throw invalid('dns', `"${k}" must be a list of strings`);
    }
    return v as string[];
  };
  const dns: DNS = {};
  const nameservers = list('nameservers');
  const search = list('search');
  const options = list('options');
  if (nameservers !== undefined) dns.nameservers = nameservers;
  if (o.domain !== undefined && o.domain !== null && o.domain !== '') {
    if (typeof o.domain !== 'string') throw invalid('dns', '"domain" must be a string');
    dns.domain = o.domain;
  }
  if (search !== undefined) dns.search = search;
  if (options !== undefined) dns.options = options;
  // Like the reference's dnsConfSet: an empty object leaves IPAM's DNS in place.
  return Object.keys(dns).length > 0 ? dns : undefined;
}

function argsCniMac(config: Record<string, unknown>): unknown {
  const args = config.args;
  if (typeof args !== 'object' || args === null) return undefined;
  const cni = (args as Record<string, unknown>).cni;
  if (typeof cni !== 'object' || cni === null) return undefined;
  return (cni as Record<string, unknown>).mac;
}

function cniArgsMac(cniArgs: ReadonlyMap<string, string>): string | undefined {
  // The reference's LoadArgs takes `MAC=` only (Go's FieldByName is case-sensitive); berth also takes `mac=`.
  for (const [k, v] of cniArgs) if (k.toLowerCase() === 'mac') return v;
  return undefined;
}

export function parseBridgeConf(input: BridgeConfInput): BridgeConf {
  const c = input.config;
  const network = str(c, 'name');
  if (network === undefined || network === '') throw invalid('name', 'missing network name');
  const cniVersion = str(c, 'cniVersion') ?? '0.1.0';

  const bridge = str(c, 'bridge') ?? DEFAULT_BRIDGE;
  // The bridge's name reaches netlink and sysfs paths: CNI_IFNAME's rule (the kernel's dev_valid_name).
  const bridgeProblem = ifnameProblem(bridge);
  if (bridgeProblem !== undefined)
    throw invalid('bridge', `${JSON.stringify(bridge)} is not a valid interface name: ${bridgeProblem}`);

  const isDefaultGateway = bool(c, 'isDefaultGateway', false);
  const isGateway = bool(c, 'isGateway', false) || isDefaultGateway;

  const backendRaw = str(c, 'ipMasqBackend');
  if (backendRaw !== undefined && backendRaw !== 'iptables' && backendRaw !== 'nftables') {
    throw invalid('ipMasqBackend', `${JSON.stringify(backendRaw)} is neither "iptables" nor "nftables"`);
  }

  const mtuRaw = int(c, 'mtu', 0, 65535);
  if (mtuRaw !== undefined && mtuRaw !== 0 && mtuRaw < 68)
    throw invalid('mtu', `${mtuRaw} is below the minimum of 68`);

  const hairpinMode = bool(c, 'hairpinMode', false);
  const promiscMode = bool(c, 'promiscMode', false);
  if (hairpinMode && promiscMode) {
    throw invalid('hairpinMode', 'cannot set hairpin mode and promiscuous mode at the same time');
  }

  const vlanRaw = c.vlan;
  if (
    vlanRaw !== undefined &&
    vlanRaw !== null &&
    (typeof vlanRaw !== 'number' || !Number.isInteger(vlanRaw))
  ) {
    throw invalid('vlan', `expected an integer, got ${JSON.stringify(vlanRaw)}`);
  }
  const vlan = vlanRaw ?? 0;
  if (vlan < 0 || vlan > 4094) throw invalid('vlan', `invalid VLAN ID ${vlan} (must be between 0 and 4094)`);

  const ipamRaw = c.ipam;
  let ipamType: string | undefined;
  if (ipamRaw !== undefined && ipamRaw !== null) {
    if (typeof ipamRaw !== 'object' || Array.isArray(ipamRaw)) throw invalid('ipam', 'expected an object');
    const t = (ipamRaw as Record<string, unknown>).type;
    if (t !== undefined && t !== null && typeof t !== 'string')
      throw invalid('ipam', '"type" must be a string');
    if (typeof t === 'string' && t !== '') {
      // The type names an executable looked up on CNI_PATH: no path separators.
      if (t.includes('/') || t === '.' || t === '..')
        throw invalid('ipam', `type ${JSON.stringify(t)} is not a plugin name`);
      ipamType = t;
    }
  }

  const disableContainerInterface = bool(c, 'disableContainerInterface', false);
  if (disableContainerInterface && ipamType !== undefined) {
    throw invalid(
      'disableContainerInterface',
      'cannot be set together with an IPAM type (the interface would stay down)',
    );
  }

  let mac = parseMac(cniArgsMac(input.cniArgs), 'CNI_ARGS MAC');
  mac = parseMac(argsCniMac(c), 'args.cni.mac') ?? mac;
  mac = parseMac(input.runtimeConfig('mac'), 'runtimeConfig.mac') ?? mac;

  return {
    network,
    cniVersion,
    bridge,
    isGateway,
    isDefaultGateway,
    forceAddress: bool(c, 'forceAddress', false),
    ipMasq: bool(c, 'ipMasq', false),
    ipMasqBackend: backendRaw,
    mtu: mtuRaw === 0 ? undefined : mtuRaw,
    hairpinMode,
    promiscMode,
    vlan,
    vlanTrunk: parseVlanTrunk(c.vlanTrunk),
    // The reference's loadNetConf defaults this to true "to maintain existing behavior".
    preserveDefaultVlan: bool(c, 'preserveDefaultVlan', true),
    enableDad: bool(c, 'enabledad', false),
    macSpoofCheck: bool(c, 'macspoofchk', false),
    disableContainerInterface,
    portIsolation: bool(c, 'portIsolation', false),
    ipamType,
    dns: parseDns(c.dns),
    mac,
  };
}

/** VLAN filtering is needed on the bridge (set when the bridge is created) once any VLAN is configured. */
export function wantsVlanFiltering(conf: BridgeConf): boolean {
  return conf.vlan !== 0 || conf.vlanTrunk.length > 0;
}

export function confFromRequest(req: Request): BridgeConf {
  return parseBridgeConf({
    config: req.config,
    cniArgs: req.cniArgs,
    runtimeConfig: (k) => req.runtimeConfig(k),
  });
}
