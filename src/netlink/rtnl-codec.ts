// rtnetlink wire format we encode and decode ourselves: headers and (nested) attributes. Doing it here
// rather than through netlink/dist/rt keeps start-up low (rt's generated parsers cost ~7 ms to require)
// and gives us the NLA_F_NESTED flag that IFLA_PROTINFO needs. Kernel names are kept in comments.

/** Message types (RTM_*). */
export const RTM = {
  NEWLINK: 16,
  DELLINK: 17,
  GETLINK: 18,
  SETLINK: 19,
  NEWADDR: 20,
  DELADDR: 21,
  GETADDR: 22,
  NEWROUTE: 24,
  DELROUTE: 25,
  GETROUTE: 26,
} as const;
export const RTM_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(RTM).map(([k, v]) => [v, `RTM_${k}`]),
);

/** nlmsg_flags modifiers (NLM_F_*); REQUEST and ACK are added by the socket layer. */
export const NLM_F = {
  ROOT: 0x100,
  MATCH: 0x200,
  DUMP: 0x300,
  REPLACE: 0x100,
  EXCL: 0x200,
  CREATE: 0x400,
  APPEND: 0x800,
} as const;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLA_F_NESTED = 0x8000;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLMSG_HDRLEN = 16;

/** struct nlmsghdr for a message of `length` bytes in all (header included); port 0, as iproute2 sends. */
export function nlmsghdr(length: number, type: number, flags: number, seq: number): Buffer {
  const b = Buffer.alloc(NLMSG_HDRLEN);
  b.writeUInt32LE(length, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(flags, 6);
  b.writeUInt32LE(seq >>> 0, 8);
  return b;
}

export const AF = { UNSPEC: 0, INET: 2, BRIDGE: 7, INET6: 10 } as const;

/** IFLA_* (struct ifinfomsg attributes). */
export const IFLA = {
  ADDRESS: 1,
  IFNAME: 3,
  MTU: 4,
  LINK: 5,
  MASTER: 10,
  PROTINFO: 12,
  OPERSTATE: 16,
  LINKINFO: 18,
  IFALIAS: 20,
  AF_SPEC: 26,
  NET_NS_FD: 28,
  EXT_MASK: 29,
  PROMISCUITY: 30,
  LINK_NETNSID: 37,
} as const;
export const IFLA_INFO = { KIND: 1, DATA: 2, SLAVE_KIND: 4, SLAVE_DATA: 5 } as const;
export const VETH_INFO_PEER = 1;
/** IFLA_BR_* inside IFLA_INFO_DATA of a bridge. */
export const IFLA_BR_VLAN_FILTERING = 7;
/** IFLA_BRPORT_* inside IFLA_PROTINFO (AF_BRIDGE). */
export const IFLA_BRPORT = { MODE: 4, LEARNING: 8, ISOLATED: 33 } as const;
/** IFLA_BRIDGE_* inside IFLA_AF_SPEC (AF_BRIDGE). */
export const IFLA_BRIDGE = { FLAGS: 0, VLAN_INFO: 2 } as const;
export const BRIDGE_FLAGS = { MASTER: 1, SELF: 2 } as const;
export const BRIDGE_VLAN_INFO = {
  MASTER: 1,
  PVID: 2,
  UNTAGGED: 4,
  RANGE_BEGIN: 8,
  RANGE_END: 16,
  BRENTRY: 32,
} as const;
/** IFLA_EXT_MASK bits (RTEXT_FILTER_*). */
export const RTEXT_FILTER = { BRVLAN: 2, BRVLAN_COMPRESSED: 4, SKIP_STATS: 8 } as const;
/** IFF_* device flags. */
export const IFF = { UP: 0x1, RUNNING: 0x40, PROMISC: 0x100, LOWER_UP: 0x10000 } as const;

/** IFA_* (struct ifaddrmsg attributes) and IFA_F_* flags. */
export const IFA = { ADDRESS: 1, LOCAL: 2, LABEL: 3, BROADCAST: 4, FLAGS: 8 } as const;
export const IFA_F = {
  SECONDARY: 0x01,
  NODAD: 0x02,
  OPTIMISTIC: 0x04,
  DADFAILED: 0x08,
  DEPRECATED: 0x20,
  TENTATIVE: 0x40,
  PERMANENT: 0x80,
  NOPREFIXROUTE: 0x200,
} as const;

/** RTA_* (struct rtmsg attributes). */
export const RTA = {
  DST: 1,
  OIF: 4,
  GATEWAY: 5,
  PRIORITY: 6,
  PREFSRC: 7,
  METRICS: 8,
  MULTIPATH: 9,
  TABLE: 15,
  VIA: 18,
} as const;
/** RTAX_* (nested in RTA_METRICS): the route's path MTU and the MSS advertised on it. */
export const RTAX = { MTU: 2, ADVMSS: 8 } as const;
export const RT_TABLE = { UNSPEC: 0, MAIN: 254, LOCAL: 255 } as const;
export const RT_SCOPE = { universe: 0, site: 200, link: 253, host: 254, nowhere: 255 } as const;
/**
 * RTPROT_*: who installed a route. BERTH (0xbe = 190) is berthd's own: unused by the kernel's list
 * (include/uapi/linux/rtnetlink.h: …, 99 openr, 186 bgp, 187 isis, 188 ospf, 189 rip, 192 eigrp) and by
 * iproute2's rt_protos, so `ip route show proto 190` lists exactly the routes berthd programs.
 */
export const RTPROT = { KERNEL: 2, BOOT: 3, STATIC: 4, BERTH: 190 } as const;
export const RTN_UNICAST = 1;

/** One attribute to encode; `nested` attributes are encoded recursively. */
export type Attr = readonly [type: number, value: Buffer | readonly Attr[]];

export const align4 = (n: number) => (n + 3) & ~3;

export function u8(v: number): Buffer {
  return Buffer.from([v & 0xff]);
}
export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v, 0);
  return b;
}
export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0, 0);
  return b;
}
export function s32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v, 0);
  return b;
}
/** NUL-terminated string (IFLA_IFNAME, IFLA_INFO_KIND, IFLA_IFALIAS). */
export function str(v: string): Buffer {
  return Buffer.concat([Buffer.from(v, 'utf8'), Buffer.alloc(1)]);
}

