// The node's underlay addresses: where other nodes send traffic for this node's blocks, published in its
// liveness key. Taken from the daemon's flags when given (one per family); otherwise the source address the
// kernel picks towards the first etcd endpoint (the interface other nodes most likely share with us), and,
// for IPv6, a global address on that same interface.
import { createSocket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { formatIp, type Ip, parseIp } from '../address/ip';
import { IFA_F } from '../netlink/rtnl-codec';
import type { Address, Netlink } from '../netlink/types';

/** IFA_F_TEMPORARY (an IPv6 privacy address) is the bit IPv4 calls IFA_F_SECONDARY. */
const IFA_F_TEMPORARY = IFA_F.SECONDARY;

export interface Underlay {
  /** IPv4 underlay address, if any. */
  underlay?: string;
  /** IPv6 underlay address, if any. */
  underlay6?: string;
}

/**
 * Why other nodes could not route to `ip` as this node's next hop, or undefined when they can: the
 * unspecified and broadcast addresses, loopback, multicast, and IPv6 link-local (a next hop there needs an
 * interface name, which a route published to every node cannot carry).
 */
function unusableUnderlay(ip: Ip): string | undefined {
  if (ip.family === 4) {
    const first = Number(ip.value >> 24n);
    if (ip.value === 0n) return 'the unspecified address';
    if (ip.value === 0xffffffffn) return 'the broadcast address';
    if (first === 127) return 'a loopback address';
    if (first >= 224 && first <= 239) return 'a multicast address';
    return undefined;
  }
  const top16 = ip.value >> 112n;
  if (ip.value === 0n) return 'the unspecified address';
  if (ip.value === 1n) return 'the loopback address';
  if (top16 >> 8n === 0xffn) return 'a multicast address';
  if (top16 >> 6n === 0xfe80n >> 6n) return 'a link-local address';
  return undefined;
}

/**
 * Splits flag values (`--underlay-address`, repeatable) by family; two of one family, or an address no
 * other node can route through, is an error.
 */
export function underlayFromFlags(values: readonly string[]): Underlay {
  const out: Underlay = {};
  for (const v of values) {
    const ip = parseIp(v);
    if (ip === undefined) throw new Error(`--underlay-address: ${JSON.stringify(v)} is not an IP address`);
    const unusable = unusableUnderlay(ip);
    if (unusable !== undefined)
      throw new Error(`--underlay-address: ${v} is ${unusable}: other nodes cannot route through it`);
    const key = ip.family === 4 ? 'underlay' : 'underlay6';
    if (out[key] !== undefined) throw new Error(`--underlay-address: two IPv${ip.family} addresses given`);
    out[key] = formatIp(ip);
  }
  return out;
}

/**
 * The local address a datagram to `host:port` would leave from (a UDP connect sends nothing; the kernel
 * only chooses the route and source).
 */
export async function sourceAddressTowards(host: string, port: number): Promise<string> {
  const { address, family } = await lookup(host);
  const socket = createSocket(family === 6 ? 'udp6' : 'udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(port, address, () => resolve());
    });
    return socket.address().address;
  } finally {
    socket.close();
  }
}

/** Detects the underlay from the first etcd endpoint (`http://host:port`) and the addresses of its interface. */
export async function detectUnderlay(
  endpoint: string,
  nl: Pick<Netlink, 'listAddresses'>,
): Promise<Underlay> {
  const url = new URL(endpoint);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = url.port !== '' ? Number(url.port) : 2379;
  let source = await sourceAddressTowards(host, port);
  const all = await nl.listAddresses();
  // The same rule as for --underlay-address: no loopback, unspecified, multicast or IPv6 link-local.
  const routable = (a: string): boolean => {
    const ip = parseIp(a);
    return ip !== undefined && unusableUnderlay(ip) === undefined;
  };
  // An IPv6 privacy (temporary) or deprecated address expires: other nodes' routes via it would die with it.
  const passing = (a: Address) => a.family === 6 && (a.flags & (IFA_F_TEMPORARY | IFA_F.DEPRECATED)) !== 0;
  const usable = (a: Address) =>
    a.scope === 0 && !a.tentative && !a.dadFailed && routable(a.address) && !passing(a);
  let mine = all.find((a) => a.address === source);
  if (mine !== undefined && passing(mine)) {
    // The kernel may prefer a temporary source (use_tempaddr=2): a stable one of the same interface instead.
    const stable = all.find((a) => a.index === mine!.index && a.family === mine!.family && usable(a));
    if (stable !== undefined) {
      mine = stable;
      source = stable.address;
    }
  }
  const out: Underlay = {};
  if (routable(source) && (mine === undefined || !passing(mine))) {
    if (source.includes(':')) out.underlay6 = source;
    else out.underlay = source;
  }
  if (mine !== undefined) {
    // The other family on the same interface: global scope, usable (not tentative, DAD not failed, not
    // temporary or deprecated).
    const other = all.find((a) => a.index === mine.index && a.family !== mine.family && usable(a));
    if (other !== undefined) {
      if (other.family === 6) out.underlay6 = other.address;
      else out.underlay = other.address;
    }
  }
  return out;
}
