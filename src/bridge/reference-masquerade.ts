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
 * Removes iptables chains of the nat table of one family, with the POSTROUTING rules that jump to them, in
 * one transaction. `which` picks them from POSTROUTING's rules (target chain and comment). Returns the
 * chains removed.
 */
async function removeIptablesChains(
  nft: Nft,
  family: string,
  which: (target: string, comment: string | undefined) => boolean,
): Promise<string[]> {
  const postrouting = rulesOf(await nft.listChain(family, IPT_TABLE, 'POSTROUTING'));
  const chains = new Set<string>();
  for (const r of postrouting) {
    const target = jumpTarget(r);
    if (target !== undefined && IPT_CHAIN_RE.test(target) && which(target, r.comment)) chains.add(target);
  }
  if (chains.size === 0) return [];
  const t = { family, table: IPT_TABLE };
  await nft.apply([
    ...postrouting
      .filter((r) => chains.has(jumpTarget(r) ?? ''))
      .map((r) => deleteRule(family, IPT_TABLE, r)),
    ...[...chains].flatMap((name) => [
      { flush: { chain: { ...t, name } } },
      { delete: { chain: { ...t, name } } },
    ]),
  ]);
  return [...chains].map((c) => `${family} ${IPT_TABLE} ${c}`);
}

/** Deletes the nftables backend's rules whose comment `stale` picks; returns how many. */
async function removeNftRules(nft: Nft, stale: (comment: string) => boolean): Promise<number> {
  const rules = rulesOf(await nft.listChain(NFT_FAMILY, NFT_TABLE, NFT_CHAIN)).filter(
    (r) => r.comment !== undefined && stale(r.comment),
  );
  if (rules.length > 0) await nft.apply(rules.map((r) => deleteRule(NFT_FAMILY, NFT_TABLE, r)));
  return rules.length;
}

/**
 * DEL of an attachment the reference made: its masquerade chain in both families (also when its POSTROUTING
 * jump is gone, e.g. half torn down) and its nftables-backend rules. Found by name, so unlike the reference's
 * own teardown it needs no addresses from the pod. Returns what it removed, for the log.
 */
export async function removeReferenceMasquerade(nft: Nft, a: ReferenceAttachment): Promise<string[]> {
  const chain = referenceChainName(a.network, a.containerId);
  const removed: string[] = [];
  for (const family of IPT_FAMILIES) {
    if ((await nft.listChain(family, IPT_TABLE, chain)) === undefined) continue;
    const withJumps = await removeIptablesChains(nft, family, (target) => target === chain);
    if (withJumps.length > 0) {
      removed.push(...withJumps);
      continue;
    }
    // No jump to it left: the chain alone.
    const t = { family, table: IPT_TABLE, name: chain };
    await nft.apply([{ flush: { chain: t } }, { delete: { chain: t } }]);
    removed.push(`${family} ${IPT_TABLE} ${chain}`);
  }
  const prefix = referenceNftPrefix(a.network, a.ifname, a.containerId);
  const n = await removeNftRules(nft, (c) => c.startsWith(prefix));
  if (n > 0) removed.push(`${n} rule(s) of ${NFT_FAMILY} ${NFT_TABLE} ${NFT_CHAIN}`);
  return removed;
}

/**
 * GC: the reference's masquerade of this network for containers the runtime no longer lists. iptables
 * chains are known as this network's by their POSTROUTING jump's comment (the chain name must match it
 * too); the iptables backend ignores ifname, so a container counts as valid with any of its interfaces.
 * The reference itself has no GC for its iptables backend. Returns what it removed.
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
  const removed: string[] = [];
  for (const family of IPT_FAMILIES) removed.push(...(await removeIptablesChains(nft, family, staleChain)));
  const netPrefix = nftNetworkPrefix(network);
  const validPrefixes = new Set(valid.map((v) => referenceNftPrefix(network, v.ifname, v.containerId)));
  const n = await removeNftRules(
    nft,
    (c) => c.startsWith(netPrefix) && !validPrefixes.has(c.slice(0, netPrefix.length + 16)),
  );
  if (n > 0) removed.push(`${n} rule(s) of ${NFT_FAMILY} ${NFT_TABLE} ${NFT_CHAIN}`);
  return removed;
}
