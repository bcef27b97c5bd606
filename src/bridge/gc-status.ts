// GC and STATUS (spec 1.1): GC removes what belongs to attachments the runtime no longer lists (host veths on
// this bridge, masquerade and spoof-check elements, the reference bridge's masquerade) and then asks IPAM to
// do the same; STATUS says whether an ADD could be served now.
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { Request } from '../cni-spec/request';
import { confFromRequest } from './config';
import type { BridgeDeps } from './deps';
import { isCode } from './kernel';
import { withNetworkLock } from './lock';
import { removeMasquerade } from './masquerade';
import { TAG_RE, attachmentOfTag, attachmentTag, nftScope } from './nft';
import { collectReferenceMasquerade } from './reference-masquerade';
import { HOST_VETH_RE, registeredElsewhere, registeredTags, unregisterAttachment } from './registry';
import { removeSpoofCheck } from './spoofcheck';

export async function cmdGc(req: Request, deps: BridgeDeps): Promise<void> {
  const conf = confFromRequest(req);
  const valid = new Set((req.validAttachments ?? []).map((a) => attachmentTag(a.containerID, a.ifname)));
  // Tags of berth-made ports on this bridge that no record attributes to any network (records lost while
  // pods live: a run dir cleaned, a caller with another run dir). Such a port may be another network's on a
  // shared bridge, so nothing of its attachment is removed: the runtime's DEL does that.
  const unproven = new Set<string>();
  const stale = (tag: string | undefined): boolean =>
    tag === undefined || (!valid.has(tag) && !unproven.has(tag));
  const failures: string[] = [];
  const lockOpts = { network: conf.network, runDir: deps.runDir };

  // Past any failure (the lock, the host socket, the registry), as the spec asks of GC: IPAM GC still runs,
  // and every failure is reported at the end.
  await withNetworkLock(lockOpts, async () => {
    let host: Awaited<ReturnType<BridgeDeps['kernel']['host']>>;
    try {
      host = await deps.kernel.host();
    } catch (err) {
      failures.push(`host netlink: ${(err as Error).message}`);
      return;
    }
    const registered = new Set(registeredTags(deps.runDir, conf.network));
    // Records kept for ports that could not be deleted: the next GC, or the DEL, still knows they are ours.
    const notDeleted = new Set<string>();
    try {
      const br = await host.findLink(conf.bridge);
      const bridgeIndex = br !== undefined && br.kind === 'bridge' ? br.index : undefined;
      for (const l of await host.listLinks()) {
        if (l.kind !== 'veth' || l.alias === undefined || !TAG_RE.test(l.alias) || valid.has(l.alias))
          continue;
        const onOurs = bridgeIndex !== undefined && l.masterIndex === bridgeIndex;
        // A port of ours whose bridge was deleted (or that left it) is still ours by its record.
        const detachedOurs = l.masterIndex === undefined && registered.has(l.alias);
        if (!onOurs && !detachedOurs) continue;
        // A port another network registered is that network's to collect, even on a shared bridge (also
        // when this network holds a stale record of the same attachment).
        if (registeredElsewhere(deps.runDir, conf.network, l.alias)) continue;
        if (!registered.has(l.alias)) {
          // An operator's port with an alias of that shape is not berth's.
          if (!HOST_VETH_RE.test(l.name)) continue;
          unproven.add(l.alias);
          req.log(
            `left host veth ${l.name} (${l.alias}) and its attachment's state: no record says it is network ${conf.network}'s (another network on this bridge may own it); the runtime's DEL removes it`,
          );
          continue;
        }
        try {
          await host.deleteLink(l.index);
        } catch (err) {
          if (!isCode(err, 'ENODEV')) {
            notDeleted.add(l.alias);
            failures.push(`delete host veth ${l.name} (${l.alias}): ${(err as Error).message}`);
          }
        }
      }
    } catch (err) {
      failures.push(`list host veths: ${(err as Error).message}`);
      for (const tag of registered) notDeleted.add(tag);
    } finally {
      host.close();
    }
    for (const tag of registered) {
      try {
        if (!valid.has(tag) && !notDeleted.has(tag)) unregisterAttachment(deps.runDir, conf.network, tag);
      } catch (err) {
        failures.push(`unregister ${tag}: ${(err as Error).message}`);
      }
    }
    const scope = nftScope(deps, conf.network);
    try {
      await removeMasquerade(scope, stale);
    } catch (err) {
      failures.push(`masquerade entries: ${(err as Error).message}`);
    }
    try {
      await removeSpoofCheck(scope, stale);
    } catch (err) {
      failures.push(`spoof-check entries: ${(err as Error).message}`);
    }
    try {
      const attachments = (req.validAttachments ?? []).map((a) => ({
        containerId: a.containerID,
        ifname: a.ifname,
      }));
      const removed = await collectReferenceMasquerade(scope.nft, conf.network, attachments);
      if (removed.length > 0) req.log(`removed the reference bridge's masquerade: ${removed.join(', ')}`);
    } catch (err) {
      failures.push(`the reference bridge's masquerade: ${(err as Error).message}`);
    }
  }).catch((err: unknown) => {
    failures.push(`network lock: ${(err as Error).message}`);
  });

  if (conf.ipamType !== undefined) {
    try {
      await deps.ipam({ pluginType: conf.ipamType, command: 'GC', request: withAlsoValid(req, unproven) });
    } catch (err) {
      failures.push(`IPAM GC (${conf.ipamType}): ${(err as Error).message}`);
    }
  }
  if (failures.length > 0) {
    throw new CniError(
      ErrorCode.Internal,
      `GC finished with ${failures.length} error(s)`,
      failures.join('; '),
    );
  }
}

