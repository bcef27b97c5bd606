// nftables over netlink from inside the process: reading a table and applying transactions without
// starting `nft`. Node's spawn() forks the whole process (berthd: ~80 MB, ~54 ms per nft child on a busy
// machine); the same work over an nfnetlink socket takes well under a millisecond. Transactions: element
// adds and deletes, deletes of rules, chains, sets and tables, and the creating commands of berth's own
// setup (nftnl-create.ts). What this module cannot express (other expressions and set types: nft's
// compiler) or cannot read (maps, timeouts, other set types) goes through `nft -j` as before, decided
// before anything is sent, so a transaction is always applied whole by one of the two.
import { RawNetlinkSocket } from 'netlink/dist/raw';
import { NetlinkError, fromErrno, toNetlinkError } from './errors';
import { withNetns, type NetnsSpec } from './netns';
import {
  NETLINK_NETFILTER,
  NFPROTO,
  NFTA_CHAIN,
  NFTA_FLOWTABLE,
  NFTA_GEN_ID,
  NFTA_OBJ,
  NFTA_RULE,
  NFTA_SET,
  NFTA_SET_ELEM_LIST,
  NFTA_TABLE,
  NFT_MSG,
  NFT_MSG_NAMES,
  NFT_SET_F,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLM_F_DUMP,
  NftnlUnsupported,
  be64,
  elementAttrs,
  encodeBatch,
  encodeRequest,
  errorOf,
  keyFields,
  msgAttrs,
  parseElements,
  parseMessages,
  parseRule,
  parseSet,
  readBe32,
  readBe64,
  setElemMsg,
  typeName,
  type NftMsg,
  type NlMsg,
  type RuleInfo,
  type SetInfo,
} from './nftnl-codec';
import {
  listTable,
  nftApply,
  type NftCommand,
  type NftObject,
  type NftOptions,
  type TableRef,
} from './nftables';
import { createMsg, type NewSets } from './nftnl-create';
import { readStr, str, type Attr } from './rtnl-codec';

export { NftnlUnsupported } from './nftnl-codec';

/** As for rtnetlink: the kernel answers in microseconds; a lost answer must not hold a lock forever. */
const REQUEST_TIMEOUT_MS = 10_000;
/** NLM_F_DUMP_INTR: the dump crossed a change; the listing is retried like a generation change. */
const NLM_F_DUMP_INTR = 0x10;

class Retry extends Error {}

/**
 * Listings of one table before giving up while the ruleset keeps changing under them. A listing is a dozen
 * round trips (~1-2 ms); with two networks' pods coming and going at once (concurrency.root.test's storms,
 * hundreds of transactions a second) five in a row could all be crossed by a commit.
 */
const LIST_ATTEMPTS = 30;

/**
 * One nfnetlink socket in one namespace; one exchange at a time (one caller at a time: withNfnl). Answers
 * are matched by sequence number, so a socket can serve one caller after another.
 */
class NfnlSocket {
  private seq = (Date.now() & 0x3fffffff) + 1;
  private current: { onMessage: (m: NlMsg) => void; fail: (err: Error) => void } | undefined;
  /** A socket error or a lost answer: the socket is not handed to another caller. */
  failed = false;

  constructor(
    private readonly raw: RawNetlinkSocket,
    private readonly timeoutMs: number,
  ) {
    raw.on('message', (buf: Buffer) => {
      for (const m of parseMessages(buf)) this.current?.onMessage(m);
    });
    // Without a listener an 'error' event is thrown: in berthd, an uncaught exception ending every call.
    raw.on('error', (err: Error) => {
      this.failed = true;
      this.current?.fail(err);
    });
  }

  close(): void {
    this.raw.close();
  }

  /** An idle socket must not keep a process's event loop alive (the standalone plugin exits when done). */
  ref(held: boolean): void {
    if (held) this.raw.ref();
    else this.raw.unref();
  }

