// nf_tables over nfnetlink, the wire format we encode and decode ourselves (as rtnl-codec.ts does for
// rtnetlink): message headers, batches, set element keys and comments, and the attributes berth reads back
// from dumps. Numbers from include/uapi/linux/netfilter/{nfnetlink,nf_tables}.h; nf_tables integers are
// big-endian (NLA_BE32/NLA_BE64), the netlink headers host order (little-endian here).
import { bytesToIp, ipToBytes } from './ip-bytes';
import {
  NLMSG_HDRLEN,
  NLM_F_ACK,
  NLM_F_REQUEST,
  decodeAttrList,
  decodeAttrs,
  encodeAttrs,
  nlmsghdr,
  readStr,
  str,
  type Attr,
} from './rtnl-codec';

export const NETLINK_NETFILTER = 12;
export const NFNL_SUBSYS_NFTABLES = 10;
/** NLMSG_MIN_TYPE and NLMSG_MIN_TYPE + 1. */
export const NFNL_MSG_BATCH_BEGIN = 16;
export const NFNL_MSG_BATCH_END = 17;

export const NFT_MSG = {
  NEWTABLE: 0,
  GETTABLE: 1,
  DELTABLE: 2,
  NEWCHAIN: 3,
  GETCHAIN: 4,
  DELCHAIN: 5,
  NEWRULE: 6,
  GETRULE: 7,
  DELRULE: 8,
  NEWSET: 9,
  GETSET: 10,
  DELSET: 11,
  NEWSETELEM: 12,
  GETSETELEM: 13,
  DELSETELEM: 14,
  NEWGEN: 15,
  GETGEN: 16,
  GETOBJ: 19,
  GETFLOWTABLE: 23,
} as const;
export const NFT_MSG_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(NFT_MSG).map(([k, v]) => [v, `NFT_MSG_${k}`]),
);

export { NLM_F_ACK, NLM_F_REQUEST };
export const NLM_F_MULTI = 0x2;
export const NLM_F_DUMP = 0x300;
export const NLM_F_CREATE = 0x400;
export const NLM_F_EXCL = 0x200;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
const NLA_F_NESTED = 0x8000;

/** NFPROTO_* by nft's family names. */
export const NFPROTO: Record<string, number> = { inet: 1, ip: 2, arp: 3, netdev: 5, bridge: 7, ip6: 10 };

/** Attribute numbers (enum nft_*_attributes). */
export const NFTA_LIST_ELEM = 1;
export const NFTA_TABLE = { NAME: 1, HANDLE: 4 } as const;
export const NFTA_CHAIN = { TABLE: 1, HANDLE: 2, NAME: 3 } as const;
export const NFTA_RULE = { TABLE: 1, CHAIN: 2, HANDLE: 3, EXPRESSIONS: 4, USERDATA: 7 } as const;
export const NFTA_SET = { TABLE: 1, NAME: 2, FLAGS: 3, KEY_TYPE: 4, KEY_LEN: 5, HANDLE: 16 } as const;
export const NFTA_SET_ELEM = {
  KEY: 1,
  DATA: 2,
  FLAGS: 3,
  TIMEOUT: 4,
  USERDATA: 6,
  OBJREF: 9,
  KEY_END: 10,
} as const;
export const NFTA_SET_ELEM_LIST = { TABLE: 1, SET: 2, ELEMENTS: 3, SET_ID: 4 } as const;
export const NFTA_DATA = { VALUE: 1, VERDICT: 2 } as const;
export const NFTA_VERDICT = { CODE: 1, CHAIN: 2 } as const;
export const NFTA_EXPR = { NAME: 1, DATA: 2 } as const;
export const NFTA_IMMEDIATE_DATA = 2;
export const NFTA_LOOKUP_SET = 1;
export const NFTA_DYNSET_SET_NAME = 1;
/** An xtables match inside a rule (iptables-nft): its name and its struct (xt_comment_info: char[256]). */
export const NFTA_MATCH = { NAME: 1, INFO: 3 } as const;
export const NFTA_GEN_ID = 1;
export const NFTA_OBJ = { TABLE: 1, NAME: 2, TYPE: 3 } as const;
export const NFTA_FLOWTABLE = { TABLE: 1, NAME: 2 } as const;

