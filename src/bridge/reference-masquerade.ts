// The reference bridge's masquerade, as berth finds it on a node switched over from the reference. Its DEL
// would have removed it; berth's DEL and GC remove it instead, so switching leaves no rules behind:
// - the iptables backend (the reference's default): per container, a chain `CNI-<hash>` in table `nat` of
//   each family, jumped to from POSTROUTING. Read and removed over nftables' netlink, which sees it when
//   iptables is iptables-nft (Debian 10+, Ubuntu 20.04+, RHEL 8+); iptables-legacy's rules stay invisible.
// - the nftables backend (plugins 1.5+): one rule per address in `inet cni_plugins_masquerade`'s chain
//   `masq_checks`, its comment starting with a hash of network, ifname and container.
// Names, hashes and comments as the reference writes them (containernetworking/plugins pkg/utils and
// pkg/ip/ipmasq_*_linux.go); a rule or chain that does not match them exactly is not touched.
import { createHash } from 'node:crypto';
import { isCode } from './kernel';
import type { Nft, NftCommand, NftObject } from './nft';

const IPT_TABLE = 'nat';
const IPT_FAMILIES = ['ip', 'ip6'] as const;
const IPT_CHAIN_RE = /^CNI-[0-9a-f]{24}$/;
const NFT_FAMILY = 'inet';
const NFT_TABLE = 'cni_plugins_masquerade';
const NFT_CHAIN = 'masq_checks';

const sha512Hex = (s: string): string => createHash('sha512').update(s).digest('hex');

/** The iptables backend's chain of one container: `CNI-` and 24 hex of sha512(network + containerID). */
export function referenceChainName(network: string, containerId: string): string {
  return `CNI-${sha512Hex(network + containerId).slice(0, 24)}`;
}

/**
 * The iptables backend's comment on each of its rules, Go's `name: %q id: %q`; for the characters the spec
 * allows in network names and container IDs, %q quotes as JSON does.
 */
export function referenceIptablesComment(network: string, containerId: string): string {
  return `name: ${JSON.stringify(network)} id: ${JSON.stringify(containerId)}`;
}

/** Where the nftables backend's comments start for one network: 16 hex of sha512(network) and a '-'. */
const nftNetworkPrefix = (network: string): string => `${sha512Hex(network).slice(0, 16)}-`;

/** The nftables backend's comment prefix of one attachment (hashForInstance). */
export function referenceNftPrefix(network: string, ifname: string, containerId: string): string {
  return nftNetworkPrefix(network) + sha512Hex(`${ifname}:${containerId}`).slice(0, 16);
}

export interface ReferenceAttachment {
  network: string;
  containerId: string;
  ifname: string;
}

type Rule = { handle: number; expr: unknown[]; comment?: string; chain: string };
const rulesOf = (objects: readonly NftObject[] | undefined): Rule[] =>
  (objects ?? []).flatMap((o) => (o.rule !== undefined ? [o.rule as unknown as Rule] : []));

/** The chain a rule jumps (or goes) to, if it does. */
function jumpTarget(rule: Rule): string | undefined {
  for (const e of rule.expr) {
    const v = e as { jump?: { target?: string }; goto?: { target?: string } };
    const target = v.jump?.target ?? v.goto?.target;
    if (target !== undefined) return target;
  }
  return undefined;
}

const deleteRule = (family: string, table: string, rule: Rule): NftCommand => ({
  delete: { rule: { family, table, chain: rule.chain, handle: rule.handle } },
});

/**
 * What a removal did: the objects removed, and the failures of the steps that failed. Each step (a chain
 * with its jumps, the nftables backend's rules) is its own transaction, so one that cannot go (a chain an
 * operator's rule still jumps to: EBUSY) keeps no other from going. ENOENT counts as done: a DEL and a GC
 * (or a DEL of the same container's other interface) found it first.
 */
class Outcome {
  readonly removed: string[] = [];
  readonly failed: string[] = [];

  /** Runs one step; `fn` returns what it removed (undefined: nothing). `what` names it in a failure. */
  async step(what: string, fn: () => Promise<string | undefined>): Promise<void> {
    try {
      const removed = await fn();
      if (removed !== undefined) this.removed.push(removed);
    } catch (err) {
      if (!isCode(err, 'ENOENT')) this.failed.push(`${what}: ${(err as Error).message}`);
    }
  }

  /** The objects removed; throws with every failure (and what was removed anyway) when a step failed. */
  result(): string[] {
    if (this.failed.length === 0) return this.removed;
    const also = this.removed.length > 0 ? ` (removed: ${this.removed.join(', ')})` : '';
    throw new Error(`${this.failed.join('; ')}${also}`);
  }
}

/**
 * Removes iptables chains of the nat table of one family, each with the POSTROUTING rules that jump to it
 * (also a chain in `alone` whose jump is gone). `which` picks them from POSTROUTING's rules (target chain and
 * comment).
 */
