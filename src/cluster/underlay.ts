// The node's underlay addresses: where other nodes send traffic for this node's blocks, published in its
// liveness key. Taken from the daemon's flags when given (one per family); otherwise the source address the
// kernel picks towards the first etcd endpoint (the interface other nodes most likely share with us), and,
// for IPv6, a global address on that same interface.
import { createSocket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { parseIp } from '../address/ip';
import type { Netlink } from '../netlink/types';

export interface Underlay {
  /** IPv4 underlay address, if any. */
  underlay?: string;
  /** IPv6 underlay address, if any. */
  underlay6?: string;
}

/** Splits flag values (`--underlay-address`, repeatable) by family; two of one family is an error. */
export function underlayFromFlags(values: readonly string[]): Underlay {
  const out: Underlay = {};
  for (const v of values) {
    const ip = parseIp(v);
    if (ip === undefined) throw new Error(`--underlay-address: ${JSON.stringify(v)} is not an IP address`);
    const key = ip.family === 4 ? 'underlay' : 'underlay6';
    if (out[key] !== undefined) throw new Error(`--underlay-address: two IPv${ip.family} addresses given`);
    out[key] = v;
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
  const source = await sourceAddressTowards(host, port);
  const all = await nl.listAddresses();
  const mine = all.find((a) => a.address === source);
  const out: Underlay = {};
  const loopback = (a: string) => a === '::1' || a.startsWith('127.');
  if (!loopback(source)) {
    if (source.includes(':')) out.underlay6 = source;
    else out.underlay = source;
  }
  if (mine !== undefined) {
    // The other family on the same interface: global scope, usable (not tentative, DAD not failed).
    const other = all.find(
      (a) =>
        a.index === mine.index &&
        a.family !== mine.family &&
        a.scope === 0 &&
        !a.tentative &&
        !a.dadFailed &&
        !loopback(a.address),
    );
    if (other !== undefined) {
      if (other.family === 6) out.underlay6 = other.address;
      else out.underlay = other.address;
    }
  }
  return out;
}
