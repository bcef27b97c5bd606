// Textual IP addresses <-> the byte strings netlink carries; the only place addresses become Buffers.
// Parsing and text forms are the shared address room's; the kernel is told an address in the family its
// notation says (an IPv4-mapped IPv6 address stays IPv6 here).
import { type Cidr, lastOf, parseCidrAsWritten } from '../address/cidr';
import { type Family, type Ip, FAMILY_BITS, formatIp, parseIpAsWritten } from '../address/ip';
import { NetlinkError } from './errors';

export type IpFamily = Family;

function invalid(op: string, object: string, message: string): NetlinkError {
  return new NetlinkError({ code: 'EINVAL', errno: -22, op, object, message });
}

function parseAddress(address: string): Ip {
  const ip = parseIpAsWritten(address);
  if (ip === undefined) throw invalid('parse address', address, `not an IP address: ${address}`);
  return ip;
}

export function ipToBytes(address: string | Ip): Buffer {
  const ip = typeof address === 'string' ? parseAddress(address) : address;
  const out = Buffer.alloc(FAMILY_BITS[ip.family] / 8);
  let v = ip.value;
  for (let i = out.length - 1; i >= 0; i--, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/** Formats 4 or 16 bytes; IPv6 in RFC 5952 form (lowercase, longest zero run compressed). */
export function bytesToIp(b: Buffer): string {
  if (b.length !== 4 && b.length !== 16) throw new Error(`unexpected address length ${b.length}`);
  let value = 0n;
  for (const byte of b) value = (value << 8n) | BigInt(byte);
  return formatIp({ family: b.length === 4 ? 4 : 6, value });
}

/** Parses `addr/len` (len defaults to the full length); EINVAL when it is not one. */
export function parseCidr(cidr: string): Cidr {
  const slash = cidr.indexOf('/');
  const ip = parseAddress(slash < 0 ? cidr : cidr.slice(0, slash));
  if (slash < 0) return { ip, prefix: FAMILY_BITS[ip.family] };
  const c = parseCidrAsWritten(cidr);
  if (c === undefined) throw invalid('parse prefix', cidr, `bad prefix length in ${cidr}`);
  return c;
}

/** The IPv4 broadcast address of addr/len (what `ip addr add … brd +` and Go's netlink.AddrAdd set). */
export function ipv4Broadcast(address: string, prefixLength: number): string {
  return formatIp({ family: 4, value: lastOf({ ip: parseAddress(address), prefix: prefixLength }) });
}