export const NFT_SET_F = {
  ANONYMOUS: 0x1,
  CONSTANT: 0x2,
  INTERVAL: 0x4,
  MAP: 0x8,
  TIMEOUT: 0x10,
  EVAL: 0x20,
  OBJECT: 0x40,
  CONCAT: 0x80,
  EXPR: 0x100,
} as const;
export const NFT_JUMP = -3;
export const NFT_GOTO = -4;
/**
 * NFTNL_UDATA_SET_ELEM_COMMENT and NFTNL_UDATA_RULE_COMMENT: the comment in libnftnl's userdata TLVs of an
 * element or a rule (type u8, len u8).
 */
const UDATA_COMMENT = 0;

/** A request this codec cannot express, or an answer it cannot read: the caller uses `nft -j` instead. */
export class NftnlUnsupported extends Error {
  constructor(what: string) {
    super(`not over netlink: ${what}`);
    this.name = 'NftnlUnsupported';
  }
}

export const be32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
};
export const be64 = (v: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v), 0);
  return b;
};
export const readBe32 = (b: Buffer | undefined): number | undefined =>
  b === undefined || b.length < 4 ? undefined : b.readUInt32BE(0);
export const readBe64 = (b: Buffer | undefined): number | undefined =>
  b === undefined || b.length < 8 ? undefined : Number(b.readBigUInt64BE(0));
/** A nested attribute as libmnl writes it (NLA_F_NESTED set; the kernel does not insist). */
export const nested = (type: number, attrs: readonly Attr[]): Attr => [type | NLA_F_NESTED, attrs];

/** One nf_tables message of a request or batch. */
export interface NftMsg {
  /** NFT_MSG_*. */
  type: number;
  /** NFPROTO_* (0 for family-less requests such as GETGEN). */
  family: number;
  /** NLM_F_* besides REQUEST (and ACK, which batches add). */
  flags: number;
  attrs: readonly Attr[];
}

/** nlmsghdr + nfgenmsg + attributes. `resId` is the nfgenmsg res_id (big-endian): the subsystem in batch headers. */
export function encodeMsg(
  type: number,
  flags: number,
  seq: number,
  family: number,
  attrs: readonly Attr[],
  resId = 0,
): Buffer {
  const body = encodeAttrs(attrs);
  const nfgenmsg = Buffer.alloc(4);
  nfgenmsg.writeUInt8(family, 0);
  nfgenmsg.writeUInt8(0, 1); // NFNETLINK_V0
  nfgenmsg.writeUInt16BE(resId, 2);
  const length = NLMSG_HDRLEN + nfgenmsg.length + body.length;
  return Buffer.concat([nlmsghdr(length, type, flags, seq), nfgenmsg, body]);
}

/** A single (non-batch) request, e.g. a GET or a dump. */
export function encodeRequest(m: NftMsg, seq: number): Buffer {
  return encodeMsg((NFNL_SUBSYS_NFTABLES << 8) | m.type, NLM_F_REQUEST | m.flags, seq, m.family, m.attrs);
}

/**
 * One transaction: BATCH_BEGIN (seq), the messages (seq+1 …), BATCH_END. The kernel commits all or nothing.
 * A message that fails is always answered with its error; only the last asks for an ACK (NLM_F_ACK), which
 * the kernel queues after every earlier answer. An ACK for each would all be queued inside the one sendmsg,
 * before anything can read them: a few hundred overflow the socket's receive buffer (ENOBUFS), and the
 * netlink library aborts the process on that error (a GC of stale elements sends one command per element).
 */
export function encodeBatch(msgs: readonly NftMsg[], seq: number): Buffer {
  const parts = [encodeMsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, [], NFNL_SUBSYS_NFTABLES)];
  msgs.forEach((m, i) =>
    parts.push(
      encodeMsg(
        (NFNL_SUBSYS_NFTABLES << 8) | m.type,
        NLM_F_REQUEST | (i === msgs.length - 1 ? NLM_F_ACK : 0) | m.flags,
        seq + 1 + i,
        m.family,
        m.attrs,
      ),
    ),
  );
  parts.push(
    encodeMsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 1 + msgs.length, 0, [], NFNL_SUBSYS_NFTABLES),
  );
  return Buffer.concat(parts);
}

export interface NlMsg {
  type: number;
  flags: number;
  seq: number;
  /** After the nlmsghdr: nfgenmsg + attributes, or the int32 errno + echoed header of NLMSG_ERROR. */
  body: Buffer;
}

