// Reads a result printed in any spec version (a delegate's stdout, a prevResult) into that version's type.
import { ErrorCode } from './errors';
import {
  type JsonObject,
  type ShapeContext,
  at,
  optionalObject,
  optionalObjects,
  optionalString,
  optionalStringArray,
  optionalUint,
  requiredString,
  shapeError,
  withoutUndefined,
} from './json-shape';
import type { DNS, Interface, IPConfig, Result, Route } from './types/result';
import type { IPConfig020, Result020, Route020 } from './types/v020';
import type { Interface040, IPConfig040, Result040, Route040 } from './types/v040';
import type { Interface100, IPConfig100, Result100, Route100 } from './types/v100';

/** Malformed results are decoding failures (code 6), whoever printed them. */
export function resultContext(path = 'result'): ShapeContext {
  return { code: ErrorCode.DecodingFailure, path };
}

export function readDns(o: JsonObject, ctx: ShapeContext): DNS | undefined {
  const d = optionalObject(o, 'dns', ctx);
  if (d === undefined) return undefined;
  const c = at(ctx, 'dns');
  return withoutUndefined({
    nameservers: optionalStringArray(d, 'nameservers', c),
    domain: optionalString(d, 'domain', c),
    search: optionalStringArray(d, 'search', c),
    options: optionalStringArray(d, 'options', c),
  });
}

function readRoute020(o: JsonObject, ctx: ShapeContext): Route020 {
  return withoutUndefined({ dst: requiredString(o, 'dst', ctx), gw: optionalString(o, 'gw', ctx) });
}

function readIPConfig020(o: JsonObject, ctx: ShapeContext): IPConfig020 {
  return withoutUndefined({
    ip: requiredString(o, 'ip', ctx),
    gateway: optionalString(o, 'gateway', ctx),
    routes: optionalObjects(o, 'routes', ctx, readRoute020),
  });
}

export function readResult020(o: JsonObject, cniVersion: string, ctx: ShapeContext): Result020 {
  const ip4 = optionalObject(o, 'ip4', ctx);
  const ip6 = optionalObject(o, 'ip6', ctx);
  return withoutUndefined({
    cniVersion,
    ip4: ip4 === undefined ? undefined : readIPConfig020(ip4, at(ctx, 'ip4')),
    ip6: ip6 === undefined ? undefined : readIPConfig020(ip6, at(ctx, 'ip6')),
    dns: readDns(o, ctx),
  });
}

function readInterface100(o: JsonObject, ctx: ShapeContext): Interface100 {
  return withoutUndefined({
    name: requiredString(o, 'name', ctx),
    mac: optionalString(o, 'mac', ctx),
    sandbox: optionalString(o, 'sandbox', ctx),
  });
}

function readRoute100(o: JsonObject, ctx: ShapeContext): Route100 {
  return withoutUndefined({ dst: requiredString(o, 'dst', ctx), gw: optionalString(o, 'gw', ctx) });
}

function readIPConfig100(o: JsonObject, ctx: ShapeContext): IPConfig100 {
  return withoutUndefined({
    interface: optionalUint(o, 'interface', ctx),
    address: requiredString(o, 'address', ctx),
    gateway: optionalString(o, 'gateway', ctx),
  });
}

function readIPConfig040(o: JsonObject, ctx: ShapeContext): IPConfig040 {
  const written = optionalString(o, 'version', ctx);
  // Some 0.3.x producers omitted the tag (or wrote null), and libcni 1.1 passes such an omission on as ""
  // (its 0.4.0 type always writes the field: chained ADDs, and the cache CHECK and DEL read): the address
  // says which family it is.
  const version = written === '' ? undefined : written;
  if (version !== undefined && version !== '4' && version !== '6') {
    throw shapeError(at(ctx, 'version'), '"4" or "6"', version);
  }
  const address = requiredString(o, 'address', ctx);
  return withoutUndefined({
    version: version ?? ipFamilyOf(address),
    interface: optionalUint(o, 'interface', ctx),
    address,
    gateway: optionalString(o, 'gateway', ctx),
  });
}

export function readResult040(o: JsonObject, cniVersion: string, ctx: ShapeContext): Result040 {
  return withoutUndefined({
    cniVersion,
    interfaces: optionalObjects<Interface040>(o, 'interfaces', ctx, readInterface100),
    ips: optionalObjects(o, 'ips', ctx, readIPConfig040),
    routes: optionalObjects<Route040>(o, 'routes', ctx, readRoute100),
    dns: readDns(o, ctx),
  });
}

export function readResult100(o: JsonObject, cniVersion: string, ctx: ShapeContext): Result100 {
  return withoutUndefined({
    cniVersion,
    interfaces: optionalObjects(o, 'interfaces', ctx, readInterface100),
    ips: optionalObjects(o, 'ips', ctx, readIPConfig100),
    routes: optionalObjects(o, 'routes', ctx, readRoute100),
    dns: readDns(o, ctx),
  });
}

function readInterface(o: JsonObject, ctx: ShapeContext): Interface {
  return withoutUndefined({
    name: requiredString(o, 'name', ctx),
    mac: optionalString(o, 'mac', ctx),
    mtu: optionalUint(o, 'mtu', ctx),
    sandbox: optionalString(o, 'sandbox', ctx),
    socketPath: optionalString(o, 'socketPath', ctx),
    pciID: optionalString(o, 'pciID', ctx),
  });
}

function readRoute(o: JsonObject, ctx: ShapeContext): Route {
  return withoutUndefined({
    dst: requiredString(o, 'dst', ctx),
    gw: optionalString(o, 'gw', ctx),
    mtu: optionalUint(o, 'mtu', ctx),
    advmss: optionalUint(o, 'advmss', ctx),
    priority: optionalUint(o, 'priority', ctx),
    table: optionalUint(o, 'table', ctx),
    scope: optionalUint(o, 'scope', ctx),
  });
}

export function readResult110(o: JsonObject, cniVersion: string, ctx: ShapeContext): Result {
  return withoutUndefined({
    cniVersion,
    interfaces: optionalObjects(o, 'interfaces', ctx, readInterface),
    ips: optionalObjects<IPConfig>(o, 'ips', ctx, readIPConfig100),
    routes: optionalObjects(o, 'routes', ctx, readRoute),
    dns: readDns(o, ctx),
  });
}

/** "6" for anything with a colon (IPv6 text always has one, IPv4 never), else "4". */
export function ipFamilyOf(addressOrCidr: string): '4' | '6' {
  return addressOrCidr.includes(':') ? '6' : '4';
}
