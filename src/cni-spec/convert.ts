// Converts results between spec versions: one explicit registry of converters, with 0.4.0 as the hub.
import { CniError, ErrorCode } from './errors';
import {
  expectObject,
  optionalString,
  withoutUndefined,
  type JsonObject,
  type ShapeContext,
} from './json-shape';
import {
  ipFamilyOf,
  readResult020,
  readResult040,
  readResult100,
  readResult110,
  resultContext,
} from './result-read';
import type { DNS, Result } from './types/result';
import type { IPConfig020, Result020, Route020 } from './types/v020';
import type { IPConfig040, Result040 } from './types/v040';
import type { Result100 } from './types/v100';
import {
  IMPLEMENTED_VERSION,
  isSupportedVersion,
  type SpecVersion,
  unsupportedVersionError,
  versionAtLeast,
} from './versions';

/** Versions sharing one result shape. */
export type Family = '020' | '040' | '100' | '110';

export const VERSION_FAMILY: Readonly<Record<SpecVersion, Family>> = {
  '0.1.0': '020',
  '0.2.0': '020',
  '0.3.0': '040',
  '0.3.1': '040',
  '0.4.0': '040',
  '1.0.0': '100',
  '1.1.0': '110',
};

interface FamilyResult {
  '020': Result020;
  '040': Result040;
  '100': Result100;
  '110': Result;
}

/** Any result as printed on the wire in some spec version. */
export type VersionedResult = FamilyResult[Family];

type Converter<F extends Family, T extends Family> = (
  r: FamilyResult[F],
  cniVersion: string,
) => FamilyResult[T];
type AnyConverter = (r: VersionedResult, cniVersion: string) => VersionedResult;
type EdgeKey = `${Family}->${Family}`;
interface Edge {
  key: EdgeKey;
  convert: AnyConverter;
}

function edge<F extends Family, T extends Family>(from: F, to: T, convert: Converter<F, T>): Edge {
  return { key: `${from}->${to}`, convert: convert as AnyConverter };
}

function buildRegistry(edges: readonly Edge[]): ReadonlyMap<EdgeKey, AnyConverter> {
  const registry = new Map<EdgeKey, AnyConverter>();
  for (const e of edges) {
    if (registry.has(e.key)) throw new Error(`converter ${e.key} registered twice`);
    registry.set(e.key, e.convert);
  }
  return registry;
}

// ---- canonical writers: every conversion ends in one, so output has the spec's key order and no empties

function nonEmpty<T>(arr: readonly T[] | undefined): T[] | undefined {
  return arr === undefined || arr.length === 0 ? undefined : [...arr];
}

function canonicalDns(dns: DNS | undefined): DNS | undefined {
  if (dns === undefined) return undefined;
  const out = withoutUndefined({
    nameservers: nonEmpty(dns.nameservers),
    domain: dns.domain,
    search: nonEmpty(dns.search),
    options: nonEmpty(dns.options),
  });
  return Object.keys(out).length === 0 ? undefined : out;
}

function to110(r: Result, cniVersion: string): Result {
  return withoutUndefined({
    cniVersion,
    interfaces: nonEmpty(r.interfaces)?.map((i) =>
      withoutUndefined({
        name: i.name,
        mac: i.mac,
        mtu: i.mtu,
        sandbox: i.sandbox,
        socketPath: i.socketPath,
        pciID: i.pciID,
      }),
    ),
    ips: nonEmpty(r.ips)?.map((ip) =>
      withoutUndefined({ interface: ip.interface, address: ip.address, gateway: ip.gateway }),
    ),
    routes: nonEmpty(r.routes)?.map((rt) =>
      withoutUndefined({
        dst: rt.dst,
        gw: rt.gw,
        mtu: rt.mtu,
        advmss: rt.advmss,
        priority: rt.priority,
        table: rt.table,
        scope: rt.scope,
      }),
    ),
    dns: canonicalDns(r.dns),
  });
}

/** 1.0.0 and 0.x know interfaces as name/mac/sandbox and routes as dst/gw only. */
function to100(r: Result100, cniVersion: string): Result100 {
  return withoutUndefined({
    cniVersion,
    interfaces: nonEmpty(r.interfaces)?.map((i) =>
      withoutUndefined({ name: i.name, mac: i.mac, sandbox: i.sandbox }),
    ),
    ips: nonEmpty(r.ips)?.map((ip) =>
      withoutUndefined({ interface: ip.interface, address: ip.address, gateway: ip.gateway }),
    ),
    routes: nonEmpty(r.routes)?.map((rt) => withoutUndefined({ dst: rt.dst, gw: rt.gw })),
    dns: canonicalDns(r.dns),
  });
}

function to040(r: Result100 | Result040, cniVersion: string): Result040 {
  return withoutUndefined({
    cniVersion,
    interfaces: nonEmpty(r.interfaces)?.map((i) =>
      withoutUndefined({ name: i.name, mac: i.mac, sandbox: i.sandbox }),
    ),
    ips: nonEmpty(r.ips)?.map((ip): IPConfig040 =>
      withoutUndefined({
        version: ipFamilyOf(ip.address),
        interface: ip.interface,
        address: ip.address,
        gateway: ip.gateway,
      }),
    ),
    routes: nonEmpty(r.routes)?.map((rt) => withoutUndefined({ dst: rt.dst, gw: rt.gw })),
    dns: canonicalDns(r.dns),
  });
}

function canonicalIPConfig020(c: IPConfig020): IPConfig020 {
  return withoutUndefined({
    ip: c.ip,
    gateway: c.gateway,
    routes: nonEmpty(c.routes)?.map((rt) => withoutUndefined({ dst: rt.dst, gw: rt.gw })),
  });
}

