// DEL: idempotent teardown that works without a namespace and without a prevResult. The host veth is found
// by its alias tag when the namespace is gone or unknown; IPAM is released and the attachment's masquerade
// and spoof-check elements are removed in every case, and the reference bridge's masquerade for an attachment
// berth has no record of.
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { Request } from '../cni-spec/request';
import { confFromRequest } from './config';
import { refuseOwnNetns } from './own-netns';
import type { BridgeDeps, BridgeKernel } from './deps';
import { isCode, netlinkCode, toKernelCniError, type Link, type Netlink } from './kernel';
import { withNetworkLock } from './lock';
import { removeMasquerade } from './masquerade';
import { TAG_RE, attachmentTag, nftScope, type Nft } from './nft';
import { removeReferenceRules } from './reference-masquerade';
import {
  HOST_VETH_RE,
  attachmentNftUse,
  attachmentRecorded,
  registeredElsewhere,
  unregisterAttachment,
} from './registry';
import { removeSpoofCheck } from './spoofcheck';

/**
 * Deletes the container interface inside the namespace. True when the host end of this attachment went with
 * it: the interface was a veth whose peer on the host carries the attachment's tag and points back at it (the
 * kernel deletes both ends together). False when the namespace is gone, the interface is not there, or its peer
 * could not be confirmed as ours (no host socket, another kind of link, another peer).
 */
async function deleteInNetns(
  kernel: BridgeKernel,
  host: Netlink | undefined,
  netns: string,
  ifname: string,
  tag: string,
  isThisNetworks: (peer: Link) => Promise<boolean>,
  log: (line: string) => void,
): Promise<boolean> {
  let pod: Netlink;
  try {
    pod = await kernel.netns(netns);
  } catch (err) {
    // A namespace already deleted (or a path that is no namespace any more) is not an error for DEL.
    if (netlinkCode(err) === 'ENOENT' || netlinkCode(err) === 'ENOTNS') return false;
    throw toKernelCniError(err);
  }
  try {
    const link = await pod.findLink(ifname);
    if (link === undefined) return false;
    const peer = host === undefined ? undefined : await hostPeerOf(host, link);
    const hostEndIsOurs = peer?.alias === tag;
    // The interface of another berth attachment (its host end carries another tag): the namespace path now
    // names another pod's namespace (a reused /proc/<pid>/ns/net, a netns name made again). Not ours to
    // delete; the reference deletes it, and that pod loses its interface while keeping its lease.
    if (!hostEndIsOurs && peer !== undefined && isBerthPort(peer)) {
      log(
        `left ${ifname} in ${netns}: its host end ${peer.name} belongs to attachment ${peer.alias}, not ${tag}`,
      );
      return false;
    }
    // The tag names no network: the same container and interface name on another network (Multus given one
    // name twice, this network's ADD then failing on it and its DEL cleaning up) carries it too.
    if (hostEndIsOurs && !(await isThisNetworks(peer))) {
      log(
        `left ${ifname} in ${netns}: its host end ${peer.name} is another network's attachment of the same container and interface name`,
      );
      return false;
    }
    await pod.deleteLink(link.index).catch((e) => (isCode(e, 'ENODEV') ? undefined : Promise.reject(e)));
    return hostEndIsOurs;
  } finally {
    pod.close();
  }
}

/** The host end of `podLink` when it is a veth whose peer, in the host namespace, points back at it. */
async function hostPeerOf(host: Netlink, podLink: Link): Promise<Link | undefined> {
  if (podLink.kind !== 'veth' || podLink.parentIndex === undefined || podLink.linkNetnsId === undefined) {
    return undefined;
  }
  const peer = await host.findLink(podLink.parentIndex);
  return peer !== undefined && peer.kind === 'veth' && peer.parentIndex === podLink.index ? peer : undefined;
}

/** A host veth as berth makes them: its name's shape and an attachment tag as alias. */
function isBerthPort(l: Link): boolean {
  return l.alias !== undefined && TAG_RE.test(l.alias) && HOST_VETH_RE.test(l.name);
}

/**
 * Host veths carrying this attachment's tag (left behind when the namespace is unknown or still alive
 * elsewhere). Only ports of this network's bridge, or veths detached from any bridge, count: a veth with the
 * same tag on another bridge belongs to another network's attachment and is not ours to delete. Except when
 * none is on ours and `movedOk`: the attachment is this network's alone (its record), so a berth-named veth
 * with its tag on another bridge is its own, left there by a config whose `bridge` changed since the ADD.
 */
async function deleteTaggedVeths(
  host: Netlink,
  opts: { tag: string; bridge: string; movedOk: () => boolean },
): Promise<void> {
  const bridge = await host.findLink(opts.bridge);
  const tagged = (await host.listLinks()).filter((l) => l.kind === 'veth' && l.alias === opts.tag);
  const onOurs = (l: Link): boolean =>
    l.masterIndex === undefined || (bridge !== undefined && l.masterIndex === bridge.index);
  let doomed = tagged.filter(onOurs);
  if (doomed.length === 0 && tagged.length > 0 && opts.movedOk())
    doomed = tagged.filter((l) => HOST_VETH_RE.test(l.name));
  for (const l of doomed)
    await host.deleteLink(l.index).catch((e) => (isCode(e, 'ENODEV') ? undefined : Promise.reject(e)));
}

