// Source NAT for container addresses through nftables: one table for berth, per network two named sets
// (container addresses, and address·own-subnet pairs) so that ADD and DEL are element changes, each
// element tagged with its attachment so DEL and GC find it without the prevResult.
import { netlinkCode } from './kernel';
import { networkKey } from './lock';
import {
  attachmentTag,
  emptyButFor,
  removeAndMaybeDropTable,
  setElements,
  type Nft,
  type NftCommand,
  type NftObject,
  type ListFocus,
  type RemovePlan,
  type TablesLock,
} from './nft';

export interface MasqAddress {
  /** Container address, no prefix. */
  ip: string;
  family: 4 | 6;
  /** Network address of the container's own subnet and its prefix length. */
  subnet: string;
  prefixLen: number;
}

export interface MasqScope {
  nft: Nft;
  table: string;
  network: string;
  /** Held around table setup and teardown (see addMasquerade). */
  tablesLock: TablesLock;
}

const FAMILY = 'inet';

export function masqNames(network: string): {
  chain: string;
  c4: string;
  c6: string;
  s4: string;
  s6: string;
} {
  const h = networkKey(network);
  return { chain: `masq_${h}`, c4: `c4_${h}`, c6: `c6_${h}`, s4: `s4_${h}`, s6: `s6_${h}` };
}

/** What of the table one network's masquerade reads: its sets' elements, its chain and the jumps to it. */
function masqFocus(network: string): ListFocus {
  const n = masqNames(network);
  return { sets: [n.c4, n.c6, n.s4, n.s6], chains: ['postrouting', n.chain] };
}

function jumpComment(network: string): string {
  return `berth masquerade: ${network}`.slice(0, 127);
}

const payload = (protocol: string, field: string) => ({ payload: { protocol, field } });
const match = (op: string, left: unknown, right: unknown) => ({ match: { op, left, right } });

/** Everything a network needs besides its elements; `add` of table/chain/set is idempotent in nft. */
function setupCommands(scope: MasqScope, withJumps: boolean): NftCommand[] {
  const t = { family: FAMILY, table: scope.table };
  const n = masqNames(scope.network);
  const rule = (chain: string, expr: unknown[], comment?: string): NftCommand => ({
    add: { rule: { ...t, chain, expr, ...(comment !== undefined ? { comment } : {}) } },
  });
  const cmds: NftCommand[] = [
    { add: { table: { family: FAMILY, name: scope.table } } },
    {
      add: {
        chain: { ...t, name: 'postrouting', type: 'nat', hook: 'postrouting', prio: 100, policy: 'accept' },
      },
    },
    { add: { set: { ...t, name: n.c4, type: 'ipv4_addr' } } },
    { add: { set: { ...t, name: n.c6, type: 'ipv6_addr' } } },
    { add: { set: { ...t, name: n.s4, type: ['ipv4_addr', 'ipv4_addr'], flags: ['interval'] } } },
    { add: { set: { ...t, name: n.s6, type: ['ipv6_addr', 'ipv6_addr'], flags: ['interval'] } } },
    { add: { chain: { ...t, name: n.chain } } },
    // Rewriting only this network's chain keeps the setup idempotent without touching other networks.
    { flush: { chain: { ...t, name: n.chain } } },
    rule(n.chain, [
      match('==', payload('ip', 'daddr'), { prefix: { addr: '224.0.0.0', len: 4 } }),
      { return: null },
    ]),
    rule(n.chain, [
      match('==', payload('ip6', 'daddr'), { prefix: { addr: 'ff00::', len: 8 } }),
      { return: null },
    ]),
    rule(n.chain, [
      match('==', { concat: [payload('ip', 'saddr'), payload('ip', 'daddr')] }, `@${n.s4}`),
      { return: null },
    ]),
    rule(n.chain, [
      match('==', { concat: [payload('ip6', 'saddr'), payload('ip6', 'daddr')] }, `@${n.s6}`),
      { return: null },
    ]),
    rule(n.chain, [{ masquerade: null }]),
  ];
  if (withJumps) {
    cmds.push(
      rule(
        'postrouting',
        [match('==', payload('ip', 'saddr'), `@${n.c4}`), { jump: { target: n.chain } }],
        jumpComment(scope.network),
      ),
      rule(
        'postrouting',
        [match('==', payload('ip6', 'saddr'), `@${n.c6}`), { jump: { target: n.chain } }],
        jumpComment(scope.network),
      ),
    );
  }
  return cmds;
}

