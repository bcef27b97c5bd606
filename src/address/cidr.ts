// Prefixes ("ip/len") over the shared Ip type: parsing, masks, network and last address, containment.
import { type Family, type Ip, FAMILY_BITS, formatIp, parseIp, parseIpAsWritten } from './ip';

export interface Cidr {
  /** The address as written (host bits possibly set). */
  readonly ip: Ip;
  readonly prefix: number;
}

const PREFIX_RE = /^(0|[1-9][0-9]{0,2})$/;

function parseWith(text: string, parse: (ip: string) => Ip | undefined): Cidr | undefined {
  if (typeof text !== 'string') return undefined;
  const slash = text.indexOf('/');
  if (slash === -1) return undefined;
  const ip = parse(text.slice(0, slash));
  const p = text.slice(slash + 1);
  if (ip === undefined || !PREFIX_RE.test(p)) return undefined;
  const prefix = Number(p);
  return prefix > FAMILY_BITS[ip.family] ? undefined : { ip, prefix };
}

/**
 * Parses "ip/prefix" as host-local does (Go's ParseCIDR, IPv4-mapped folded to IPv4). An IPv4-mapped IPv6
 * CIDR would need its prefix shifted; host-local users never write one, so it is refused.
 */
export function parseCidr(text: string): Cidr | undefined {
  const c = parseWith(text, parseIp);
  if (c !== undefined && c.ip.family === 4 && text.slice(0, text.indexOf('/')).includes(':'))
    return undefined;
  return c;
}

/** Parses "ip/prefix" in the family its notation says (see parseIpAsWritten): what the kernel is told. */
export function parseCidrAsWritten(text: string): Cidr | undefined {
  return parseWith(text, parseIpAsWritten);
}

export function formatCidr(ip: Ip, prefix: number): string {
  return `${formatIp(ip)}/${prefix}`;
}

export function maskOf(family: Family, prefix: number): bigint {
  const bits = BigInt(FAMILY_BITS[family]);
  return ((1n << bits) - 1n) ^ ((1n << (bits - BigInt(prefix))) - 1n);
}

export function networkOf(c: Cidr): bigint {
  return c.ip.value & maskOf(c.ip.family, c.prefix);
}

/** The prefix's last address (IPv4: the broadcast address). */
export function lastOf(c: Cidr): bigint {
  return networkOf(c) | (((1n << BigInt(FAMILY_BITS[c.ip.family])) - 1n) ^ maskOf(c.ip.family, c.prefix));
}

/** The network address as an Ip ("198.18.0.0" for 198.18.0.5/24). */
export function networkIp(c: Cidr): Ip {
  return { family: c.ip.family, value: networkOf(c) };
}

export function cidrContains(c: Cidr, ip: Ip): boolean {
  return ip.family === c.ip.family && (ip.value & maskOf(c.ip.family, c.prefix)) === networkOf(c);
}