  /** Sends `buf` and feeds the answers to `handle` until it calls done (or throws). */
  private exchange<T>(buf: Buffer, handle: (m: NlMsg, done: (v: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.failed = true;
        finish(() => reject(fromErrno(110, 'nfnetlink', `no answer within ${this.timeoutMs} ms`)));
      }, this.timeoutMs);
      const finish = (settle: () => void) => {
        clearTimeout(timer);
        this.current = undefined;
        settle();
      };
      this.current = {
        onMessage: (m) => {
          try {
            handle(m, (v) => finish(() => resolve(v)));
          } catch (err) {
            finish(() => reject(err));
          }
        },
        fail: (err) => finish(() => reject(toNetlinkError(err, 'nfnetlink'))),
      };
      this.raw.send(buf, {}, (err) => {
        if (err) {
          this.failed = true;
          this.current?.fail(err);
        }
      });
    });
  }

  private nextSeq(n: number): number {
    const s = this.seq;
    this.seq = ((this.seq + n) & 0x3fffffff) + 1;
    return s;
  }

  /** A GET: the one answer, or its error as a NetlinkError. */
  get(m: NftMsg, object: string): Promise<NlMsg> {
    const seq = this.nextSeq(1);
    return this.exchange(encodeRequest(m, seq), (a, done) => {
      if (a.seq !== seq) return;
      if (a.type === NLMSG_ERROR && errorOf(a) !== 0) throw fromErrno(errorOf(a), NFT_MSG_LABEL(m), object);
      if (a.type !== NLMSG_ERROR) done(a);
    });
  }

  /**
   * A dump: every answer up to NLMSG_DONE. An interrupted one is still read to its end before Retry is
   * thrown: the kernel refuses a new dump on a socket whose dump is unfinished (EBUSY), and the socket
   * serves the retry and later callers.
   */
  dump(m: NftMsg, object: string): Promise<NlMsg[]> {
    const seq = this.nextSeq(1);
    const out: NlMsg[] = [];
    let interrupted = false;
    return this.exchange(encodeRequest({ ...m, flags: m.flags | NLM_F_DUMP }, seq), (a, done) => {
      if (a.seq !== seq) return;
      if ((a.flags & NLM_F_DUMP_INTR) !== 0) interrupted = true;
      if (a.type === NLMSG_ERROR) {
        if (errorOf(a) !== 0) throw fromErrno(errorOf(a), NFT_MSG_LABEL(m), object);
        return;
      }
      if (a.type !== NLMSG_DONE) out.push(a);
      else if (interrupted) throw new Retry('dump interrupted');
      // A dump that failed on the way ends with its errno in NLMSG_DONE: what came before is not the whole.
      else if (doneErrno(a) !== 0) throw fromErrno(doneErrno(a), NFT_MSG_LABEL(m), object);
      else done(out);
    });
  }

  /** The ruleset generation (NFT_MSG_GETGEN): changes with every committed transaction. */
  async genId(): Promise<number> {
    const a = await this.get({ type: NFT_MSG.GETGEN, family: 0, flags: 0, attrs: [] }, 'generation');
    return readBe32(msgAttrs(a).get(NFTA_GEN_ID)) ?? 0;
  }

  /**
   * One transaction (see encodeBatch): a failed message answers with its error, the last message in any case
   * (ACK or error), after all the others; an error on the batch's own header (a failed commit) comes first
   * and fails it as a whole. Resolves with the index and errno of the first failed message, or undefined.
   */
  batch(msgs: readonly NftMsg[]): Promise<{ index: number; errno: number } | undefined> {
    const first = this.nextSeq(msgs.length + 2);
    const last = first + msgs.length + 1;
    const errors: Array<{ index: number; errno: number }> = [];
    return this.exchange(encodeBatch(msgs, first), (a, done) => {
      if (a.seq < first || a.seq > last || a.type !== NLMSG_ERROR) return;
      const errno = errorOf(a);
      if (a.seq === first || a.seq === last) {
        if (errno !== 0) done({ index: -1, errno });
        return;
      }
      if (errno !== 0) errors.push({ index: a.seq - first - 1, errno });
      if (a.seq === last - 1) done(errors.sort((x, y) => x.index - y.index)[0]);
    });
  }
}

