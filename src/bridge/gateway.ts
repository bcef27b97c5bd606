// Turns the IPAM result into the bridge's addressing plan, as the reference's calcGateways does: every IP
// on interface 2, gateways filled in (network + 1) when isGateway, a default route per family when
// isDefaultGateway, and the gateway addresses the bridge must carry. Host-routed addresses (a /32 or /128
// with a gateway, as berth-ipam hands out on cluster networks) get an on-link route to their gateway, and
// the bridge carries that gateway with the prefix of the pool (see hostRoutedPool).
import { Address4, Address6 } from 'ip-address';
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { IPConfig, Route } from '../cni-spec/types/result';
import type { BridgeConf } from './config';
import type { MasqAddress } from './masquerade';

export interface ParsedCidr {
  family: 4 | 6;
  /** Host address, canonical text. */
  ip: string;
  prefixLen: number;
  /** Network address, canonical text. */
  network: string;
}

export function parseCidr(cidr: string): ParsedCidr {
  const slash = cidr.indexOf('/');
  if (slash < 0)
    throw new CniError(ErrorCode.Internal, `address ${JSON.stringify(cidr)} has no prefix length`);
  try {
    if (cidr.includes(':')) {
      const a = new Address6(cidr);
      return {
        family: 6,
        ip: new Address6(a.addressMinusSuffix ?? cidr.slice(0, slash)).correctForm(),
        prefixLen: a.subnetMask,
        network: a.startAddress().correctForm(),
      };
    }
    const a = new Address4(cidr);
    return {
      family: 4,
      ip: a.addressMinusSuffix ?? cidr.slice(0, slash),
      prefixLen: a.subnetMask,
      network: a.startAddress().correctForm(),
    };
  } catch (err) {
    throw new CniError(ErrorCode.Internal, `invalid address ${JSON.stringify(cidr)}`, undefined, {
      cause: err,
    });
  }
}

export function familyOf(ip: string): 4 | 6 {
  return ip.includes(':') ? 6 : 4;
}

/** Canonical text of an address, so that `fd00:b:0::1` and `fd00:b::1` compare equal. */
export function canonicalIp(ip: string): string {
  return ip.includes(':') ? new Address6(ip).correctForm() : new Address4(ip).correctForm();
}

function firstHost(p: ParsedCidr): string {
  return p.family === 4
    ? Address4.fromBigInt(new Address4(p.network).bigInt() + 1n).correctForm()
    : Address6.fromBigInt(new Address6(p.network).bigInt() + 1n).correctForm();
}

function isDefaultDst(dst: string, family: 4 | 6): boolean {
  try {
    const p = parseCidr(dst);
    return p.family === family && p.prefixLen === 0;
  } catch {
    return false;
  }
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
export function isHostRouted(p: ParsedCidr, gateway: string | undefined): boolean {
  return (
    gateway !== undefined && p.prefixLen === (p.family === 4 ? 32 : 128) && canonicalIp(gateway) !== p.ip
  );
}

function contains(cidr: ParsedCidr, ip: string): boolean {
  return parseCidr(`${ip}/${cidr.prefixLen}`).network === cidr.network;
}

/**
 * The pool of a host-routed address: the widest route of the IPAM result that goes via the gateway and
 * covers both the gateway and the address (berth-ipam returns `{dst: <pool>, gw: <gateway>}`). The bridge
 * carries the gateway with this prefix, so the host reaches every local pod of the pool on the bridge, and
 * the routes to other nodes' blocks (longer prefixes, via their underlay) win for theirs.
 */
export function hostRoutedPool(
  p: ParsedCidr,
  gateway: string,
  routes: readonly Route[],
): ParsedCidr | undefined {
  const gw = canonicalIp(gateway);
  let best: ParsedCidr | undefined;
  for (const r of routes) {
    if (r.gw === undefined || canonicalIp(r.gw) !== gw) continue;
    let dst: ParsedCidr;
    try {
      dst = parseCidr(r.dst);
    } catch {
      continue;
    }
    if (dst.family !== p.family || dst.prefixLen === 0 || !contains(dst, gw) || !contains(dst, p.ip))
      continue;
    if (best === undefined || dst.prefixLen < best.prefixLen) best = dst;
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
  const onLink: Route[] = [];
  for (const ipc of ipamIps) {
    const p = parseCidr(ipc.address);
    const out: IPConfig = { ...ipc, interface: 2 };
    if (isHostRouted(p, out.gateway)) {
      const gwIp = canonicalIp(out.gateway!);
      const pool = hostRoutedPool(p, gwIp, ipamRoutes);
      if (pool === undefined) {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `address ${ipc.address} is host-routed through ${gwIp}, but IPAM returned no route via ${gwIp} covering both (the pool); berth-bridge needs it to put ${gwIp}/<pool prefix> on the bridge`,
        );
      }
      if (!conf.isGateway) {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `address ${ipc.address} is host-routed through ${gwIp}: set "isGateway": true so the bridge carries ${gwIp}`,
        );
      }
      // The gateway is on-link only through this route; it goes before every route via the gateway.
      const hostLen = p.family === 4 ? 32 : 128;
      if (!onLink.some((r) => r.dst === `${gwIp}/${hostLen}`)) onLink.push({ dst: `${gwIp}/${hostLen}` });
      const cidr = `${gwIp}/${pool.prefixLen}`;
      if (!gateways.some((g) => g.cidr === cidr))
        gateways.push({ family: p.family, cidr, ip: gwIp, prefixLen: pool.prefixLen, hostRouted: true });
      // Traffic inside the pool (to pods of this node and of others) keeps its source: only what leaves the
      // pool is masqueraded.
      masq.push({ ip: p.ip, family: p.family, subnet: pool.network, prefixLen: pool.prefixLen });
      if (conf.isDefaultGateway && !defaultRouteFound[p.family]) {
        defaultRouteFound[p.family] = routes.some((r) => r.gw !== undefined && isDefaultDst(r.dst, p.family));
        if (!defaultRouteFound[p.family]) {
          routes.push({ dst: p.family === 4 ? '0.0.0.0/0' : '::/0', gw: gwIp });
          defaultRouteFound[p.family] = true;
        }
      }
      ips.push(out);
      continue;
    }
    if (out.gateway === undefined && conf.isGateway) out.gateway = firstHost(p);
    if (conf.isDefaultGateway && !defaultRouteFound[p.family]) {
      defaultRouteFound[p.family] = routes.some((r) => r.gw !== undefined && isDefaultDst(r.dst, p.family));
      if (!defaultRouteFound[p.family]) {
        const route: Route = { dst: p.family === 4 ? '0.0.0.0/0' : '::/0' };
        if (out.gateway !== undefined) route.gw = out.gateway;
        routes.push(route);
        defaultRouteFound[p.family] = true;
      }
    }
    if (conf.isGateway && out.gateway !== undefined) {
      const gwIp = canonicalIp(out.gateway);
      const cidr = `${gwIp}/${p.prefixLen}`;
      if (!gateways.some((g) => g.cidr === cidr))
        gateways.push({ family: p.family, cidr, ip: gwIp, prefixLen: p.prefixLen });
    }
    masq.push({ ip: p.ip, family: p.family, subnet: p.network, prefixLen: p.prefixLen });
    ips.push(out);
  }
  return { ips, routes: [...onLink, ...routes], gateways, masq, hasV6: masq.some((m) => m.family === 6) };
}