function to020(r: Result020, cniVersion: string): Result020 {
  return withoutUndefined({
    cniVersion,
    ip4: r.ip4 === undefined ? undefined : canonicalIPConfig020(r.ip4),
    ip6: r.ip6 === undefined ? undefined : canonicalIPConfig020(r.ip6),
    dns: canonicalDns(r.dns),
  });
}

/**
 * 0.1/0.2 hold one address per family: the first of each is kept (as the Go library does; plugins that
 * could hand out more refuse such configs for these versions up front), routes follow their family.
 */
function from040to020(r: Result040, cniVersion: string): Result020 {
  const first = (family: '4' | '6'): IPConfig020 | undefined => {
    const ip = r.ips?.find((c) => c.version === family);
    if (ip === undefined) return undefined;
    const routes: Route020[] = (r.routes ?? []).filter((rt) => ipFamilyOf(rt.dst) === family);
    return { ip: ip.address, gateway: ip.gateway, routes };
  };
  const ip4 = first('4');
  const ip6 = first('6');
  if (ip4 === undefined && ip6 === undefined) throw noAddressesIn(cniVersion);
  return to020({ cniVersion, ip4, ip6, dns: r.dns }, cniVersion);
}

/** 0.1.0 and 0.2.0 results are their addresses: one without any cannot be printed. */
function noAddressesIn(cniVersion: string): CniError {
  return new CniError(
    ErrorCode.IncompatibleCniVersion,
    `cannot express a result without IP addresses in CNI ${cniVersion}`,
    'versions 0.1.0 and 0.2.0 carry only ip4/ip6; use cniVersion 0.3.0 or later for results without addresses',
  );
}

/**
 * Throws the error printing would, for a plugin that knows before doing anything that its result will have
 * no address (an L2-only ADD in 0.1.0/0.2.0): so that it fails before it changes the kernel, not after.
 */
export function refuseResultWithoutAddresses(cniVersion: string): void {
  if (!versionAtLeast(cniVersion, '0.3.0')) throw noAddressesIn(cniVersion);
}

function from020to040(r: Result020, cniVersion: string): Result040 {
  const ips: IPConfig040[] = [];
  const routes: Route020[] = [];
  for (const [version, c] of [
    ['4', r.ip4],
    ['6', r.ip6],
  ] as const) {
    if (c === undefined) continue;
    ips.push(withoutUndefined({ version, address: c.ip, gateway: c.gateway }));
    routes.push(...(c.routes ?? []));
  }
  return to040({ cniVersion, ips, routes, dns: r.dns }, cniVersion);
}

/** The registry, spelled out: each family converts to and from the 0.4.0 hub, 1.0 and 1.1 also directly. */
const CONVERTERS = buildRegistry([
  edge('110', '110', to110),
  edge('110', '100', to100),
  edge('110', '040', to040),
  edge('100', '110', (r: Result100, v) => to110(r, v)),
  edge('100', '100', to100),
  edge('100', '040', to040),
  edge('040', '110', (r: Result040, v) => to110(r, v)),
  edge('040', '100', (r: Result040, v) => to100(r, v)),
  edge('040', '040', to040),
  edge('040', '020', from040to020),
  edge('020', '040', from020to040),
  edge('020', '020', to020),
]);

const HUB: Family = '040';

function lookup(key: EdgeKey): AnyConverter {
  const convert = CONVERTERS.get(key);
  if (convert === undefined) throw new Error(`no converter ${key}`);
  return convert;
}

/** Converts a result of `from` shape to the shape and label of `toVersion`: directly or via the hub. */
function convertFamily(result: VersionedResult, from: Family, toVersion: SpecVersion): VersionedResult {
  const to = VERSION_FAMILY[toVersion];
  const direct = CONVERTERS.get(`${from}->${to}`);
  if (direct !== undefined) return direct(result, toVersion);
  const atHub = lookup(`${from}->${HUB}`)(result, '0.4.0');
  return lookup(`${HUB}->${to}`)(atHub, toVersion);
}

/** The internal result as printed for a config of `version`; fields that version lacks are dropped. */
export function toVersion(result: Result, version: string): VersionedResult {
  if (!isSupportedVersion(version)) throw unsupportedVersionError('result version', version);
  return convertFamily(result, '110', version);
}

const READERS: Readonly<Record<Family, (o: JsonObject, v: string, ctx: ShapeContext) => VersionedResult>> = {
  '020': readResult020,
  '040': readResult040,
  '100': readResult100,
  '110': readResult110,
};

/**
 * Reads a result printed in any supported version into the internal model. The result's own
 * `cniVersion` decides its shape; `version` (the config's) is assumed when it has none. `what` names
 * the value in error messages ("prevResult", "result of host-local").
 */
export function parseResult(json: string | JsonObject, version: string, what = 'result'): Result {
  const ctx = resultContext(what);
  let value: unknown = json;
  if (typeof json === 'string') {
    try {
      value = JSON.parse(json);
    } catch (err) {
      throw new CniError(ErrorCode.DecodingFailure, `${what} is not valid JSON: ${(err as Error).message}`);
    }
  }
  const o = expectObject(value, ctx);
  // Absent, null or "": the version the caller reads it in (libcni's fixupResultVersion).
  const v = optionalString(o, 'cniVersion', ctx) || version;
  if (!isSupportedVersion(v)) throw unsupportedVersionError(`${what} version`, v);
  const family = VERSION_FAMILY[v];
  const read = READERS[family];
  return convertFamily(read(o, v, ctx), family, IMPLEMENTED_VERSION);
}