export async function cmdDel(req: Request, deps: BridgeDeps): Promise<void> {
  const conf = confFromRequest(req);
  refuseOwnNetns(req);
  const tag = attachmentTag(req.containerId, req.ifname);
  const errors: string[] = [];
  let firstError: unknown;
  const note = (what: string, err: unknown): void => {
    errors.push(`${what}: ${(err as Error).message}`);
    firstError ??= err;
  };

  let host: Netlink | undefined;
  try {
    host = await deps.kernel.host();
  } catch (err) {
    note('delete host veth', err);
  }
  try {
    let hostEndDeleted = false;
    try {
      // This network's when its record says so (every DEL after an ADD: one file read); without a record, when
      // no other network registered it and it is on this network's bridge (or on none).
      const isThisNetworks = async (peer: Link): Promise<boolean> => {
        if (attachmentRecorded(deps.runDir, conf.network, tag)) return true;
        if (registeredElsewhere(deps.runDir, conf.network, tag)) return false;
        if (peer.masterIndex === undefined) return true;
        const bridge = await host!.findLink(conf.bridge);
        return bridge !== undefined && bridge.index === peer.masterIndex;
      };
      if (req.netns !== '')
        hostEndDeleted = await deleteInNetns(
          deps.kernel,
          host,
          req.netns,
          req.ifname,
          tag,
          isThisNetworks,
          (l) => req.log(l),
        );
    } catch (err) {
      note('delete container interface', err);
    }
    // The host's links are searched for the tag only when the pod's interface did not take the host end with
    // it (namespace gone or unknown, interface missing, peer not ours): that search lists every link of the
    // host, ~2 ms of the event loop per DEL on a node with 110 pods.
    if (host !== undefined && !hostEndDeleted) {
      try {
        await deleteTaggedVeths(host, {
          tag,
          bridge: conf.bridge,
          movedOk: () =>
            attachmentRecorded(deps.runDir, conf.network, tag) &&
            !registeredElsewhere(deps.runDir, conf.network, tag),
        });
      } catch (err) {
        note('delete host veth', err);
      }
    }
  } finally {
    host?.close();
  }

  // Released after the device is gone, like the reference (containernetworking/plugins#666).
  if (conf.ipamType !== undefined) {
    try {
      await deps.ipam({ pluginType: conf.ipamType, command: 'DEL', request: req });
    } catch (err) {
      note(`IPAM DEL (${conf.ipamType})`, err);
    }
  }

  const scope = nftScope(deps, conf.network);
  try {
    await withNetworkLock({ network: conf.network, runDir: deps.runDir }, async () => {
      // Only the tables the ADD recorded it may use (each a few netlink dumps); both without a record.
      // Two tables, independent of each other: side by side, both finished before the lock goes.
      const record = attachmentNftUse(deps.runDir, conf.network, tag);
      const use = record ?? { masquerade: true, spoofCheck: true };
      const outcomes = await Promise.allSettled([
        use.masquerade ? removeMasquerade(scope, (t) => t === tag) : undefined,
        use.spoofCheck ? removeSpoofCheck(scope, (t) => t === tag) : undefined,
      ]);
      const failed = outcomes.find((o) => o.status === 'rejected');
      if (failed !== undefined) note('remove nftables entries', failed.reason);
      // Under the lock, as GC's: the two would otherwise list and delete the same chains at once.
      if (record === undefined) await removeReferenceRulesOf(req, scope.nft, conf);
      try {
        unregisterAttachment(deps.runDir, conf.network, tag);
      } catch (err) {
        note('unregister attachment', err);
      }
    });
  } catch (err) {
    note('network lock', err);
  }
  if (firstError !== undefined) {
    if (errors.length === 1 && firstError instanceof CniError) throw firstError;
    throw new CniError(
      firstError instanceof CniError ? firstError.code : ErrorCode.Internal,
      `DEL finished with ${errors.length} error(s): ${errors.join('; ')}`,
    );
  }
}

/**
 * No record of berth's ADD: the attachment may be the reference bridge's, from before the node was switched
 * to berth. Its masquerade and spoof check are not berth's state, so a failure to remove them is logged, not
 * a failed DEL (which the runtime would retry for good). Three netlink GETs when there are none (seven with
 * `macspoofchk`).
 */
async function removeReferenceRulesOf(
  req: Request,
  nft: Nft,
  conf: { network: string; macSpoofCheck: boolean },
): Promise<void> {
  try {
    const removed = await removeReferenceRules(
      nft,
      { network: conf.network, containerId: req.containerId, ifname: req.ifname },
      { spoofCheck: conf.macSpoofCheck },
    );
    if (removed.length > 0) req.log(`removed the reference bridge's rules: ${removed.join(', ')}`);
  } catch (err) {
    req.log(`the reference bridge's rules could not all be removed: ${(err as Error).message}`);
  }
}
