// Creating nftables objects over netlink: the commands berth's masquerade and spoof check send to set a
// network up (add table / base or plain chain / set, flush chain, add rule), compiled to the messages nft
// 1.0.6 sends for the same JSON (captured with `strace -xx nft -j -f …` and `nft --debug=netlink`), so
// `nft list` shows exactly what it shows for nft's own. Only the rule shapes berth writes are compiled:
// payload and meta matches against a prefix or a named set, their concatenations, and the verdicts return,
// drop, accept, jump, plus masquerade. Anything else is NftnlUnsupported (the caller uses nft).
import { ipToBytes } from './ip-bytes';
import {
  NFTA_CHAIN,
  NFTA_DATA,
  NFTA_EXPR,
  NFTA_LIST_ELEM,
  NFTA_RULE,
  NFTA_SET,
  NFTA_TABLE,
  NFTA_VERDICT,
  NFT_MSG,
  NFT_SET_F,
  NLM_F_CREATE,
  NftnlUnsupported,
  be32,
  commentUdata,
  nested,
  type NftMsg,
  type SetInfo,
} from './nftnl-codec';
import { str, type Attr } from './rtnl-codec';

const NLM_F_APPEND = 0x800;
const NFTA_CHAIN_HOOK = 4;
const NFTA_CHAIN_POLICY = 5;
const NFTA_CHAIN_TYPE = 7;
const NFTA_HOOK = { NUM: 1, PRIORITY: 2 } as const;
const NFTA_SET_ID = 10;
const NFTA_SET_DESC = 9;
const NFTA_SET_DESC_CONCAT = 2;
const NFTA_SET_FIELD_LEN = 1;
const NFTA_SET_USERDATA = 13;
const NFTA_TABLE_FLAGS = 2;
const HOOKS: Record<string, number> = { prerouting: 0, input: 1, forward: 2, output: 3, postrouting: 4 };
const POLICY: Record<string, number> = { drop: 0, accept: 1 };
const VERDICT: Record<string, number> = { drop: 0, accept: 1, jump: -3, goto: -4, return: -5 };
const NFPROTO_IPV4 = 2;
const NFPROTO_IPV6 = 10;
const NFT_META_IIFNAME = 6;
const NFT_META_NFPROTO = 15;
const NFT_PAYLOAD = { LL: 0, NETWORK: 1 } as const;
const NFT_LOOKUP_F_INV = 1;

/** nft's datatypes: number, key length, and the byte order its set userdata records (1 host, 2 big endian). */
const TYPES: Record<string, { type: number; len: number; order: number }> = {
  ipv4_addr: { type: 7, len: 4, order: 2 },
  ipv6_addr: { type: 8, len: 16, order: 2 },
  ether_addr: { type: 9, len: 6, order: 2 },
  ifname: { type: 41, len: 16, order: 1 },
};

/** Where a payload field is, and the protocol its rule depends on (inet: meta nfproto). */
const FIELDS: Record<string, { base: number; offset: number; len: number; nfproto?: number }> = {
  'ip saddr': { base: NFT_PAYLOAD.NETWORK, offset: 12, len: 4, nfproto: NFPROTO_IPV4 },
  'ip daddr': { base: NFT_PAYLOAD.NETWORK, offset: 16, len: 4, nfproto: NFPROTO_IPV4 },
  'ip6 saddr': { base: NFT_PAYLOAD.NETWORK, offset: 8, len: 16, nfproto: NFPROTO_IPV6 },
  'ip6 daddr': { base: NFT_PAYLOAD.NETWORK, offset: 24, len: 16, nfproto: NFPROTO_IPV6 },
  'ether saddr': { base: NFT_PAYLOAD.LL, offset: 6, len: 6 },
};

/**
 * New sets of one batch by `<family> <table> <name>`, with the NFTA_SET_ID that rules and elements use
 * to refer to them.
 */
export type NewSets = Map<string, { id: number; info: SetInfo }>;

const unsupported = (what: unknown): never => {
  throw new NftnlUnsupported(JSON.stringify(what));
};

function only(o: Record<string, unknown>, allowed: string[], required: string[]): void {
  if (!Object.keys(o).every((k) => allowed.includes(k)) || !required.every((k) => o[k] !== undefined))
    unsupported(o);
}

