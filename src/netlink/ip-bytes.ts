// Textual IP addresses <-> the byte strings netlink carries; the only place addresses become Buffers.
import { isIPv4, isIPv6 } from 'node:net';
import { NetlinkError } from './errors';

export type IpFamily = 4 | 6;

export function ipFamily(address: string): IpFamily {
  if (isIPv4(address)) return 4;
  if (isIPv6(address)) return 6;
  throw new NetlinkError({
    code: 'EINVAL',
    errno: -22,
    op: 'parse address',
    object: address,
    message: `not an IP address: ${address}`,
  });
}

export function ipToBytes(address: string): Buffer {
  if (ipFamily(address) === 4) return Buffer.from(address.split('.').map(Number));
  const out = Buffer.alloc(16);
  let text = address;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4 !== null) {
    const b = v4[1]!.split('.').map(Number);
    text = `${text.slice(0, v4.index)}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head === '' || head === undefined ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Formats 4 or 16 bytes; IPv6 in RFC 5952 form (lowercase, longest zero run compressed). */
export function bytesToIp(b: Buffer): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) throw new Error(`unexpected address length ${b.length}`);
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(b.readUInt16BE(i));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** Parses `addr/len` (len defaults to the full length). */
export function parseCidr(cidr: string): { address: string; prefixLength: number; family: IpFamily } {
  const slash = cidr.indexOf('/');
  const address = slash < 0 ? cidr : cidr.slice(0, slash);
  const family = ipFamily(address);
  const max = family === 4 ? 32 : 128;
  const prefixLength = slash < 0 ? max : Number(cidr.slice(slash + 1));
  if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > max) {
    throw new NetlinkError({
      code: 'EINVAL',
      errno: -22,
      op: 'parse prefix',
      object: cidr,
      message: `bad prefix length in ${cidr}`,
    });
  }
  return { address, prefixLength, family };
}

/** The IPv4 broadcast address of addr/len (what `ip addr add … brd +` and Go's netlink.AddrAdd set). */
export function ipv4Broadcast(address: string, prefixLength: number): string {
  const b = ipToBytes(address);
  const n = b.readUInt32BE(0) | (prefixLength === 0 ? 0xffffffff : (1 << (32 - prefixLength)) - 1);
  const out = Buffer.alloc(4);
  out.writeUInt32BE(n >>> 0, 0);
  return bytesToIp(out);
}