/** Splits a datagram into messages (a truncated tail is dropped). */
export function parseMessages(buf: Buffer): NlMsg[] {
  const out: NlMsg[] = [];
  let pos = 0;
  while (pos + 16 <= buf.length) {
    const len = buf.readUInt32LE(pos);
    if (len < 16 || pos + len > buf.length) break;
    out.push({
      type: buf.readUInt16LE(pos + 4),
      flags: buf.readUInt16LE(pos + 6),
      seq: buf.readUInt32LE(pos + 8),
      body: buf.subarray(pos + 16, pos + len),
    });
    pos += (len + 3) & ~3;
  }
  return out;
}

/** NLMSG_ERROR's errno: 0 for an ACK, negative for an error. */
export function errorOf(m: NlMsg): number {
  return m.body.length >= 4 ? m.body.readInt32LE(0) : -5;
}

/** The attributes of an nf_tables answer (after the 4-byte nfgenmsg). */
export function msgAttrs(m: NlMsg): Map<number, Buffer> {
  return decodeAttrs(m.body, 4);
}

// --- set element keys -------------------------------------------------------------------------------

/** nft's datatype numbers (src/datatype.h TYPE_*), the ones berth's sets are made of. */
const TYPE = { ipv4_addr: 7, ipv6_addr: 8, ether_addr: 9, ifname: 41 } as const;
const TYPE_BITS = 6;
const FIELD_LEN: Record<number, number> = { 7: 4, 8: 16, 9: 6, 41: 16 };
const TYPE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(TYPE).map(([k, v]) => [v, k]));

/** What a set's keys look like, from NFT_MSG_NEWSET (GETSET answers). */
export interface SetInfo {
  name: string;
  table: string;
  flags: number;
  keyType: number;
  keyLen: number;
  handle: number | undefined;
}

export function parseSet(m: NlMsg): SetInfo {
  const a = msgAttrs(m);
  return {
    name: readStr(a.get(NFTA_SET.NAME)) ?? '',
    table: readStr(a.get(NFTA_SET.TABLE)) ?? '',
    flags: readBe32(a.get(NFTA_SET.FLAGS)) ?? 0,
    keyType: readBe32(a.get(NFTA_SET.KEY_TYPE)) ?? 0,
    keyLen: readBe32(a.get(NFTA_SET.KEY_LEN)) ?? 0,
    handle: readBe64(a.get(NFTA_SET.HANDLE)),
  };
}

/**
 * The key fields of a set, most significant first (nft builds a concatenation's type as
 * (t1 << 6 | t2) …). Only the types berth uses, in plain sets or concatenated ranges (pipapo: KEY and
 * KEY_END per element); maps, timeouts, single-field intervals (interval-end elements) are not read here.
 */
export function keyFields(set: SetInfo): number[] {
  const unsupported =
    (NFT_SET_F.MAP | NFT_SET_F.OBJECT | NFT_SET_F.TIMEOUT | NFT_SET_F.EVAL | NFT_SET_F.EXPR) & set.flags;
  if (unsupported !== 0) throw new NftnlUnsupported(`set ${set.name} flags 0x${set.flags.toString(16)}`);
  const fields: number[] = [];
  for (let t = set.keyType; t > 0; t = Math.floor(t / 2 ** TYPE_BITS)) fields.unshift(t % 2 ** TYPE_BITS);
  const padded = fields.reduce((n, f) => n + (((FIELD_LEN[f] ?? 0) + 3) & ~3), 0);
  const ok =
    fields.length > 0 &&
    fields.every((f) => FIELD_LEN[f] !== undefined) &&
    (fields.length === 1 ? FIELD_LEN[fields[0]!] === set.keyLen : padded === set.keyLen);
  if (!ok) throw new NftnlUnsupported(`set ${set.name} key type ${set.keyType} length ${set.keyLen}`);
  if ((set.flags & NFT_SET_F.INTERVAL) !== 0 && (set.flags & NFT_SET_F.CONCAT) === 0)
    throw new NftnlUnsupported(`set ${set.name}: single-field interval`);
  return fields;
}

const isInterval = (set: SetInfo): boolean => (set.flags & NFT_SET_F.INTERVAL) !== 0;