/** Handles of this network's jump rules in postrouting. */
function jumpHandles(objects: readonly NftObject[], network: string): number[] {
  return jumpsOf(objects, network).map((j) => j.handle);
}

/** A jump rule of a network in postrouting, with the family whose source set it matches. */
interface Jump {
  handle: number;
  family?: 4 | 6;
}

/** This network's jump rules in postrouting. */
function jumpsOf(objects: readonly NftObject[], network: string): Jump[] {
  const n = masqNames(network);
  const out: Jump[] = [];
  for (const o of objects) {
    const r = o.rule;
    if (r === undefined || r.chain !== 'postrouting') continue;
    const text = JSON.stringify(r.expr ?? []);
    if (!text.includes(`"jump":{"target":"${n.chain}"}`)) continue;
    const family = text.includes(`"@${n.c4}"`) ? 4 : text.includes(`"@${n.c6}"`) ? 6 : undefined;
    out.push({ handle: r.handle as number, ...(family !== undefined ? { family } : {}) });
  }
  return out;
}

/** The rules setupCommands puts in a network's chain (multicast ×2, in-pool ×2, masquerade). */
const CHAIN_RULES = 5;

/**
 * How much of a network's masquerade is in place: its chain with all its rules, and the jumps of each
 * family (`exact`: one each, as setup makes them; else at least one each, which is what traffic needs).
 */
function masqueradeWhole(
  objects: readonly NftObject[],
  network: string,
  jumps: readonly Jump[],
  exact: boolean,
): boolean {
  const n = masqNames(network);
  const rules = objects.filter((o) => o.rule !== undefined && o.rule.chain === n.chain).length;
  return hasChain(objects, n.chain) && rules === CHAIN_RULES && jumpsInPlace(jumps, exact);
}

function jumpsInPlace(jumps: readonly Jump[], exact: boolean): boolean {
  const per = (f: 4 | 6): number => jumps.filter((j) => j.family === f).length;
  return exact ? jumps.length === 2 && per(4) === 1 && per(6) === 1 : per(4) >= 1 && per(6) >= 1;
}

function hasChain(objects: readonly NftObject[], name: string): boolean {
  return objects.some((o) => o.chain !== undefined && o.chain.name === name);
}

function elementCommands(
  scope: MasqScope,
  op: 'add' | 'create' | 'delete',
  addrs: readonly MasqAddress[],
  tag: string,
): NftCommand[] {
  const n = masqNames(scope.network);
  const cmds: NftCommand[] = [];
  for (const a of addrs) {
    const [cset, sset] = a.family === 4 ? [n.c4, n.s4] : [n.c6, n.s6];
    const base = { family: FAMILY, table: scope.table };
    cmds.push({ [op]: { element: { ...base, name: cset, elem: [{ elem: { val: a.ip, comment: tag } }] } } });
    cmds.push({
      [op]: {
        element: {
          ...base,
          name: sset,
          elem: [
            {
              elem: {
                val: { concat: [a.ip, { prefix: { addr: a.subnet, len: a.prefixLen } }] },
                comment: tag,
              },
            },
          ],
        },
      },
    });
  }
  return cmds;
}

/**
 * Makes sure the network's chain, sets and jumps exist (caller holds the network lock), then adds the
 * attachment's elements, all in one transaction.
 */