const NFT_MSG_LABEL = (m: NftMsg): string => NFT_MSG_NAMES[m.type] ?? `NFT_MSG ${m.type}`;

/** NLMSG_DONE's errno (0 when the dump ended well, or when an old kernel sent no payload). */
const doneErrno = (m: NlMsg): number => (m.body.length >= 4 ? m.body.readInt32LE(0) : 0);

/**
 * Sockets of the process's own namespace kept open between callers, at most `max` idle. Closing an nfnetlink
 * socket makes the kernel first finish destroying what earlier transactions deleted, an RCU grace period
 * (close(2) took 10-14 ms after a DEL's element removal here): in berthd, that stopped the event loop once
 * per DEL with masquerade or spoof check. A socket that failed is closed instead of kept.
 */
export class IdleSockets<S extends { failed: boolean; close(): void; ref(held: boolean): void }> {
  private readonly idle: S[] = [];

  constructor(private readonly max: number) {}

  /** An idle socket, held for the caller, or undefined when none is left. */
  take(): S | undefined {
    for (let s = this.idle.pop(); s !== undefined; s = this.idle.pop()) {
      // A socket error while idle (the library closes the socket on some) marks it failed.
      if (!s.failed) {
        try {
          s.ref(true);
          return s;
        } catch {
          s.failed = true;
        }
      }
      try {
        s.close();
      } catch {
        // closed already
      }
    }
    return undefined;
  }

  /** The caller is done with `s`: kept for the next one unless it failed or enough are kept already. */
  give(s: S): void {
    if (s.failed || this.idle.length >= this.max) {
      s.close();
      return;
    }
    s.ref(false);
    this.idle.push(s);
  }

  get size(): number {
    return this.idle.length;
  }
}

/** Idle sockets in berth's own namespace: as many as calls that ran at once in berthd, within reason. */
const ownNamespaceSockets = new IdleSockets<NfnlSocket>(4);

async function withNfnl<T>(netns: NetnsSpec | undefined, fn: (s: NfnlSocket) => Promise<T>): Promise<T> {
  const create = () => new RawNetlinkSocket(NETLINK_NETFILTER);
  const pooled = netns === undefined;
  let s = pooled ? ownNamespaceSockets.take() : undefined;
  if (s === undefined) {
    let raw: RawNetlinkSocket;
    try {
      raw = netns === undefined ? create() : withNetns(netns, create);
    } catch (err) {
      throw toNetlinkError(err, 'nfnetlink socket');
    }
    s = new NfnlSocket(raw, REQUEST_TIMEOUT_MS);
  }
  try {
    return await fn(s);
  } finally {
    if (pooled) ownNamespaceSockets.give(s);
    else s.close();
  }
}

function familyNumber(family: string): number {
  const n = NFPROTO[family];
  if (n === undefined) throw new NftnlUnsupported(`family ${family}`);
  return n;
}

// --- reading a table ---------------------------------------------------------------------------------

/**
 * A table as `nft -j list table` gives it, reduced to what berth's plans read: the table; chains (name,
 * handle); named sets (name, type, flags, elements with their comments); rules (chain, handle, and the
 * expressions berth looks for, see RuleInfo); stateful objects and flowtables by name. With `focus`, only
 * the sets and chains it names come with elements and rules. Undefined when the table does not exist. Read
 * between two equal ruleset generations (as nft does), else read again. Throws NftnlUnsupported (nothing
 * else done) for a set it cannot read among those it reads: nft lists those.
 */