function fieldBytes(type: number, text: unknown, set: SetInfo): Buffer {
  if (typeof text !== 'string') throw new NftnlUnsupported(`set ${set.name} value ${JSON.stringify(text)}`);
  switch (type) {
    case TYPE.ipv4_addr:
    case TYPE.ipv6_addr: {
      const b = ipToBytes(text);
      if (b.length !== FIELD_LEN[type]) throw new NftnlUnsupported(`set ${set.name} value ${text}`);
      return b;
    }
    case TYPE.ifname: {
      const b = Buffer.alloc(16);
      if (Buffer.byteLength(text) > 15 || text.includes('*')) throw new NftnlUnsupported(`ifname ${text}`);
      b.write(text, 'utf8');
      return b;
    }
    default: {
      const parts = text.split(':');
      if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p)))
        throw new NftnlUnsupported(`set ${set.name} value ${text}`);
      return Buffer.from(parts.map((p) => parseInt(p, 16)));
    }
  }
}

/** Low and high bytes of one field as written in nft's JSON: a value, `{prefix: {addr, len}}`, `{range: [lo, hi]}`. */
function fieldRange(type: number, v: unknown, set: SetInfo): [Buffer, Buffer] {
  if (typeof v === 'object' && v !== null && isInterval(set)) {
    const o = v as { prefix?: { addr?: unknown; len?: unknown }; range?: unknown[] };
    if (o.prefix !== undefined && (type === TYPE.ipv4_addr || type === TYPE.ipv6_addr)) {
      const lo = fieldBytes(type, o.prefix.addr, set);
      const len = Number(o.prefix.len);
      if (!Number.isInteger(len) || len < 0 || len > lo.length * 8)
        throw new NftnlUnsupported(`prefix ${len}`);
      const hi = Buffer.from(lo);
      for (let bit = len; bit < lo.length * 8; bit++) {
        lo[bit >> 3]! &= ~(0x80 >> (bit & 7));
        hi[bit >> 3]! |= 0x80 >> (bit & 7);
      }
      return [lo, hi];
    }
    if (Array.isArray(o.range) && o.range.length === 2)
      return [fieldBytes(type, o.range[0], set), fieldBytes(type, o.range[1], set)];
  }
  const b = fieldBytes(type, v, set);
  return [b, b];
}

const pad4 = (b: Buffer): Buffer =>
  b.length % 4 === 0 ? b : Buffer.concat([b, Buffer.alloc(4 - (b.length % 4))]);

/** A JSON element value (as nft lists it and as berth's commands write it) as KEY (and KEY_END) bytes. */
export function encodeKey(set: SetInfo, val: unknown): { key: Buffer; keyEnd: Buffer | undefined } {
  const fields = keyFields(set);
  let values: unknown[] = [val];
  if (fields.length > 1) {
    const concat = (val as { concat?: unknown[] } | null)?.concat;
    if (!Array.isArray(concat) || concat.length !== fields.length)
      throw new NftnlUnsupported(`set ${set.name} value ${JSON.stringify(val)}`);
    values = concat;
  }
  const ranges = fields.map((f, i) => fieldRange(f, values[i], set));
  const join = (side: 0 | 1) =>
    fields.length === 1 ? ranges[0]![side] : Buffer.concat(ranges.map((r) => pad4(r[side])));
  const key = join(0);
  if (!isInterval(set)) {
    if (!key.equals(join(1)))
      throw new NftnlUnsupported(`set ${set.name}: a range in a set without intervals`);
    return { key, keyEnd: undefined };
  }
  return { key, keyEnd: join(1) };
}

