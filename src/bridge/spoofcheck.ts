// MAC spoof check through nftables bridge rules: frames entering the bridge from a container's host veth
// are dropped unless their source MAC is the container's. Per network, a set of guarded ports and a set of
// allowed (port, MAC) pairs, elements tagged with the attachment like the masquerade sets.
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

export interface SpoofScope {
  nft: Nft;
  table: string;
  network: string;
  /** Held around table setup and teardown (as for the masquerade table). */
  tablesLock: TablesLock;
}

const FAMILY = 'bridge';

export function spoofNames(network: string): { ports: string; allowed: string } {
  const h = networkKey(network);
  return { ports: `p_${h}`, allowed: `a_${h}` };
}

/** What of the table one network's spoof check reads: its sets' elements and the base chain's rules. */
function spoofFocus(network: string): ListFocus {
  const n = spoofNames(network);
  return { sets: [n.ports, n.allowed], chains: ['prerouting'] };
}

function ruleComment(network: string): string {
  return `berth macspoofchk: ${network}`.slice(0, 127);
}

function ruleHandles(objects: readonly NftObject[], network: string): number[] {
  const n = spoofNames(network);
  return objects
    .filter(
      (o) =>
        o.rule !== undefined &&
        o.rule.chain === 'prerouting' &&
        JSON.stringify(o.rule.expr ?? []).includes(`"@${n.allowed}"`),
    )
    .map((o) => o.rule!.handle as number);
}

function elementCommands(
  scope: SpoofScope,
  op: 'add' | 'delete',
  hostVeth: string,
  mac: string,
  tag: string,
): NftCommand[] {
  const n = spoofNames(scope.network);
  const base = { family: FAMILY, table: scope.table };
  return [
    { [op]: { element: { ...base, name: n.ports, elem: [{ elem: { val: hostVeth, comment: tag } }] } } },
    {
      [op]: {
        element: {
          ...base,
          name: n.allowed,
          elem: [{ elem: { val: { concat: [hostVeth, mac] }, comment: tag } }],
        },
      },
    },
  ];
}

/** Guards `hostVeth` so that only `mac` may enter from it. Caller holds the network lock. */
export async function addSpoofCheck(
  scope: SpoofScope,
  attachment: { containerId: string; ifname: string; hostVeth: string; mac: string },
): Promise<void> {
  // The plan reads which sets and rules are there, no element: a listing without any (the sets hold every
  // pod of the network).
  const focus = { ...spoofFocus(scope.network), sets: [] };
  const first = addPlan(scope, (await scope.nft.listTable(FAMILY, scope.table, focus)) ?? [], attachment);
  // Ready needs no tables lock: our sets and rule go only under our network lock (held), and a teardown
  // keeps a table that holds another network's objects (same reasoning as addMasquerade).
  if (first.ready) return scope.nft.apply(first.cmds);
  return scope.tablesLock(async () =>
    scope.nft.apply(
      addPlan(scope, (await scope.nft.listTable(FAMILY, scope.table, focus)) ?? [], attachment).cmds,
    ),
  );
}

function addPlan(
  scope: SpoofScope,
  objects: readonly NftObject[],
  attachment: { containerId: string; ifname: string; hostVeth: string; mac: string },
): { ready: boolean; cmds: NftCommand[] } {
  const tag = attachmentTag(attachment.containerId, attachment.ifname);
  const n = spoofNames(scope.network);
  const t = { family: FAMILY, table: scope.table };
  const cmds: NftCommand[] = [];
  const setsThere =
    setElements(objects, n.ports) !== undefined && setElements(objects, n.allowed) !== undefined;
  const ready = setsThere && ruleHandles(objects, scope.network).length === 1;
  if (!ready) {
    cmds.push(
      { add: { table: { family: FAMILY, name: scope.table } } },
      {
        add: {
          chain: {
            ...t,
            name: 'prerouting',
            type: 'filter',
            hook: 'prerouting',
            prio: -300,
            policy: 'accept',
          },
        },
      },
      { add: { set: { ...t, name: n.ports, type: 'ifname' } } },
      { add: { set: { ...t, name: n.allowed, type: ['ifname', 'ether_addr'] } } },
    );
    for (const h of ruleHandles(objects, scope.network))
      cmds.push({ delete: { rule: { ...t, chain: 'prerouting', handle: h } } });
    cmds.push({
      add: {
        rule: {
          ...t,
          chain: 'prerouting',
          comment: ruleComment(scope.network),
          expr: [
            { match: { op: '==', left: { meta: { key: 'iifname' } }, right: `@${n.ports}` } },
            {
              match: {
                op: '!=',
                left: {
                  concat: [{ meta: { key: 'iifname' } }, { payload: { protocol: 'ether', field: 'saddr' } }],
                },
                right: `@${n.allowed}`,
              },
            },
            { drop: null },
          ],
        },
      },
    });
  }
  cmds.push(...elementCommands(scope, 'add', attachment.hostVeth, attachment.mac, tag));
  return { ready, cmds };
}