/** Encodes attributes (each padded to 4 bytes); nested lists get their own header. */
export function encodeAttrs(attrs: readonly Attr[]): Buffer {
  const parts: Buffer[] = [];
  for (const [type, value] of attrs) {
    const payload = Buffer.isBuffer(value) ? value : encodeAttrs(value);
    const header = Buffer.alloc(4);
    header.writeUInt16LE(4 + payload.length, 0);
    header.writeUInt16LE(type, 2);
    parts.push(header, payload);
    const pad = align4(payload.length) - payload.length;
    if (pad > 0) parts.push(Buffer.alloc(pad));
  }
  return Buffer.concat(parts);
}

/** Decodes one level of attributes into type → payload (the last one wins; flags masked off). */
export function decodeAttrs(buf: Buffer, offset = 0): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let pos = offset;
  while (pos + 4 <= buf.length) {
    const len = buf.readUInt16LE(pos);
    const type = buf.readUInt16LE(pos + 2) & 0x3fff;
    if (len < 4 || pos + len > buf.length) break;
    out.set(type, buf.subarray(pos + 4, pos + len));
    pos += align4(len);
  }
  return out;
}

/** Like decodeAttrs, but keeps repeated attributes (IFLA_BRIDGE_VLAN_INFO appears once per entry). */
export function decodeAttrList(buf: Buffer): Array<[number, Buffer]> {
  const out: Array<[number, Buffer]> = [];
  let pos = 0;
  while (pos + 4 <= buf.length) {
    const len = buf.readUInt16LE(pos);
    const type = buf.readUInt16LE(pos + 2) & 0x3fff;
    if (len < 4 || pos + len > buf.length) break;
    out.push([type, buf.subarray(pos + 4, pos + len)]);
    pos += align4(len);
  }
  return out;
}

export function readStr(b: Buffer | undefined): string | undefined {
  if (b === undefined) return undefined;
  const nul = b.indexOf(0);
  return b.toString('utf8', 0, nul < 0 ? b.length : nul);
}
export function readU32(b: Buffer | undefined): number | undefined {
  return b === undefined || b.length < 4 ? undefined : b.readUInt32LE(0);
}
export function readU8(b: Buffer | undefined): number | undefined {
  return b === undefined || b.length < 1 ? undefined : b.readUInt8(0);
}

/** struct ifinfomsg (16 bytes). */
export function ifinfomsg(m: { family?: number; index?: number; flags?: number; change?: number }): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt8(m.family ?? AF.UNSPEC, 0);
  b.writeInt32LE(m.index ?? 0, 4);
  b.writeUInt32LE((m.flags ?? 0) >>> 0, 8);
  b.writeUInt32LE((m.change ?? 0) >>> 0, 12);
  return b;
}
export const IFINFOMSG_LEN = 16;

/** struct ifaddrmsg (8 bytes). */
export function ifaddrmsg(m: {
  family: number;
  prefixLength: number;
  flags?: number;
  scope?: number;
  index: number;
}): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(m.family, 0);
  b.writeUInt8(m.prefixLength, 1);
  b.writeUInt8((m.flags ?? 0) & 0xff, 2);
  b.writeUInt8(m.scope ?? 0, 3);
  b.writeUInt32LE(m.index, 4);
  return b;
}
export const IFADDRMSG_LEN = 8;

/** struct rtmsg (12 bytes). */
export function rtmsg(m: {
  family: number;
  dstLen?: number;
  table?: number;
  protocol?: number;
  scope?: number;
  type?: number;
}): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(m.family, 0);
  b.writeUInt8(m.dstLen ?? 0, 1);
  b.writeUInt8(m.table ?? 0, 4);
  b.writeUInt8(m.protocol ?? 0, 5);
  b.writeUInt8(m.scope ?? 0, 6);
  b.writeUInt8(m.type ?? 0, 7);
  return b;
}
export const RTMSG_LEN = 12;
