// Turns the IPAM result into the bridge's addressing plan, as the reference's calcGateways does: every IP
// on interface 2, gateways filled in (network + 1) when isGateway, a default route per family when
// isDefaultGateway, and the gateway addresses the bridge must carry. Host-routed addresses (a /32 or /128
// with a gateway, as berth-ipam hands out on cluster networks) get an on-link route to their gateway, and
// the bridge carries that gateway with the prefix of the pool (see hostRoutedPool).
import { type Cidr, cidrContains, formatCidr, networkIp, parseCidrAsWritten } from '../address/cidr';
import { type Family, type Ip, FAMILY_BITS, formatIp, parseIpAsWritten, sameIp } from '../address/ip';
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { IPConfig, Route } from '../cni-spec/types/result';
import type { BridgeConf } from './config';
import type { MasqAddress } from './masquerade';

/** An "ip/len" of an IPAM result, a route or the kernel; a malformed one is an internal error (code 999). */
export function parseCidr(cidr: string): Cidr {
  const c = parseCidrAsWritten(cidr);
  if (c !== undefined) return c;
  throw new CniError(
    ErrorCode.Internal,
    cidr.includes('/')
      ? `invalid address ${JSON.stringify(cidr)}`
      : `address ${JSON.stringify(cidr)} has no prefix length`,
  );
}

function parseIp(ip: string): Ip {
  const parsed = parseIpAsWritten(ip);
  if (parsed === undefined) throw new CniError(ErrorCode.Internal, `invalid address ${JSON.stringify(ip)}`);
  return parsed;
}

/** Canonical text of an address, so that `fd00:b:0::1` and `fd00:b::1` compare equal. */
export function canonicalIp(ip: string): string {
  return formatIp(parseIp(ip));
}

function firstHost(c: Cidr): string {
  return formatIp({ family: c.ip.family, value: networkIp(c).value + 1n });
}

function isDefaultDst(dst: string, family: Family): boolean {
  const c = parseCidrAsWritten(dst);
  return c !== undefined && c.ip.family === family && c.prefix === 0;
}

export interface GatewayAddress {
  family: 4 | 6;
  /** Gateway with the container's prefix length, e.g. 198.18.128.1/24 (host-routed: the pool's). */
  cidr: string;
  ip: string;
  prefixLen: number;
  /** The shared gateway of host-routed pods (cluster networks): the same address on every node's bridge. */
  hostRouted?: boolean;
}

/**
 * A host-routed address: a host prefix (/32, /128) with a gateway. No other pod is on-link for it (pods of
 * other nodes in the same pool must be reached through the node), so everything goes via the gateway, which
 * is the same address on every node's bridge.
 */
export function isHostRouted(p: Cidr, gateway: string | undefined): boolean {
  return gateway !== undefined && p.prefix === FAMILY_BITS[p.ip.family] && !sameIp(parseIp(gateway), p.ip);
}

/**
 * The pool of a host-routed address: the widest route of the IPAM result that goes via the gateway and
 * covers both the gateway and the address (berth-ipam returns `{dst: <pool>, gw: <gateway>}`). The bridge
 * carries the gateway with this prefix, so the host reaches every local pod of the pool on the bridge, and
 * the routes to other nodes' blocks (longer prefixes, via their underlay) win for theirs.
 */
export function hostRoutedPool(p: Cidr, gateway: string, routes: readonly Route[]): Cidr | undefined {
  const gw = parseIp(gateway);
  let best: Cidr | undefined;
  for (const r of routes) {
    if (r.gw === undefined || canonicalIp(r.gw) !== formatIp(gw)) continue;
    const dst = parseCidrAsWritten(r.dst);
    if (dst === undefined) continue;
    if (
      dst.ip.family !== p.ip.family ||
      dst.prefix === 0 ||
      !cidrContains(dst, gw) ||
      !cidrContains(dst, p.ip)
    )
      continue;
    if (best === undefined || dst.prefix < best.prefix) best = dst;
  }
  return best;
}