/** The key of a set given as nft's JSON `type` (and `flags`), as the kernel stores it. */
export function setInfo(o: Record<string, unknown>): SetInfo {
  const types = (Array.isArray(o.type) ? o.type : [o.type]).map((t) => TYPES[String(t)] ?? unsupported(o));
  const flags = (o.flags as unknown[] | undefined) ?? [];
  if (!flags.every((f) => f === 'interval') || types.length > 2) unsupported(o);
  const interval = flags.includes('interval');
  if (interval && types.length === 1) unsupported(o); // rbtree intervals: not what berth creates
  return {
    name: String(o.name),
    table: String(o.table),
    // A concatenation gets NFT_SET_CONCAT only with intervals (pipapo), as nft sets it.
    flags: interval ? NFT_SET_F.INTERVAL | NFT_SET_F.CONCAT : 0,
    keyType: types.reduce((t, x) => t * 64 + x.type, 0),
    keyLen: types.length === 1 ? types[0]!.len : types.reduce((n, x) => n + ((x.len + 3) & ~3), 0),
    handle: undefined,
  };
}

function setMsg(family: number, o: Record<string, unknown>, id: number): NftMsg {
  only(o, ['family', 'table', 'name', 'type', 'flags'], ['table', 'name', 'type']);
  const info = setInfo(o);
  const types = (Array.isArray(o.type) ? o.type : [o.type]).map((t) => TYPES[String(t)]!);
  const attrs: Attr[] = [
    [NFTA_SET.TABLE, str(info.table)],
    [NFTA_SET.NAME, str(info.name)],
    [NFTA_SET.FLAGS, be32(info.flags)],
    [NFTA_SET.KEY_TYPE, be32(info.keyType)],
    [NFTA_SET.KEY_LEN, be32(info.keyLen)],
    [NFTA_SET_ID, be32(id)],
  ];
  if ((info.flags & NFT_SET_F.CONCAT) !== 0)
    attrs.push(
      nested(NFTA_SET_DESC, [
        nested(
          NFTA_SET_DESC_CONCAT,
          types.map((t) => nested(NFTA_LIST_ELEM, [[NFTA_SET_FIELD_LEN, be32(t.len)]])),
        ),
      ]),
    );
  // libnftnl userdata: NFTNL_UDATA_SET_KEYBYTEORDER (u32, host order); a concatenation records order 0
  // and NFTNL_UDATA_SET_KEY_TYPEOF holding only the concat marker (nft writes it for `type a . b`).
  const udata =
    types.length === 1
      ? Buffer.from([0, 4, types[0]!.order, 0, 0, 0])
      : Buffer.from('000400000000' + '0308' + '00040d000000' + '0100', 'hex');
  attrs.push([NFTA_SET_USERDATA, udata]);
  return { type: NFT_MSG.NEWSET, family, flags: NLM_F_CREATE, attrs };
}

function chainMsg(family: number, o: Record<string, unknown>): NftMsg {
  only(o, ['family', 'table', 'name', 'type', 'hook', 'prio', 'policy'], ['table', 'name']);
  const attrs: Attr[] = [
    [NFTA_CHAIN.TABLE, str(String(o.table))],
    [NFTA_CHAIN.NAME, str(String(o.name))],
  ];
  if (o.hook !== undefined || o.type !== undefined) {
    const hook = HOOKS[String(o.hook)];
    const policy = POLICY[String(o.policy ?? 'accept')];
    const prio = Number(o.prio);
    if (hook === undefined || policy === undefined || !Number.isInteger(prio) || typeof o.type !== 'string')
      unsupported(o);
    const p = Buffer.alloc(4);
    p.writeInt32BE(prio, 0);
    attrs.push(
      [NFTA_CHAIN_TYPE, str(o.type as string)],
      [NFTA_CHAIN_POLICY, be32(policy!)],
      nested(NFTA_CHAIN_HOOK, [
        [NFTA_HOOK.NUM, be32(hook!)],
        [NFTA_HOOK.PRIORITY, p],
      ]),
    );
  }
  return { type: NFT_MSG.NEWCHAIN, family, flags: NLM_F_CREATE, attrs };
}

// --- rules ---------------------------------------------------------------------------------------------

const expr = (name: string, data: Attr[]): Attr =>
  nested(NFTA_LIST_ELEM, [[NFTA_EXPR.NAME, str(name)], nested(NFTA_EXPR.DATA, data)]);
const u32be = (attr: number, v: number): Attr => [attr, be32(v)];
const value = (attr: number, b: Buffer): Attr => nested(attr, [[NFTA_DATA.VALUE, b]]);

