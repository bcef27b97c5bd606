// CHECK: compares the live state with the prevResult and the configuration — bridge, container interface,
// host veth and its port settings, addresses, routes, masquerade and spoof-check entries — and asks IPAM
// to check its reservation only when there is an IPAM.
import { networkOf } from '../address/cidr';
import { formatIp } from '../address/ip';
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { Request } from '../cni-spec/request';
import type { Interface } from '../cni-spec/types/result';
import { confFromRequest } from './config';
import { refuseOwnNetns } from './own-netns';
import { canonicalIp, parseCidr } from './gateway';
import type { BridgeDeps } from './deps';
import { pinnedMac, RT_TABLE, toKernelCniError } from './kernel';
import { masqueradeAddresses } from './masquerade';
import { attachmentTag, nftScope } from './nft';
import { referenceMasqueradeFamilies, referenceSpoofCheckPresent } from './reference-masquerade';
import { attachmentNftUse } from './registry';
import { spoofCheckEntries } from './spoofcheck';

function fail(msg: string): never {
  throw new CniError(ErrorCode.Internal, msg);
}

const sameMac = (a: string | undefined, b: string | undefined): boolean =>
  a === undefined || b === undefined || a.toLowerCase() === b.toLowerCase();

export async function cmdCheck(req: Request, deps: BridgeDeps): Promise<void> {
  const conf = confFromRequest(req);
  refuseOwnNetns(req);
  if (conf.ipamType !== undefined)
    await deps.ipam({ pluginType: conf.ipamType, command: 'CHECK', request: req });
  const prev = req.prevResult;
  if (prev === undefined) fail('Required prevResult missing');
  const ifaces = prev.interfaces ?? [];
  const brIf = ifaces.find((i) => i.name === conf.bridge && (i.sandbox ?? '') === '');
  const contIdx = ifaces.findIndex((i) => i.name === req.ifname && i.sandbox === req.netns);
  const contIf: Interface | undefined = ifaces[contIdx];
  if (brIf === undefined)
    fail(`CNI created bridge ${conf.bridge} in host namespace was not found in prevResult`);
  if (contIf === undefined)
    fail(`Sandbox in prevResult doesn't match configured netns: ${req.netns} (interface ${req.ifname})`);

  const host = await deps.kernel.host();
  let pod;
  try {
    pod = await deps.kernel.netns(req.netns);
  } catch (err) {
    host.close();
    throw toKernelCniError(err);
  }
  try {
    const br = await host.findLink(conf.bridge);
    if (br === undefined) fail(`CNI created bridge ${conf.bridge} in host namespace was not found`);
    if (br.kind !== 'bridge') fail(`Interface ${conf.bridge} does not have link type of bridge`);
    // A bridge whose MAC is not pinned (made by the operator, in L2 mode) follows its lowest port's as
    // ports come and go: that is the kernel's doing, not drift to report.
    if (!sameMac(brIf.mac, br.mac) && pinnedMac(conf.bridge) !== undefined)
      fail(`Bridge interface ${conf.bridge} Mac doesn't match: ${brIf.mac}`);
    if (br.promisc !== conf.promiscMode) {
      fail(
        `Bridge interface ${conf.bridge} configured Promisc Mode ${conf.promiscMode} doesn't match current state: ${br.promisc}`,
      );
    }

    const cont = await pod.findLink(req.ifname);
    if (cont === undefined) fail(`CNI created interface in container ${req.ifname} not found`);
    if (cont.kind !== 'veth') fail(`Container interface ${req.ifname} not of type veth`);
    if (!sameMac(contIf.mac, cont.mac))
      fail(`Interface ${req.ifname} Mac ${contIf.mac} doesn't match container Mac: ${cont.mac}`);
    // Not against `mtu`: a later plugin of the chain (tuning's "mtu") may have set the pod's end, as the
    // reference's CHECK allows. Against the MTU the chain's result reports, when it reports one.
    if (contIf.mtu !== undefined && cont.mtu !== contIf.mtu)
      fail(`Interface ${req.ifname} MTU ${cont.mtu} doesn't match ${contIf.mtu} in prevResult`);
    if (!conf.disableContainerInterface && !cont.up) fail(`Interface ${req.ifname} is down`);

    // The host veth: a veth of prevResult whose index is the container end's peer, enslaved to the bridge.
    const hostCandidates = ifaces.filter(
      (i, idx) => idx !== contIdx && i !== brIf && (i.sandbox ?? '') === '',
    );
    let hostVeth;
    for (const i of hostCandidates) {
      const l = await host.findLink(i.name);
      if (l !== undefined && l.kind === 'veth' && l.index === cont.parentIndex)
        hostVeth = { link: l, iface: i };
    }
    if (hostVeth === undefined) fail(`CNI veth created for bridge ${conf.bridge} was not found`);
    const hv = hostVeth.link;
    if (hv.masterIndex !== br.index) fail(`Host veth ${hv.name} is not attached to bridge ${conf.bridge}`);
    if (!sameMac(hostVeth.iface.mac, hv.mac))
      fail(`Interface ${hv.name} Mac doesn't match: ${hostVeth.iface.mac}`);
    if (conf.mtu !== undefined && hv.mtu !== conf.mtu)
      fail(`Host veth ${hv.name} MTU ${hv.mtu} doesn't match configured ${conf.mtu}`);
    const port = await host.getBridgePort(hv.index);
    if (port === undefined) fail(`Host veth ${hv.name} is not a bridge port`);
    if (port.hairpin !== conf.hairpinMode)
      fail(`Host veth ${hv.name} hairpin mode is ${port.hairpin}, configured ${conf.hairpinMode}`);
    if (port.isolated !== conf.portIsolation)
      fail(`Host veth ${hv.name} port isolation is ${port.isolated}, configured ${conf.portIsolation}`);
    if (conf.vlan !== 0 || conf.vlanTrunk.length > 0) {
      const vids = new Map<number, { pvid: boolean; untagged: boolean }>();
      for (const v of await host.listPortVlans(hv.index)) {
        for (let id = v.vid; id <= (v.vidEnd ?? v.vid); id++)
          vids.set(id, { pvid: v.pvid === true, untagged: v.untagged === true });
      }
      const access = conf.vlan !== 0 ? conf.vlan : 1;
      const a = vids.get(access);
      if (a === undefined || !a.pvid || !a.untagged)
        fail(`Host veth ${hv.name} lacks VLAN ${access} as PVID untagged`);
      for (const id of conf.vlanTrunk) if (!vids.has(id)) fail(`Host veth ${hv.name} lacks trunk VLAN ${id}`);
    }

    // The gateways on the bridge (or its VLAN gateway interface), as the ADD put them: a pod whose gateway
    // went (an operator's flush, another network's port below IPv6's MTU) has no way out, yet the rest
    // checks fine. The reference does not look.
    if (conf.isGateway) {
      const gws = (prev.ips ?? [])
        .filter((ip) => (ip.interface === undefined || ip.interface === contIdx) && ip.gateway !== undefined)
        .map((ip) => canonicalIp(ip.gateway!));
      if (gws.length > 0) {
        const target = conf.vlan !== 0 ? await host.findLink(`${conf.bridge}.${conf.vlan}`) : br;
        const on =
          target === undefined
            ? []
            : // Any scope: an IPAM gateway fe80::1 is on the bridge as a link-scope address.
              await host.listAddresses({ link: target.index });
        for (const gw of gws)
          if (!on.some((a) => canonicalIp(a.address) === gw))
            fail(`Gateway ${gw} is not on ${target?.name ?? `${conf.bridge}.${conf.vlan}`}`);
      }
    }

    // Addresses and routes in the container.
    const addrs = await pod.listAddresses({ link: cont.index });
    for (const ip of prev.ips ?? []) {
      if (ip.interface !== undefined && ip.interface !== contIdx) continue;
      const p = parseCidr(ip.address);
      if (!addrs.some((a) => canonicalIp(a.address) === formatIp(p.ip) && a.prefixLength === p.prefix)) {
        fail(`Failed to match addr ${ip.address} on interface ${req.ifname}`);
      }
    }
    const routes = await pod.listRoutes({});
    for (const r of prev.routes ?? []) {
      const d = parseCidr(r.dst);
      // In the table the result names (1.1.0), else the main one, as the reference's route filter: a route the
      // pod lost from main is missing even if a copy sits in another table (sbr moves them there). Table 0 is
      // the main one, as ADD put it.
      const table = r.table === undefined || r.table === 0 ? RT_TABLE.MAIN : r.table;
      const found = routes.some((x) => {
        const xd = parseCidr(x.dst);
        return (
          x.table === table &&
          xd.ip.family === d.ip.family &&
          networkOf(xd) === networkOf(d) &&
          xd.prefix === d.prefix &&
          (r.gw === undefined || (x.gateway !== undefined && canonicalIp(x.gateway) === canonicalIp(r.gw)))
        );
      });
      if (!found)
        fail(`Failed to match route ${r.dst}${r.gw !== undefined ? ` via ${r.gw}` : ''} in container`);
    }

    const tag = attachmentTag(req.containerId, req.ifname);
    const scope = nftScope(deps, conf.network);
    if (conf.ipMasq && conf.ipamType !== undefined) {
      const masq = new Set(await masqueradeAddresses(scope, tag));
      // A pod the reference bridge attached (before the node was switched to berth: no record of berth's
      // ADD) has the reference's masquerade instead, which berth's DEL and GC remove; its CHECK passes on it.
      const reference =
        attachmentNftUse(deps.runDir, conf.network, tag) === undefined
          ? await referenceMasqueradeFamilies(scope.nft, {
              network: conf.network,
              containerId: req.containerId,
              ifname: req.ifname,
            })
          : new Set<4 | 6>();
      for (const ip of prev.ips ?? []) {
        // Only this interface's addresses: a chained plugin's on another interface are not berth's to masquerade.
        if (ip.interface !== undefined && ip.interface !== contIdx) continue;
        const p = parseCidr(ip.address);
        const addr = formatIp(p.ip);
        if (!masq.has(addr) && !reference.has(p.ip.family))
          fail(`masquerade entry for ${addr} (${tag}) is missing`);
      }
    }
    if (conf.macSpoofCheck) {
      const entries = (await spoofCheckEntries(scope, tag)).filter((e) => e.port === hv.name);
      // A pod the reference attached has the reference's spoof check instead (removed by berth's DEL).
      if (
        !entries.some((e) => sameMac(e.mac, cont.mac)) &&
        !(
          attachmentNftUse(deps.runDir, conf.network, tag) === undefined &&
          (await referenceSpoofCheckPresent(scope.nft, {
            network: conf.network,
            containerId: req.containerId,
            ifname: req.ifname,
          }))
        )
      )
        fail(
          entries.length > 0
            ? // a chained plugin (tuning's `mac`) changed it after the ADD: the pod's frames are dropped
              `spoof-check entry for ${hv.name} (${tag}) allows ${entries.map((e) => e.mac).join(', ')}, not the container's ${cont.mac}`
            : `spoof-check entry for ${hv.name} (${tag}) is missing`,
        );
    }
  } catch (err) {
    throw toKernelCniError(err);
  } finally {
    pod.close();
    host.close();
  }
}