export interface AddressPlan {
  ips: IPConfig[];
  routes: Route[];
  /** Addresses the bridge must carry (isGateway); deduplicated. */
  gateways: GatewayAddress[];
  /** Entries for the masquerade sets. */
  masq: MasqAddress[];
  hasV6: boolean;
}

export function planAddresses(
  conf: BridgeConf,
  ipamIps: readonly IPConfig[],
  ipamRoutes: readonly Route[],
): AddressPlan {
  const ips: IPConfig[] = [];
  const routes: Route[] = ipamRoutes.map((r) => ({ ...r }));
  const gateways: GatewayAddress[] = [];
  const masq: MasqAddress[] = [];
  const defaultRouteFound = { 4: false, 6: false };
  // isDefaultGateway: a default route per family via its first gateway, unless IPAM gave one. One without
  // `gw` goes via that gateway too (configureContainer, isGateway being implied): it is the one, not a second
  // to list in the result (the reference adds both and fails on the kernel's EEXIST).
  const defaultRouteVia = (family: 4 | 6, gw: string | undefined): void => {
    if (!conf.isDefaultGateway || defaultRouteFound[family]) return;
    defaultRouteFound[family] = true;
    if (routes.some((r) => isDefaultDst(r.dst, family))) return;
    routes.push({ dst: family === 4 ? '0.0.0.0/0' : '::/0', ...(gw !== undefined ? { gw } : {}) });
  };
  const onLink: Route[] = [];
  for (const ipc of ipamIps) {
    const p = parseCidr(ipc.address);
    const family = p.ip.family;
    const ip = formatIp(p.ip);
    const out: IPConfig = { ...ipc, interface: 2 };
    // Host-routed only when the bridge is the gateway: otherwise the gateway is the IPAM's word only (as in
    // the reference, which adds a /32 with a gateway like any address).
    if (conf.isGateway && isHostRouted(p, out.gateway)) {
      const gwIp = canonicalIp(out.gateway!);
      const pool = hostRoutedPool(p, gwIp, ipamRoutes);
      if (pool === undefined) {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `address ${ipc.address} is host-routed through ${gwIp}, but IPAM returned no route via ${gwIp} covering both (the pool); berth-bridge needs it to put ${gwIp}/<pool prefix> on the bridge`,
        );
      }
      // The gateway is on-link only through this route; it goes before every route via the gateway.
      const hostLen = FAMILY_BITS[family];
      if (!onLink.some((r) => r.dst === `${gwIp}/${hostLen}`)) onLink.push({ dst: `${gwIp}/${hostLen}` });
      const cidr = `${gwIp}/${pool.prefix}`;
      if (!gateways.some((g) => g.cidr === cidr))
        gateways.push({ family: family, cidr, ip: gwIp, prefixLen: pool.prefix, hostRouted: true });
      // Traffic inside the pool (to pods of this node and of others) keeps its source: only what leaves the
      // pool is masqueraded.
      masq.push({ ip, family: family, subnet: formatIp(networkIp(pool)), prefixLen: pool.prefix });
      defaultRouteVia(family, gwIp);
      ips.push(out);
      continue;
    }
    if (out.gateway === undefined && conf.isGateway) out.gateway = firstHost(p);
    defaultRouteVia(family, out.gateway);
    if (conf.isGateway && out.gateway !== undefined) {
      const gwIp = canonicalIp(out.gateway);
      const cidr = formatCidr(parseIp(gwIp), p.prefix);
      if (!gateways.some((g) => g.cidr === cidr))
        gateways.push({ family: family, cidr, ip: gwIp, prefixLen: p.prefix });
    }
    masq.push({ ip, family: family, subnet: formatIp(networkIp(p)), prefixLen: p.prefix });
    ips.push(out);
  }
  return { ips, routes: [...onLink, ...routes], gateways, masq, hasV6: masq.some((m) => m.family === 6) };
}