export async function nfnlListTable(
  t: TableRef,
  opts: NftOptions = {},
  focus?: ListFocus,
): Promise<NftObject[] | undefined> {
  const family = familyNumber(t.family);
  return withNfnl(opts.netns, async (s) => {
    for (let attempt = 1; ; attempt++) {
      const gen = await s.genId();
      let objects: NftObject[] | undefined;
      try {
        objects = await readTable(s, t, family, focus);
      } catch (err) {
        // An interrupted dump or a set gone under the listing (Retry), or a failure after which the
        // generation moved (another network's teardown committed in between): read again, as nft does.
        const again = err instanceof Retry || (await s.genId()) !== gen;
        if (!again) throw err;
        if (attempt >= LIST_ATTEMPTS)
          throw fromErrno(
            11,
            'nft list',
            `${t.family} ${t.name}: the ruleset changed under ${attempt} listings`,
          );
        continue;
      }
      if ((await s.genId()) === gen || attempt >= LIST_ATTEMPTS) return objects;
    }
  });
}

/**
 * What of a table a caller reads: every chain and set is listed, but only these sets with their elements and
 * only these chains' rules. One network's ADD, DEL or CHECK then costs the same however many other networks
 * and pods the table holds (each set's elements are a dump of their own, each rule's expressions decoded).
 */
export interface ListFocus {
  sets: readonly string[];
  chains: readonly string[];
}

async function readTable(
  s: NfnlSocket,
  t: TableRef,
  family: number,
  focus: ListFocus | undefined,
): Promise<NftObject[] | undefined> {
  const where = `${t.family} ${t.name}`;
  const tableAttr = (type: number) => [[type, str(t.name)]] as const;
  let table: NlMsg;
  try {
    table = await s.get(
      { type: NFT_MSG.GETTABLE, family, flags: 0, attrs: tableAttr(NFTA_TABLE.NAME) },
      where,
    );
  } catch (err) {
    if (err instanceof NetlinkError && err.code === 'ENOENT') return undefined;
    throw err;
  }
  const base = { family: t.family, table: t.name };
  const objects: NftObject[] = [
    { table: { family: t.family, name: t.name, handle: readBe64(msgAttrs(table).get(NFTA_TABLE.HANDLE)) } },
  ];
  const mine = (m: NlMsg, attr: number) => readStr(msgAttrs(m).get(attr)) === t.name;
  const dump = async (type: number, attr: number) =>
    (await s.dump({ type, family, flags: 0, attrs: tableAttr(attr) }, where)).filter((m) => mine(m, attr));

  for (const m of await dump(NFT_MSG.GETCHAIN, NFTA_CHAIN.TABLE)) {
    const a = msgAttrs(m);
    objects.push({
      chain: {
        ...base,
        name: readStr(a.get(NFTA_CHAIN.NAME)) ?? '',
        handle: readBe64(a.get(NFTA_CHAIN.HANDLE)),
      },
    });
  }
  for (const m of await dump(NFT_MSG.GETSET, NFTA_SET.TABLE)) {
    const set = parseSet(m);
    // Anonymous sets belong to the rules that use them; nft does not list them either.
    if ((set.flags & NFT_SET_F.ANONYMOUS) !== 0) continue;
    const read = focus === undefined || focus.sets.includes(set.name);
    objects.push({ set: read ? await readSet(s, t, family, set) : setObject(t, set, undefined) });
  }
  for (const m of await dump(NFT_MSG.GETRULE, NFTA_RULE.TABLE)) {
    if (focus !== undefined && !focus.chains.includes(readStr(msgAttrs(m).get(NFTA_RULE.CHAIN)) ?? ''))
      continue;
    objects.push(ruleObject(t, parseRule(m)));
  }
  // Stateful objects and flowtables only count as "something else in the table" (nft names objects by
  // their type, e.g. `counter`; berth only needs to know they are there).
  for (const m of await dump(NFT_MSG.GETOBJ, NFTA_OBJ.TABLE))
    objects.push({ obj: { ...base, name: readStr(msgAttrs(m).get(NFTA_OBJ.NAME)) ?? '' } });
  for (const m of await dump(NFT_MSG.GETFLOWTABLE, NFTA_FLOWTABLE.TABLE))
    objects.push({ flowtable: { ...base, name: readStr(msgAttrs(m).get(NFTA_FLOWTABLE.NAME)) ?? '' } });
  return objects;
}