export async function addMasquerade(
  scope: MasqScope,
  attachment: { containerId: string; ifname: string },
  addrs: readonly MasqAddress[],
): Promise<void> {
  const tag = attachmentTag(attachment.containerId, attachment.ifname);
  const focus = masqFocus(scope.network);
  // Most ADDs: the network's chain, sets and jumps are in place and no element holds the pod's addresses.
  // Then the elements go in with `create`, read from a listing without any element (a network's sets hold
  // all its pods: reading them made each ADD's cost grow with the node's pods); an element already there
  // (a repeated ADD, a stale one of an address reused) fails it whole, and the plan below reads them.
  // Ready: this network's chain and sets are in the table. Only holders of this network's lock (we hold it)
  // remove them, and a teardown deletes the table only when it finds no other network's objects in it
  // (listed inside the tables lock), so the table stays until our elements are in: no tables lock needed.
  const bare = (await scope.nft.listTable(FAMILY, scope.table, { ...focus, sets: [] })) ?? [];
  if (masqueradeReady(bare, scope.network)) {
    try {
      return await scope.nft.apply(elementCommands(scope, 'create', addrs, tag));
    } catch (err) {
      if (netlinkCode(err) !== 'EEXIST') throw err;
    }
    const withElements = addPlan(
      scope,
      (await scope.nft.listTable(FAMILY, scope.table, focus)) ?? [],
      addrs,
      tag,
    );
    if (withElements.ready) return scope.nft.apply(withElements.cmds);
  }
  // Setup (the network's first ADD, or its objects changed by hand): a teardown could have listed the table
  // before our setup and delete it after; under the tables lock and with a fresh listing, setup and teardown
  // are ordered.
  return scope.tablesLock(async () =>
    scope.nft.apply(
      addPlan(scope, (await scope.nft.listTable(FAMILY, scope.table, focus)) ?? [], addrs, tag).cmds,
    ),
  );
}

/** The network's chain with its rules, one jump per family and its four sets are in the table. */
function masqueradeReady(objects: readonly NftObject[], network: string): boolean {
  const n = masqNames(network);
  return (
    masqueradeWhole(objects, network, jumpsOf(objects, network), true) &&
    [n.c4, n.c6, n.s4, n.s6].every((s) => setElements(objects, s) !== undefined)
  );
}

function addPlan(
  scope: MasqScope,
  objects: readonly NftObject[],
  addrs: readonly MasqAddress[],
  tag: string,
): { ready: boolean; cmds: NftCommand[] } {
  const n = masqNames(scope.network);
  const jumps = jumpsOf(objects, scope.network);
  const ready = masqueradeReady(objects, scope.network);
  // The setup refills the chain (flushed first); the jumps are added with it when there are none.
  const cmds = ready ? [] : setupCommands(scope, jumps.length === 0);
  if (!ready && jumps.length > 0 && !jumpsInPlace(jumps, true)) {
    // Jumps that are not one per family (one deleted, or the ruleset loaded twice): rebuild both.
    for (const j of jumps)
      cmds.push({
        delete: { rule: { family: FAMILY, table: scope.table, chain: 'postrouting', handle: j.handle } },
      });
    cmds.push(...setupCommands(scope, true).slice(-2));
  }
  // An address can come back (IPAM reuses it) while a stale element from an attachment whose DEL never
  // completed still holds it; `add` would keep the old tag, so replace such elements.
  for (const a of addrs) {
    const [cset, sset] = a.family === 4 ? [n.c4, n.s4] : [n.c6, n.s6];
    for (const e of setElements(objects, cset) ?? []) {
      if (e.val === a.ip && e.comment !== tag)
        cmds.push({ delete: { element: { family: FAMILY, table: scope.table, name: cset, elem: [e.val] } } });
    }
    for (const e of setElements(objects, sset) ?? []) {
      const key = (e.val as { concat?: unknown[] }).concat?.[0];
      if (key === a.ip && e.comment !== tag)
        cmds.push({ delete: { element: { family: FAMILY, table: scope.table, name: sset, elem: [e.val] } } });
    }
  }
  cmds.push(...elementCommands(scope, 'add', addrs, tag));
  return { ready, cmds };
}