const meta = (key: number, dreg: number) => expr('meta', [u32be(2, key), u32be(1, dreg)]);
const cmpEq = (sreg: number, b: Buffer) => expr('cmp', [u32be(1, sreg), u32be(2, 0), value(3, b)]);
const payload = (dreg: number, base: number, offset: number, len: number) =>
  expr('payload', [u32be(1, dreg), u32be(2, base), u32be(3, offset), u32be(4, len)]);

/** nft's register for a field starting `unit` 4-byte units into the key: NFT_REG_1… on 16-byte boundaries, else NFT_REG32_nn. */
const register = (unit: number): number => (unit % 4 === 0 ? 1 + unit / 4 : 8 + unit);

interface Operand {
  len: number;
  load: (dreg: number) => Attr;
  nfproto?: number;
}

function operand(left: unknown, family: string): Operand {
  const o = left as { payload?: { protocol?: string; field?: string }; meta?: { key?: string } };
  if (o.payload !== undefined) {
    const key = `${o.payload.protocol} ${o.payload.field}`;
    const f = FIELDS[key] ?? unsupported(left);
    // Network-header fields need the inet family (a bridge would match the ether type); ether needs bridge.
    if ((f.nfproto !== undefined) !== (family === 'inet') || (f.nfproto === undefined && family !== 'bridge'))
      unsupported(left);
    return { len: f.len, load: (d) => payload(d, f.base, f.offset, f.len), nfproto: f.nfproto };
  }
  if (o.meta?.key === 'iifname' && Object.keys(o).length === 1)
    return { len: 16, load: (d) => meta(NFT_META_IIFNAME, d) };
  return unsupported(left);
}

/** One rule's JSON expressions as nft compiles them. */
function compileRule(expressions: unknown[], family: string, table: string, sets: NewSets): Attr[] {
  const out: Attr[] = [];
  let nfproto: number | undefined;
  const depend = (p: number | undefined) => {
    if (p === undefined || p === nfproto) return;
    if (nfproto !== undefined) unsupported(expressions); // two protocols in one rule
    nfproto = p;
    out.push(meta(NFT_META_NFPROTO, 1), cmpEq(1, Buffer.from([p])));
  };
  for (const e of expressions) {
    const [[kind, arg]] = Object.entries(e as Record<string, unknown>) as [[string, unknown]];
    if (Object.keys(e as object).length !== 1) unsupported(e);
    if (kind === 'match') {
      const m = arg as { op?: string; left?: unknown; right?: unknown };
      only(m, ['op', 'left', 'right'], ['op', 'left', 'right']);
      const concat = (m.left as { concat?: unknown[] }).concat;
      const ops = (concat ?? [m.left]).map((l) => operand(l, family));
      for (const op of ops) depend(op.nfproto);
      if (typeof m.right === 'string' && m.right.startsWith('@') && (m.op === '==' || m.op === '!=')) {
        let unit = 0;
        for (const op of ops) {
          out.push(op.load(register(unit)));
          unit += (op.len + 3) >> 2;
        }
        const name = m.right.slice(1);
        const lookup: Attr[] = [u32be(2, 1), [1, str(name)]];
        // A set made in the same batch is named by its NFTA_SET_ID too, as nft does.
        const created = sets.get(`${family} ${table} ${name}`);
        if (created !== undefined) lookup.push(u32be(4, created.id));
        if (m.op === '!=') lookup.push(u32be(5, NFT_LOOKUP_F_INV));
        out.push(expr('lookup', lookup));
        continue;
      }
      const prefix = (m.right as { prefix?: { addr?: unknown; len?: unknown } } | null)?.prefix;
      if (concat !== undefined || m.op !== '==' || prefix === undefined || typeof prefix.addr !== 'string')
        return unsupported(e);
      const addr = ipToBytes(prefix.addr);
      const bits = Number(prefix.len);
      if (addr.length !== ops[0]!.len || !Number.isInteger(bits) || bits < 1 || bits > addr.length * 8)
        unsupported(e);
      if (bits % 8 === 0) {
        // A whole-byte prefix: nft loads only those bytes and compares them.
        out.push(trimLoad(m.left, bits / 8), cmpEq(1, addr.subarray(0, bits / 8)));
      } else {
        const mask = Buffer.alloc(addr.length);
        for (let b = 0; b < bits; b++) mask[b >> 3]! |= 0x80 >> (b & 7);
        const masked = Buffer.from(addr.map((x, i) => x & mask[i]!));
        out.push(
          ops[0]!.load(1),
          expr('bitwise', [
            u32be(1, 1),
            u32be(2, 1),
            u32be(3, addr.length),
            value(4, mask),
            value(5, Buffer.alloc(addr.length)),
          ]),
          cmpEq(1, masked),
        );
      }
      continue;
    }
    if (kind === 'masquerade' && arg === null) {
      out.push(expr('masq', []));
      continue;
    }
    const verdict = VERDICT[kind];
    if (verdict === undefined) return unsupported(e);
    const target = (arg as { target?: unknown } | null)?.target;
    if (
      (verdict === -3 || verdict === -4) !== (typeof target === 'string') ||
      (arg !== null && target === undefined)
    )
      unsupported(e);
    const v: Attr[] = [u32be(NFTA_VERDICT.CODE, verdict >>> 0)];
    if (typeof target === 'string') v.push([NFTA_VERDICT.CHAIN, str(target)]);
    out.push(expr('immediate', [u32be(1, 0), nested(2, [nested(NFTA_DATA.VERDICT, v)])]));
  }
  return out;
}