/** A rule as `nft -j list` gives it (expressions reduced, see RuleInfo). */
function ruleObject(t: TableRef, r: RuleInfo): NftObject {
  const comment = r.comment !== undefined ? { comment: r.comment } : {};
  return {
    rule: { family: t.family, table: t.name, chain: r.chain, handle: r.handle, expr: r.expr, ...comment },
  };
}

/**
 * One chain's rules, as `nft -j list chain` gives them (handle, reduced expressions, comment); undefined when
 * the table or the chain does not exist. A GET and a dump the kernel filters by chain: a table berth does not
 * own (iptables-nft's `ip nat`, with kube-proxy's thousands of rules) is not read whole for one chain.
 */
export async function nfnlListChain(
  t: TableRef,
  chain: string,
  opts: NftOptions = {},
): Promise<NftObject[] | undefined> {
  const family = familyNumber(t.family);
  const where = `${t.family} ${t.name} ${chain}`;
  const names = (table: number, name: number): Attr[] => [
    [table, str(t.name)],
    [name, str(chain)],
  ];
  return withNfnl(opts.netns, async (s) => {
    for (let attempt = 1; ; attempt++) {
      try {
        await s.get(
          { type: NFT_MSG.GETCHAIN, family, flags: 0, attrs: names(NFTA_CHAIN.TABLE, NFTA_CHAIN.NAME) },
          where,
        );
      } catch (err) {
        if (err instanceof NetlinkError && err.code === 'ENOENT') return undefined;
        throw err;
      }
      let answers: NlMsg[];
      try {
        answers = await s.dump(
          { type: NFT_MSG.GETRULE, family, flags: 0, attrs: names(NFTA_RULE.TABLE, NFTA_RULE.CHAIN) },
          where,
        );
      } catch (err) {
        if (err instanceof Retry && attempt < LIST_ATTEMPTS) continue;
        throw err;
      }
      return answers
        .map(parseRule)
        .filter((r) => r.table === t.name && r.chain === chain)
        .map((r) => ruleObject(t, r));
    }
  });
}

async function readSet(
  s: NfnlSocket,
  t: TableRef,
  family: number,
  set: SetInfo,
): Promise<Record<string, unknown>> {
  keyFields(set); // NftnlUnsupported for what we cannot read
  let answers: NlMsg[];
  try {
    answers = await s.dump(
      {
        type: NFT_MSG.GETSETELEM,
        family,
        flags: 0,
        attrs: [
          [NFTA_SET_ELEM_LIST.TABLE, str(t.name)],
          [NFTA_SET_ELEM_LIST.SET, str(set.name)],
        ],
      },
      `${t.family} ${t.name} ${set.name}`,
    );
  } catch (err) {
    // Listed by the set dump, gone for its elements (another network's teardown): read the table again.
    // Not always seen as a new generation: a commit bumps the generation before it unlinks what it deletes,
    // so the generation read at the start of this listing can already be the one without the set.
    if (err instanceof NetlinkError && err.code === 'ENOENT') throw new Retry(`set ${set.name} gone`);
    throw err;
  }
  const elem = answers
    .flatMap((m) => parseElements(set, m))
    .map((e) => (e.comment !== undefined ? { elem: { val: e.val, comment: e.comment } } : e.val));
  return setObject(t, set, elem);
}

/**
 * A set as `nft -j list` gives it; `elem` undefined for one outside a listing's focus (read neither its
 * elements nor its type: it may be a set this module cannot decode, an operator's, which is no reason to
 * list the table through `nft`).
 */
function setObject(t: TableRef, set: SetInfo, elem: unknown[] | undefined): Record<string, unknown> {
  const flags = (set.flags & NFT_SET_F.INTERVAL) !== 0 ? { flags: ['interval'] } : {};
  return {
    family: t.family,
    name: set.name,
    table: t.name,
    ...(elem !== undefined ? { type: typeName(set) } : {}),
    handle: set.handle,
    ...flags,
    ...(elem !== undefined && elem.length > 0 ? { elem } : {}),
  };
}