/** Elements of the network whose tag is in `tags` (or, with `keep`, whose tag is not in it). */
function taggedElements(
  objects: readonly NftObject[],
  network: string,
  pick: (tag: string | undefined) => boolean,
): { set: string; val: unknown; tag: string | undefined }[] {
  const n = masqNames(network);
  const found: { set: string; val: unknown; tag: string | undefined }[] = [];
  for (const set of [n.c4, n.c6, n.s4, n.s6]) {
    for (const e of setElements(objects, set) ?? [])
      if (pick(e.comment)) found.push({ set, val: e.val, tag: e.comment });
  }
  return found;
}

/**
 * Removes the elements whose attachment tag `pick` selects; when the network has no element left, removes
 * its chain, sets and jumps too, and the whole table when nothing else is left in it. Returns the tags
 * removed. Caller holds the network lock.
 */
export async function removeMasquerade(
  scope: MasqScope,
  pick: (tag: string | undefined) => boolean,
): Promise<string[]> {
  return removeAndMaybeDropTable({
    nft: scope.nft,
    family: FAMILY,
    table: scope.table,
    tablesLock: scope.tablesLock,
    focus: masqFocus(scope.network),
    plan: (objects) => removePlan(scope, objects, pick),
  });
}

function removePlan(
  scope: MasqScope,
  objects: readonly NftObject[],
  pick: (tag: string | undefined) => boolean,
): RemovePlan {
  const n = masqNames(scope.network);
  const doomed = taggedElements(objects, scope.network, pick);
  const remaining = taggedElements(objects, scope.network, () => true).length - doomed.length;
  const cmds: NftCommand[] = doomed.map((d) => ({
    delete: { element: { family: FAMILY, table: scope.table, name: d.set, elem: [d.val] } },
  }));
  const jumps = jumpHandles(objects, scope.network);
  if (remaining === 0) {
    for (const h of jumps) {
      cmds.push({
        delete: { rule: { family: FAMILY, table: scope.table, chain: 'postrouting', handle: h } },
      });
    }
    if (hasChain(objects, n.chain))
      cmds.push({ delete: { chain: { family: FAMILY, table: scope.table, name: n.chain } } });
    for (const s of [n.c4, n.c6, n.s4, n.s6]) {
      if (setElements(objects, s) !== undefined)
        cmds.push({ delete: { set: { family: FAMILY, table: scope.table, name: s } } });
    }
  }
  const sets = new Set([n.c4, n.c6, n.s4, n.s6]);
  const own = (o: NftObject): boolean =>
    (o.chain !== undefined && o.chain.name === n.chain) ||
    (o.set !== undefined && sets.has(o.set.name as string)) ||
    (o.rule !== undefined && (o.rule.chain === n.chain || jumps.includes(o.rule.handle as number)));
  const tableEmpty = remaining === 0 && emptyButFor(objects, 'postrouting', own);
  const networkGone = remaining === 0 && cmds.length > doomed.length;
  return { cmds, tags: [...new Set(doomed.map((d) => d.tag ?? ''))], tableEmpty, networkGone };
}

/** The container addresses present for one attachment (CHECK). */
export async function masqueradeAddresses(scope: MasqScope, tag: string): Promise<string[]> {
  const objects = (await scope.nft.listTable(FAMILY, scope.table, masqFocus(scope.network))) ?? [];
  const n = masqNames(scope.network);
  if (!masqueradeWhole(objects, scope.network, jumpsOf(objects, scope.network), false)) return [];
  return [n.c4, n.c6].flatMap((s) =>
    (setElements(objects, s) ?? []).filter((e) => e.comment === tag).map((e) => String(e.val)),
  );
}