async function removeIptablesChains(
  nft: Nft,
  out: Outcome,
  family: string,
  which: (target: string, comment: string | undefined) => boolean,
  alone: readonly string[] = [],
): Promise<void> {
  let postrouting: Rule[] = [];
  await out.step(`${family} ${IPT_TABLE} POSTROUTING listed`, async () => {
    postrouting = rulesOf(await nft.listChain(family, IPT_TABLE, 'POSTROUTING'));
    return undefined;
  });
  const chains = new Set(alone);
  for (const r of postrouting) {
    const target = jumpTarget(r);
    if (target !== undefined && IPT_CHAIN_RE.test(target) && which(target, r.comment)) chains.add(target);
  }
  for (const name of chains) {
    const t = { family, table: IPT_TABLE, name };
    const what = `${family} ${IPT_TABLE} ${name}`;
    await out.step(what, async () => {
      const jumps = postrouting.filter((r) => jumpTarget(r) === name);
      await nft.apply([
        ...jumps.map((r) => deleteRule(family, IPT_TABLE, r)),
        { flush: { chain: t } },
        { delete: { chain: t } },
      ]);
      return what;
    });
  }
}

/** Deletes the nftables backend's rules whose comment `stale` picks. */
async function removeNftRules(nft: Nft, out: Outcome, stale: (comment: string) => boolean): Promise<void> {
  const where = `${NFT_FAMILY} ${NFT_TABLE} ${NFT_CHAIN}`;
  await out.step(where, async () => {
    const rules = rulesOf(await nft.listChain(NFT_FAMILY, NFT_TABLE, NFT_CHAIN)).filter(
      (r) => r.comment !== undefined && stale(r.comment),
    );
    if (rules.length === 0) return undefined;
    await nft.apply(rules.map((r) => deleteRule(NFT_FAMILY, NFT_TABLE, r)));
    return `${rules.length} rule(s) of ${where}`;
  });
}

/**
 * The reference's `macspoofchk`, per attachment (pkg/link/spoofcheck.go): in a bridge-family table, a rule in
 * the base chain (`iifname <host veth> jump cni-br-iface-<containerID>-<ifname>`, commented
 * `macspoofchk-<containerID>-<ifname>`), that chain, and its `-mac` chain (the allowed MAC, then drop). The
 * table and base chain are `nat`/`PREROUTING` up to plugins 1.4 (Debian's 1.1.1), `cni_spoofcheck`/
 * `prerouting` since (knftables); both are looked at.
 */
const SPOOF_FAMILY = 'bridge';
const SPOOF_LAYOUTS = [
  { table: 'nat', base: 'PREROUTING' },
  { table: 'cni_spoofcheck', base: 'prerouting' },
] as const;

function referenceSpoofChain(containerId: string, ifname: string): string {
  return `cni-br-iface-${containerId}-${ifname}`;
}

/** The reference's spoof-check rules of one attachment in one layout: base-chain rules, and which chains exist. */
async function referenceSpoofCheckIn(
  nft: Nft,
  layout: (typeof SPOOF_LAYOUTS)[number],
  a: ReferenceAttachment,
): Promise<{ base: Rule[]; chains: string[] }> {
  const iface = referenceSpoofChain(a.containerId, a.ifname);
  const comment = `macspoofchk-${a.containerId}-${a.ifname}`;
  const chains: string[] = [];
  for (const c of [iface, `${iface}-mac`])
    if ((await nft.listChain(SPOOF_FAMILY, layout.table, c)) !== undefined) chains.push(c);
  const base =
    chains.length === 0
      ? []
      : rulesOf(await nft.listChain(SPOOF_FAMILY, layout.table, layout.base)).filter(
          (r) => r.comment === comment || jumpTarget(r) === iface,
        );
  return { base, chains };
}

/** Removes the reference's spoof check of one attachment, in each layout where it is. */
async function removeReferenceSpoofCheck(nft: Nft, out: Outcome, a: ReferenceAttachment): Promise<void> {
  for (const layout of SPOOF_LAYOUTS) {
    let found: { base: Rule[]; chains: string[] } = { base: [], chains: [] };
    await out.step(`${SPOOF_FAMILY} ${layout.table} spoof check looked up`, async () => {
      found = await referenceSpoofCheckIn(nft, layout, a);
      return undefined;
    });
    if (found.chains.length === 0) continue;
    const what = `${SPOOF_FAMILY} ${layout.table} ${found.chains.join(', ')}`;
    await out.step(what, async () => {
      // The base rule first (it jumps to the first chain), then each chain emptied (the first jumps to the
      // second) and deleted.
      await nft.apply([
        ...found.base.map((r) => deleteRule(SPOOF_FAMILY, layout.table, r)),
        ...found.chains.flatMap((name): NftCommand[] => {
          const t = { family: SPOOF_FAMILY, table: layout.table, name };
          return [{ flush: { chain: t } }, { delete: { chain: t } }];
        }),
      ]);
      return what;
    });
  }
}