// --- applying a transaction ----------------------------------------------------------------------------

interface ElementCmd {
  op: 'add' | 'create' | 'delete';
  family: string;
  table: string;
  name: string;
  elem: unknown[];
}

function asElementCmd(cmd: NftCommand): ElementCmd | undefined {
  for (const op of ['add', 'create', 'delete'] as const) {
    const e = (cmd[op] as { element?: Omit<ElementCmd, 'op'> } | undefined)?.element;
    if (e !== undefined && Object.keys(cmd).length === 1) return { op, ...e };
  }
  return undefined;
}

const keysAre = (o: object, keys: string[]): boolean =>
  Object.keys(o).every((k) => keys.includes(k)) && keys.every((k) => k in o);

const s = (v: unknown) => str(String(v));
/** The deletes berth sends: the JSON keys each must have (no more), and the message. */
const DELETES: Record<
  string,
  { keys: string[]; type: number; attrs: (o: Record<string, unknown>) => Attr[] }
> = {
  rule: {
    keys: ['family', 'table', 'chain', 'handle'],
    type: NFT_MSG.DELRULE,
    attrs: (o) => [
      [NFTA_RULE.TABLE, s(o.table)],
      [NFTA_RULE.CHAIN, s(o.chain)],
      [NFTA_RULE.HANDLE, be64(o.handle as number)],
    ],
  },
  chain: {
    keys: ['family', 'table', 'name'],
    type: NFT_MSG.DELCHAIN,
    attrs: (o) => [
      [NFTA_CHAIN.TABLE, s(o.table)],
      [NFTA_CHAIN.NAME, s(o.name)],
    ],
  },
  set: {
    keys: ['family', 'table', 'name'],
    type: NFT_MSG.DELSET,
    attrs: (o) => [
      [NFTA_SET.TABLE, s(o.table)],
      [NFTA_SET.NAME, s(o.name)],
    ],
  },
  table: { keys: ['family', 'name'], type: NFT_MSG.DELTABLE, attrs: (o) => [[NFTA_TABLE.NAME, s(o.name)]] },
};

/** A delete of a rule (by handle), chain, set or table, as one message; undefined for anything else. */
function deleteMsg(cmd: NftCommand): NftMsg | undefined {
  const d = cmd.delete as Record<string, Record<string, unknown>> | undefined;
  if (d === undefined || Object.keys(cmd).length !== 1 || Object.keys(d).length !== 1) return undefined;
  const [[kind, o]] = Object.entries(d) as [[string, Record<string, unknown>]];
  const spec = DELETES[kind];
  if (spec === undefined || !keysAre(o, spec.keys)) return undefined;
  if (kind === 'rule' && !Number.isInteger(o.handle)) return undefined;
  return { type: spec.type, family: familyNumber(String(o.family)), flags: 0, attrs: spec.attrs(o) };
}

/** The family number a command names (NftnlUnsupported for one nft knows and we do not). */
function familyOf(cmd: NftCommand): number {
  const what = Object.values(cmd)[0] as Record<string, { family?: unknown }> | undefined;
  return familyNumber(String(Object.values(what ?? {})[0]?.family));
}

function describe(cmd: NftCommand): string {
  const [op, what] = Object.entries(cmd)[0] ?? ['?', {}];
  const [kind, o] = Object.entries(what as Record<string, Record<string, unknown>>)[0] ?? ['?', {}];
  const name = [
    o.family,
    o.table,
    o.chain,
    o.name,
    o.handle !== undefined ? `handle ${String(o.handle)}` : undefined,
  ]
    .filter((x) => x !== undefined)
    .join(' ');
  return `${op} ${kind} ${name}`;
}