function fieldText(type: number, b: Buffer): string {
  if (type === TYPE.ipv4_addr || type === TYPE.ipv6_addr) return bytesToIp(b);
  if (type === TYPE.ifname) return readStr(b) ?? '';
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** The prefix length when [lo, hi] is exactly one prefix, else undefined. */
function prefixLen(lo: Buffer, hi: Buffer): number | undefined {
  const bits = lo.length * 8;
  let len = 0;
  while (len < bits && (lo[len >> 3]! & (0x80 >> (len & 7))) === (hi[len >> 3]! & (0x80 >> (len & 7)))) len++;
  for (let bit = len; bit < bits; bit++) {
    const m = 0x80 >> (bit & 7);
    if ((lo[bit >> 3]! & m) !== 0 || (hi[bit >> 3]! & m) === 0) return undefined;
  }
  return len;
}

/** KEY (and KEY_END) bytes as nft's JSON writes the value: '198.18.0.2', {concat: [ip, {prefix: …}]}, …. */
export function decodeKey(set: SetInfo, key: Buffer, keyEnd: Buffer | undefined): unknown {
  const fields = keyFields(set);
  const values: unknown[] = [];
  let pos = 0;
  for (const f of fields) {
    const len = FIELD_LEN[f]!;
    const lo = key.subarray(pos, pos + len);
    const hi = keyEnd?.subarray(pos, pos + len) ?? lo;
    pos += fields.length === 1 ? len : (len + 3) & ~3;
    if (lo.equals(hi)) {
      values.push(fieldText(f, lo));
      continue;
    }
    const p = f === TYPE.ipv4_addr || f === TYPE.ipv6_addr ? prefixLen(lo, hi) : undefined;
    values.push(
      p !== undefined
        ? { prefix: { addr: fieldText(f, lo), len: p } }
        : { range: [fieldText(f, lo), fieldText(f, hi)] },
    );
  }
  return fields.length === 1 ? values[0] : { concat: values };
}

/** nft's JSON type of a set: 'ipv4_addr' or ['ifname', 'ether_addr']. */
export function typeName(set: SetInfo): string | string[] {
  const names = keyFields(set).map((f) => TYPE_NAMES[f]!);
  return names.length === 1 ? names[0]! : names;
}

/** An element's or rule's userdata carrying its comment (libnftnl's TLV: type, length, NUL-terminated text). */
export function commentUdata(comment: string): Buffer {
  const text = Buffer.from(comment, 'utf8');
  if (text.length + 1 > 255) throw new NftnlUnsupported(`comment of ${text.length} bytes`);
  return Buffer.concat([Buffer.from([UDATA_COMMENT, text.length + 1]), text, Buffer.alloc(1)]);
}

export function udataComment(b: Buffer | undefined): string | undefined {
  let pos = 0;
  while (b !== undefined && pos + 2 <= b.length) {
    const [type, len] = [b[pos]!, b[pos + 1]!];
    if (type === UDATA_COMMENT) return readStr(b.subarray(pos + 2, pos + 2 + len));
    pos += 2 + len;
  }
  return undefined;
}

/** One element for NEWSETELEM/DELSETELEM (the comment only when adding: the kernel finds elements by key). */
export function elementAttrs(set: SetInfo, val: unknown, comment: string | undefined): Attr {
  const { key, keyEnd } = encodeKey(set, val);
  const attrs: Attr[] = [nested(NFTA_SET_ELEM.KEY, [[NFTA_DATA.VALUE, key]])];
  if (keyEnd !== undefined) attrs.push(nested(NFTA_SET_ELEM.KEY_END, [[NFTA_DATA.VALUE, keyEnd]]));
  if (comment !== undefined) attrs.push([NFTA_SET_ELEM.USERDATA, commentUdata(comment)]);
  return nested(NFTA_LIST_ELEM, attrs);
}

/** NEWSETELEM / DELSETELEM naming the set and carrying `elems` (built by elementAttrs). */
export function setElemMsg(
  op: 'add' | 'create' | 'delete',
  family: number,
  table: string,
  set: string,
  elems: Attr[],
  setId?: number,
): NftMsg {
  // A set made earlier in the same batch is named by its NFTA_SET_ID too, as nft does.
  const id: Attr[] = setId !== undefined ? [[NFTA_SET_ELEM_LIST.SET_ID, be32(setId)]] : [];
  return {
    type: op === 'delete' ? NFT_MSG.DELSETELEM : NFT_MSG.NEWSETELEM,
    family,
    // `add element` is NLM_F_CREATE without EXCL: an element already there is no error and keeps its comment.
    // `create element` adds EXCL: one already there fails the transaction (EEXIST), as nft's.
    flags: op === 'add' ? NLM_F_CREATE : op === 'create' ? NLM_F_CREATE | NLM_F_EXCL : 0,
    attrs: [
      [NFTA_SET_ELEM_LIST.TABLE, str(table)],
      [NFTA_SET_ELEM_LIST.SET, str(set)],
      ...id,
      nested(NFTA_SET_ELEM_LIST.ELEMENTS, elems),
    ],
  };
}

/** The elements of one NEWSETELEM dump message: value as nft's JSON writes it and the comment. */
export function parseElements(set: SetInfo, m: NlMsg): Array<{ val: unknown; comment: string | undefined }> {
  const list = msgAttrs(m).get(NFTA_SET_ELEM_LIST.ELEMENTS);
  if (list === undefined) return [];
  return decodeAttrList(list).map(([, e]) => {
    const a = decodeAttrs(e);
    if (
      (readBe32(a.get(NFTA_SET_ELEM.FLAGS)) ?? 0) !== 0 ||
      a.has(NFTA_SET_ELEM.DATA) ||
      a.has(NFTA_SET_ELEM.OBJREF)
    )
      throw new NftnlUnsupported(`set ${set.name}: an element with flags or data`);
    const key = decodeAttrs(a.get(NFTA_SET_ELEM.KEY) ?? Buffer.alloc(0)).get(NFTA_DATA.VALUE);
    const end = a.get(NFTA_SET_ELEM.KEY_END);
    if (key === undefined) throw new NftnlUnsupported(`set ${set.name}: an element without a key`);
    const keyEnd = end === undefined ? undefined : decodeAttrs(end).get(NFTA_DATA.VALUE);
    return { val: decodeKey(set, key, keyEnd), comment: udataComment(a.get(NFTA_SET_ELEM.USERDATA)) };
  });
}

// --- rules -------------------------------------------------------------------------------------------

export interface RuleInfo {
  table: string;
  chain: string;
  handle: number;
  /**
   * The expressions, reduced to what berth looks for, in the shape of nft's JSON: `{jump: {target}}`,
   * `{goto: {target}}`, `{match: {right: '@set'}}` for a lookup, `{set: {set: '@set'}}` for a dynset, and
   * `{<name>: null}` for every other expression.
   */
  expr: unknown[];
  /**
   * The rule's comment: nft's (the rule's userdata), else an iptables-nft `-m comment --comment` (an xtables
   * match, which nft itself lists only as `xt match "comment"`).
   */
  comment?: string;
}

export function parseRule(m: NlMsg): RuleInfo {
  const a = msgAttrs(m);
  const expr: unknown[] = [];
  let xtComment: string | undefined;
  for (const [, e] of decodeAttrList(a.get(NFTA_RULE.EXPRESSIONS) ?? Buffer.alloc(0))) {
    const ea = decodeAttrs(e);
    const name = readStr(ea.get(NFTA_EXPR.NAME)) ?? '';
    const data = decodeAttrs(ea.get(NFTA_EXPR.DATA) ?? Buffer.alloc(0));
    if (name === 'immediate') {
      const verdict = decodeAttrs(
        decodeAttrs(data.get(NFTA_IMMEDIATE_DATA) ?? Buffer.alloc(0)).get(NFTA_DATA.VERDICT) ??
          Buffer.alloc(0),
      );
      const code = verdict.get(NFTA_VERDICT.CODE)?.readInt32BE(0);
      const target = readStr(verdict.get(NFTA_VERDICT.CHAIN));
      if ((code === NFT_JUMP || code === NFT_GOTO) && target !== undefined) {
        expr.push({ [code === NFT_JUMP ? 'jump' : 'goto']: { target } });
        continue;
      }
    } else if (name === 'lookup') {
      expr.push({ match: { right: `@${readStr(data.get(NFTA_LOOKUP_SET)) ?? ''}` } });
      continue;
    } else if (name === 'dynset') {
      expr.push({ set: { set: `@${readStr(data.get(NFTA_DYNSET_SET_NAME)) ?? ''}` } });
      continue;
    } else if (name === 'match' && readStr(data.get(NFTA_MATCH.NAME)) === 'comment') {
      xtComment ??= readStr(data.get(NFTA_MATCH.INFO));
    }
    expr.push({ [name]: null });
  }
  const comment = udataComment(a.get(NFTA_RULE.USERDATA)) ?? xtComment;
  return {
    table: readStr(a.get(NFTA_RULE.TABLE)) ?? '',
    chain: readStr(a.get(NFTA_RULE.CHAIN)) ?? '',
    handle: readBe64(a.get(NFTA_RULE.HANDLE)) ?? 0,
    expr,
    ...(comment !== undefined ? { comment } : {}),
  };
}
