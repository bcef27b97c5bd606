// How berth-ipam answers on a cluster network, where the pool is spread over many nodes in blocks: each
// address as a host prefix (/32, /128) with the pool's gateway, plus a route to the pool via that gateway.
// A pod then sees no other address of the pool on-link (a pod of another node is reached through its own
// node, not by ARP), and berth-bridge puts the gateway on the bridge with the pool's prefix
// (bridge/gateway.ts, hostRoutedPool). The gateway is the same address on every node and never handed out
// (host-local's rule: a range's gateway is skipped).
import type { IPConfig, Route } from '../cni-spec/types/result';
import { formatCidr, parseCidr } from '../address/cidr';
import { FAMILY_BITS, formatIp } from '../address/ip';
import { rangeFor, type RangeSet } from './range-set';

/**
 * Rewrites ADD's addresses (`ip/<pool prefix>` with the pool's gateway, one per range set, as ipConfig
 * makes them) to host prefixes and returns the pool routes to put before the configured ones.
 */
export function hostRoutedAddressing(
  rangeSets: readonly RangeSet[],
  ips: readonly IPConfig[],
): { ips: IPConfig[]; poolRoutes: Route[] } {
  const poolRoutes: Route[] = [];
  const out = ips.map((c) => {
    const cidr = parseCidr(c.address);
    if (cidr === undefined) return c;
    const range = rangeSets.map((set) => rangeFor(set, cidr.ip)).find((r) => r !== undefined);
    if (range === undefined) return c;
    const gw = formatIp(range.gateway);
    const route: Route = { dst: formatCidr(range.subnet.ip, range.subnet.prefix), gw };
    if (!poolRoutes.some((r) => r.dst === route.dst && r.gw === route.gw)) poolRoutes.push(route);
    return { ...c, address: `${formatIp(cidr.ip)}/${FAMILY_BITS[cidr.ip.family]}`, gateway: gw };
  });
  return { ips: out, poolRoutes };
}