/** The first `bytes` bytes of a payload field (what nft loads for a whole-byte prefix). */
function trimLoad(left: unknown, bytes: number): Attr {
  const p = (left as { payload: { protocol: string; field: string } }).payload;
  const f = FIELDS[`${p.protocol} ${p.field}`]!;
  return payload(1, f.base, f.offset, bytes);
}

function ruleMsg(family: number, familyName: string, o: Record<string, unknown>, sets: NewSets): NftMsg {
  only(o, ['family', 'table', 'chain', 'expr', 'comment'], ['table', 'chain', 'expr']);
  if (!Array.isArray(o.expr)) unsupported(o);
  const attrs: Attr[] = [
    [NFTA_RULE.TABLE, str(String(o.table))],
    [NFTA_RULE.CHAIN, str(String(o.chain))],
    nested(NFTA_RULE.EXPRESSIONS, compileRule(o.expr as unknown[], familyName, String(o.table), sets)),
  ];
  // NFTNL_UDATA_RULE_COMMENT has the same TLV as an element's comment (type 0, length with the NUL).
  if (o.comment !== undefined) attrs.push([NFTA_RULE.USERDATA, commentUdata(String(o.comment))]);
  return { type: NFT_MSG.NEWRULE, family, flags: NLM_F_CREATE | NLM_F_APPEND, attrs };
}

/**
 * The message for one creating command (`add table|chain|set|rule`, `flush chain`), or undefined when the
 * command is not one of these. New sets are recorded in `sets` (for the IDs later messages refer to).
 * Throws NftnlUnsupported for shapes it does not compile.
 */
export function createMsg(cmd: Record<string, unknown>, family: number, sets: NewSets): NftMsg | undefined {
  const [[op, what]] = Object.entries(cmd) as [[string, Record<string, Record<string, unknown>>]];
  if (Object.keys(cmd).length !== 1 || Object.keys(what).length !== 1) return undefined;
  const [[kind, o]] = Object.entries(what) as [[string, Record<string, unknown>]];
  if (op === 'flush' && kind === 'chain') {
    only(o, ['family', 'table', 'name'], ['table', 'name']);
    return {
      type: NFT_MSG.DELRULE,
      family,
      flags: 0,
      attrs: [
        [NFTA_RULE.TABLE, str(String(o.table))],
        [NFTA_RULE.CHAIN, str(String(o.name))],
      ],
    };
  }
  if (op !== 'add') return undefined;
  switch (kind) {
    case 'table':
      only(o, ['family', 'name'], ['name']);
      // nft sends `add table` without NLM_F_CREATE: an existing table is left as it is.
      return {
        type: NFT_MSG.NEWTABLE,
        family,
        flags: 0,
        attrs: [
          [NFTA_TABLE.NAME, str(String(o.name))],
          [NFTA_TABLE_FLAGS, be32(0)],
        ],
      };
    case 'chain':
      return chainMsg(family, o);
    case 'set': {
      const id = sets.size + 1;
      const m = setMsg(family, o, id);
      sets.set(`${String(o.family)} ${String(o.table)} ${String(o.name)}`, { id, info: setInfo(o) });
      return m;
    }
    case 'rule':
      return ruleMsg(family, String(o.family), o, sets);
    default:
      return undefined;
  }
}