/**
 * Removes the elements whose tag `pick` selects; when none is left, removes the network's rule and sets,
 * and the whole table when nothing else is left in it. Returns the tags removed. Caller holds the network lock.
 */
export async function removeSpoofCheck(
  scope: SpoofScope,
  pick: (tag: string | undefined) => boolean,
): Promise<string[]> {
  return removeAndMaybeDropTable({
    nft: scope.nft,
    family: FAMILY,
    table: scope.table,
    tablesLock: scope.tablesLock,
    focus: spoofFocus(scope.network),
    plan: (objects) => removePlan(scope, objects, pick),
  });
}

function removePlan(
  scope: SpoofScope,
  objects: readonly NftObject[],
  pick: (tag: string | undefined) => boolean,
): RemovePlan {
  const n = spoofNames(scope.network);
  const t = { family: FAMILY, table: scope.table };
  const all = [n.ports, n.allowed].flatMap((set) =>
    (setElements(objects, set) ?? []).map((e) => ({ set, ...e })),
  );
  const doomed = all.filter((e) => pick(e.comment));
  const cmds: NftCommand[] = doomed.map((d) => ({
    delete: { element: { ...t, name: d.set, elem: [d.val] } },
  }));
  const rules = ruleHandles(objects, scope.network);
  const last = all.length === doomed.length;
  if (last) {
    for (const h of rules) cmds.push({ delete: { rule: { ...t, chain: 'prerouting', handle: h } } });
    for (const s of [n.ports, n.allowed])
      if (setElements(objects, s) !== undefined) cmds.push({ delete: { set: { ...t, name: s } } });
  }
  const own = (o: NftObject): boolean =>
    (o.set !== undefined && (o.set.name === n.ports || o.set.name === n.allowed)) ||
    (o.rule !== undefined && rules.includes(o.rule.handle as number));
  const tableEmpty = last && emptyButFor(objects, 'prerouting', own);
  const networkGone = last && cmds.length > doomed.length;
  return { cmds, tags: [...new Set(doomed.map((d) => d.comment ?? ''))], tableEmpty, networkGone };
}

/** The (port, MAC) pairs allowed for one attachment (CHECK). */
export async function spoofCheckEntries(
  scope: SpoofScope,
  tag: string,
): Promise<{ port: string; mac: string }[]> {
  const objects = (await scope.nft.listTable(FAMILY, scope.table, spoofFocus(scope.network))) ?? [];
  // The rule (a duplicate does no harm: the next ADD makes it one again), and the port in both sets: a port
  // missing from the guarded set is not checked at all, whatever the allowed set holds.
  if (ruleHandles(objects, scope.network).length === 0) return [];
  const n = spoofNames(scope.network);
  const guarded = new Set(
    (setElements(objects, n.ports) ?? []).filter((e) => e.comment === tag).map((e) => String(e.val)),
  );
  return (setElements(objects, n.allowed) ?? [])
    .filter((e) => e.comment === tag)
    .map((e) => {
      const [port, mac] = (e.val as { concat: [string, string] }).concat;
      return { port, mac };
    })
    .filter((e) => guarded.has(e.port));
}