/**
 * The GC request IPAM gets: with `tags` (unproven ports' attachments) among the valid ones, so their leases
 * stay with them. A tag shortened with a hash (container ids over ~110 bytes) names no container: skipped.
 */
function withAlsoValid(req: Request, tags: ReadonlySet<string>): Request {
  const more = [...tags].map(attachmentOfTag).filter((a) => a !== undefined);
  if (more.length === 0) return req;
  const validAttachments = [...(req.validAttachments ?? []), ...more];
  // Both keys, as libcni sends them: an IPAM plugin of spec 1.1.0's first tag reads only the older one.
  const config = { ...req.config };
  config['cni.dev/valid-attachments'] = validAttachments;
  config['cni.dev/attachments'] = validAttachments;
  return { ...req, config, validAttachments, stdin: JSON.stringify(config) };
}

/**
 * Whether nftables answers the way ADD and DEL use it: a listing of berth's table (netlink, in-process), of
 * its chains and sets only (runtimes poll STATUS: it costs the same with a thousand pods on the node).
 */
async function nftUsable(deps: BridgeDeps, network: string): Promise<string | undefined> {
  const scope = nftScope(deps, network);
  try {
    await scope.nft.listTable('inet', scope.table, { sets: [], chains: [] });
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

export async function cmdStatus(req: Request, deps: BridgeDeps): Promise<void> {
  const conf = confFromRequest(req);
  const unavailable = (msg: string): CniError => new CniError(ErrorCode.PluginNotAvailable, msg);
  const host = await deps.kernel.host();
  try {
    const br = await host.findLink(conf.bridge);
    if (br !== undefined && br.kind !== 'bridge') {
      throw unavailable(`"${conf.bridge}" exists but is not a bridge: ADD cannot create the bridge`);
    }
  } finally {
    host.close();
  }
  if (conf.ipMasq || conf.macSpoofCheck) {
    const problem = await nftUsable(deps, conf.network);
    if (problem !== undefined)
      throw unavailable(
        `nftables unusable (needed for ${conf.ipMasq ? 'ipMasq' : 'macspoofchk'}): ${problem}`,
      );
  }
  if (conf.ipamType !== undefined) {
    try {
      await deps.ipam({ pluginType: conf.ipamType, command: 'STATUS', request: req });
    } catch (err) {
      const e = err as CniError;
      if (
        e instanceof CniError &&
        (e.code === ErrorCode.PluginNotAvailable ||
          e.code === ErrorCode.PluginNotAvailableLimitedConnectivity)
      )
        throw e;
      throw unavailable(`IPAM ${conf.ipamType} STATUS failed: ${e.message}`);
    }
  }
}