/**
 * Whether the reference's spoof check of this attachment is in place (CHECK of a pod the reference
 * attached): the base chain's jump and both chains, in either layout.
 */
export async function referenceSpoofCheckPresent(nft: Nft, a: ReferenceAttachment): Promise<boolean> {
  for (const layout of SPOOF_LAYOUTS) {
    const found = await referenceSpoofCheckIn(nft, layout, a);
    if (found.chains.length === 2 && found.base.length > 0) return true;
  }
  return false;
}

/**
 * DEL of an attachment the reference made: its masquerade chain in both families (also when its POSTROUTING
 * jump is gone, e.g. half torn down), its nftables-backend rules, and its spoof check. Found by name, so
 * unlike the reference's own teardown it needs no addresses from the pod. Returns what it removed, for the
 * log; throws with every step that failed (the others done).
 */
export async function removeReferenceRules(
  nft: Nft,
  a: ReferenceAttachment,
  opts: { spoofCheck: boolean },
): Promise<string[]> {
  const chain = referenceChainName(a.network, a.containerId);
  const out = new Outcome();
  // The reference makes its spoof check only with `macspoofchk`: four netlink GETs spared on other DELs.
  if (opts.spoofCheck) await removeReferenceSpoofCheck(nft, out, a);
  for (const family of IPT_FAMILIES) {
    let present = false;
    await out.step(`${family} ${IPT_TABLE} ${chain} looked up`, async () => {
      present = (await nft.listChain(family, IPT_TABLE, chain)) !== undefined;
      return undefined;
    });
    if (present) await removeIptablesChains(nft, out, family, (target) => target === chain, [chain]);
  }
  const prefix = referenceNftPrefix(a.network, a.ifname, a.containerId);
  await removeNftRules(nft, out, (c) => c.startsWith(prefix));
  return out.result();
}

/**
 * The address families for which the reference's masquerade of this attachment is in place (CHECK of a pod
 * the reference attached): its iptables chain with a POSTROUTING jump to it, or (both families) a rule of
 * the nftables backend for it.
 */
export async function referenceMasqueradeFamilies(nft: Nft, a: ReferenceAttachment): Promise<Set<4 | 6>> {
  const families = new Set<4 | 6>();
  const prefix = referenceNftPrefix(a.network, a.ifname, a.containerId);
  const nftRules = rulesOf(await nft.listChain(NFT_FAMILY, NFT_TABLE, NFT_CHAIN));
  if (nftRules.some((r) => r.comment?.startsWith(prefix) === true)) return new Set([4, 6]);
  const chain = referenceChainName(a.network, a.containerId);
  for (const [family, n] of [
    ['ip', 4],
    ['ip6', 6],
  ] as const) {
    if ((await nft.listChain(family, IPT_TABLE, chain)) === undefined) continue;
    const postrouting = rulesOf(await nft.listChain(family, IPT_TABLE, 'POSTROUTING'));
    if (postrouting.some((r) => jumpTarget(r) === chain)) families.add(n);
  }
  return families;
}

/**
 * GC: the reference's masquerade of this network for containers the runtime no longer lists. iptables
 * chains are known as this network's by their POSTROUTING jump's comment (the chain name must match it
 * too); the iptables backend ignores ifname, so a container counts as valid with any of its interfaces.
 * The reference itself has no GC for its iptables backend. Returns what it removed; throws with every step
 * that failed (the others done).
 */
export async function collectReferenceMasquerade(
  nft: Nft,
  network: string,
  valid: ReadonlyArray<{ containerId: string; ifname: string }>,
): Promise<string[]> {
  const validIds = new Set(valid.map((v) => v.containerId));
  const commentRe = /^name: ("(?:[^"\\]|\\.)*") id: ("(?:[^"\\]|\\.)*")$/;
  const staleChain = (target: string, comment: string | undefined): boolean => {
    const m = commentRe.exec(comment ?? '');
    if (m === null) return false;
    let name: unknown, id: unknown;
    try {
      [name, id] = [JSON.parse(m[1]!), JSON.parse(m[2]!)];
    } catch {
      return false;
    }
    return (
      name === network &&
      typeof id === 'string' &&
      target === referenceChainName(network, id) &&
      !validIds.has(id)
    );
  };
  const out = new Outcome();
  for (const family of IPT_FAMILIES) await removeIptablesChains(nft, out, family, staleChain);
  const netPrefix = nftNetworkPrefix(network);
  const validPrefixes = new Set(valid.map((v) => referenceNftPrefix(network, v.ifname, v.containerId)));
  await removeNftRules(
    nft,
    out,
    (c) => c.startsWith(netPrefix) && !validPrefixes.has(c.slice(0, netPrefix.length + 16)),
  );
  return out.result();
}
