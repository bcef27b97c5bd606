// The bridge's view of nftables: the calls it needs (apply a transaction, list a table or one chain), the
// table name, and the attachment tags carried as element comments.
import { createHash } from 'node:crypto';
import { applyNft, readNftChain, readNftTable, type ListFocus, type NftFamily } from './kernel';
import { withTablesLock } from './lock';

/** One command of libnftables' JSON schema, e.g. `{ add: { element: {...} } }`. */
export type NftCommand = Record<string, unknown>;

/** The objects of a `nft -j list …` answer (metainfo dropped). */
export type NftObject = Record<string, Record<string, unknown>>;

export interface Nft {
  /** Applies the commands as one transaction (all or nothing). */
  apply(cmds: NftCommand[]): Promise<void>;
  /**
   * Lists a table; undefined when it does not exist. With `focus`, only the named sets come with their
   * elements and only the named chains with their rules (one network's part: see ListFocus).
   */
  listTable(family: string, table: string, focus?: ListFocus): Promise<NftObject[] | undefined>;
  /** Lists one chain's rules; undefined when the table or the chain does not exist. */
  listChain(family: string, table: string, chain: string): Promise<NftObject[] | undefined>;
}

/**
 * Runs fn holding the host-wide lock that table setup and table teardown share (lock.ts withTablesLock);
 * a scope carries it so the nft modules need not know where the run dir is.
 */
export type TablesLock = <T>(fn: () => Promise<T>) => Promise<T>;

/**
 * True when the table holds nothing but itself, its base chain and what `own` claims (one network's
 * objects): deleting the whole table then removes nobody else's chain, set or rule (an operator's rule in
 * the base chain keeps the table too).
 */
export function emptyButFor(
  objects: readonly NftObject[],
  baseChain: string,
  own: (o: NftObject) => boolean,
): boolean {
  return objects.every(
    (o) => o.table !== undefined || (o.chain !== undefined && o.chain.name === baseChain) || own(o),
  );
}

/** What removing one network's entries from a table would do, planned from a listing of that table. */
export interface RemovePlan {
  cmds: NftCommand[];
  tags: string[];
  /** Nothing but the removed entries' network would be left: the table itself can go. */
  tableEmpty: boolean;
  /** The network's own chain, sets and rules go too (its last entries): the table may be left empty. */
  networkGone: boolean;
}

/**
 * Applies a removal planned from a listing; when the table would be left empty, deletes the whole table
 * instead, but only under the tables lock and on a fresh listing, because a concurrent setup of another
 * network may have added its chain since the first listing. Returns the tags removed.
 */
export async function removeAndMaybeDropTable(opts: {
  nft: Nft;
  family: string;
  table: string;
  tablesLock: TablesLock;
  /** The part of the table `plan` reads (every chain and set is listed anyway, for `tableEmpty`). */
  focus: ListFocus;
  plan: (objects: readonly NftObject[]) => RemovePlan;
}): Promise<string[]> {
  const { nft, family, table, focus } = opts;
  const objects = await nft.listTable(family, table, focus);
  if (objects === undefined) return [];
  const first = opts.plan(objects);
  // A removal that takes its network's chain and sets out may leave the table empty, also when another
  // network's last removal runs at the same moment (each listing shows the other's objects): both plan again
  // under the tables lock, so the second finds the table empty and deletes it.
  if (!first.tableEmpty && !first.networkGone) {
    await nft.apply(first.cmds);
    return first.tags;
  }
  return opts.tablesLock(async () => {
    const now = await nft.listTable(family, table, focus);
    if (now === undefined) return [];
    const plan = opts.plan(now);
    await nft.apply(plan.tableEmpty ? [{ delete: { table: { family, name: table } } }] : plan.cmds);
    return plan.tags;
  });
}

/**
 * berth's nftables through the kernel room: listings and transactions over netlink in this process (no
 * `nft` process for what berth itself sends); `nft -j` only for what the netlink codec does not express,
 * e.g. a table holding an operator's map (see netlink/nftnl.ts).
 */
export const systemNft: Nft = {
  apply: (cmds) => applyNft(cmds),
  listTable: (family, table, focus) => readNftTable({ family: family as NftFamily, name: table }, {}, focus),
  listChain: (family, table, chain) => readNftChain({ family: family as NftFamily, name: table }, chain),
};

export { DEFAULT_NFT_TABLE, nftTable } from './deps';
export type { ListFocus } from './kernel';

/** nft's comment limit is 128 bytes; a longer tag is shortened the same way at ADD, DEL and GC. */
export function attachmentTag(containerId: string, ifname: string): string {
  const tag = `${containerId}/${ifname}`;
  if (Buffer.byteLength(tag) <= 127) return tag;
  return `${containerId.slice(0, 64)}~${createHash('sha256').update(tag).digest('hex').slice(0, 32)}/${ifname}`;
}

/** An alias or comment berth wrote: `<containerID>/<ifname>` (ifname has no '/'). */
export const TAG_RE = /^.+\/[^/]{1,15}$/;

/** The attachment a tag names; undefined for a shortened one (attachmentTag), which names no container. */
export function attachmentOfTag(tag: string): { containerID: string; ifname: string } | undefined {
  if (/^.{64}~[0-9a-f]{32}\//.test(tag)) return undefined;
  const slash = tag.lastIndexOf('/');
  return { containerID: tag.slice(0, slash), ifname: tag.slice(slash + 1) };
}

/** Set elements as listed: the key value and the attachment comment. */
export interface SetElement {
  val: unknown;
  comment: string | undefined;
}

export function setElements(objects: readonly NftObject[], name: string): SetElement[] | undefined {
  for (const o of objects) {
    const set = o.set;
    if (set !== undefined && set.name === name) {
      const elems = (set.elem as unknown[] | undefined) ?? [];
      return elems.map((e) => {
        if (typeof e === 'object' && e !== null && 'elem' in e) {
          const inner = (e as { elem: { val: unknown; comment?: string } }).elem;
          return { val: inner.val, comment: inner.comment };
        }
        return { val: e, comment: undefined };
      });
    }
  }
  return undefined;
}

/** What the masquerade and spoof-check modules work on for one network of a request. */
export function nftScope(
  where: { nftTable: string; runDir: string },
  network: string,
): { nft: Nft; table: string; network: string; tablesLock: TablesLock } {
  return {
    nft: systemNft,
    table: where.nftTable,
    network,
    tablesLock: (fn) => withTablesLock(where.runDir, fn),
  };
}