/**
 * Applies `commands` as one nf_tables transaction over netlink: element adds and deletes (nft's
 * `add element` semantics: an element already there is kept, comment and all; `create element` fails on
 * one, EEXIST), deletes of rules by
 * handle, chains, sets and tables, and what createMsg compiles (add table/chain/set/rule, flush chain).
 * Throws NftnlUnsupported, before anything is sent, for any other command or a set it cannot encode. Errors: NetlinkError op 'nft' with the kernel's errno name of the
 * first failing command (`ENOENT` for a missing table, set, chain or element, …) and that command in the
 * message, as nftApply reports them.
 */
export async function nfnlApply(commands: readonly NftCommand[], opts: NftOptions = {}): Promise<void> {
  if (commands.length === 0) return;
  // Everything but the elements of existing sets is compiled before the socket is opened.
  const created: NewSets = new Map();
  const parsed = commands.map((c) => {
    const p = asElementCmd(c) ?? deleteMsg(c) ?? createMsg(c, familyOf(c), created);
    if (p === undefined) throw new NftnlUnsupported(describe(c));
    return p;
  });
  await withNfnl(opts.netns, async (s) => {
    const sets = new Map<string, SetInfo>();
    const msgs: NftMsg[] = [];
    for (const [i, p] of parsed.entries()) {
      if (!('op' in p)) {
        msgs.push(p);
        continue;
      }
      const family = familyNumber(p.family);
      const key = `${p.family} ${p.table} ${p.name}`;
      const made = created.get(key);
      let set = made?.info ?? sets.get(key);
      if (set === undefined) {
        const get = {
          type: NFT_MSG.GETSET,
          family,
          flags: 0,
          attrs: [
            [NFTA_SET.TABLE, str(p.table)],
            [NFTA_SET.NAME, str(p.name)],
          ],
        } as const;
        try {
          set = parseSet(await s.get(get, key));
        } catch (err) {
          throw failed(err, commands[i], commands.length);
        }
        sets.set(key, set);
      }
      const known = set;
      const elems = (Array.isArray(p.elem) ? p.elem : []).map((e) => {
        const inner = (e as { elem?: { val: unknown; comment?: unknown } } | null)?.elem;
        if (typeof e === 'object' && e !== null && inner !== undefined) {
          if (!keysAre(inner, 'comment' in inner ? ['val', 'comment'] : ['val']))
            throw new NftnlUnsupported(describe(commands[i]!));
          return elementAttrs(
            known,
            inner.val,
            p.op !== 'delete' && typeof inner.comment === 'string' ? inner.comment : undefined,
          );
        }
        return elementAttrs(known, e, undefined);
      });
      msgs.push(setElemMsg(p.op, family, p.table, p.name, elems, made?.id));
    }
    const error = await s.batch(msgs);
    if (error !== undefined) {
      const cmd = error.index >= 0 ? commands[error.index]! : undefined;
      throw failed(fromErrno(error.errno, 'nft'), cmd, commands.length);
    }
  });
}

function failed(err: unknown, cmd: NftCommand | undefined, n: number): NetlinkError {
  const e = toNetlinkError(err, 'nft');
  const what = cmd !== undefined ? describe(cmd) : 'batch';
  return new NetlinkError({
    code: e.code,
    errno: e.errno,
    op: 'nft',
    object: what,
    message: `nft apply (${n} commands): ${what}: ${e.code}`,
    cause: err,
  });
}

// --- the entry points: netlink where it can, `nft -j` where it cannot -----------------------------------

/** listTable over netlink; through `nft -j list` when the table holds a set this module cannot read. */
export async function readNftTable(
  t: TableRef,
  opts: NftOptions = {},
  focus?: ListFocus,
): Promise<NftObject[] | undefined> {
  try {
    return await nfnlListTable(t, opts, focus);
  } catch (err) {
    if (err instanceof NftnlUnsupported) return listTable(t, opts);
    throw err;
  }
}

/** nftApply over netlink when every command can go that way (see nfnlApply), else through `nft -j`. */
export async function applyNft(commands: readonly NftCommand[], opts: NftOptions = {}): Promise<void> {
  try {
    await nfnlApply(commands, opts);
  } catch (err) {
    if (err instanceof NftnlUnsupported) return nftApply(commands, opts);
    throw err;
  }
}
