// ADD: bridge, veth pair (container end created directly in the pod's namespace), IPAM, addresses and
// routes inside, gateway on the bridge, masquerade and spoof check; every step registers its undo so a
// failure leaves nothing behind.
import { randomBytes } from 'node:crypto';
import { networkOf } from '../address/cidr';
import { FAMILY_BITS, formatIp } from '../address/ip';
import { refuseResultWithoutAddresses } from '../cni-spec/convert';
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { CancelSignal, Request } from '../cni-spec/request';
import type { Interface, Result } from '../cni-spec/types/result';
import { confFromRequest, wantsVlanFiltering, type BridgeConf } from './config';
import { refuseOwnNetns } from './own-netns';
import type { BridgeDeps } from './deps';
import {
  canonicalIp,
  isHostRouted,
  planAddresses,
  parseCidr,
  type AddressPlan,
  type GatewayAddress,
} from './gateway';
import {
  isCode,
  openNetns,
  pinnedMac,
  randomLocalMac,
  readSysctl,
  toKernelCniError,
  trySysctl,
  writeSysctl,
  type Link,
  type Netlink,
  type NetnsRef,
} from './kernel';
import { withBridgeLock, withNetworkLock } from './lock';
import { addMasquerade, removeMasquerade } from './masquerade';
import { attachmentTag, nftScope } from './nft';
import { registerAttachment, unregisterAttachment } from './registry';
import { addSpoofCheck, removeSpoofCheck } from './spoofcheck';
import { UndoStack } from './undo';

/**
 * Reuses the bridge or creates it; an existing non-bridge is an error. Every ADD but a network's first
 * finds it, so it is looked up before a creation is tried (one request instead of a refused creation and
 * two lookups).
 */
async function ensureBridge(nl: Netlink, conf: BridgeConf): Promise<{ link: Link; created: boolean }> {
  let created = false;
  let link = await nl.findLink(conf.bridge);
  if (link === undefined) {
    try {
      link = await nl.createBridge({
        name: conf.bridge,
        // A MAC given at creation is the bridge's for good (addr_assign_type 3), in every mode: one left
        // to the kernel follows the lowest port's as pods come and go, and a CHECK of an earlier pod (CRI-O
        // runs one after every ADD and at restart) then fails on it. With a gateway it is pinned anyway.
        mac: randomLocalMac(),
        ...(conf.mtu !== undefined ? { mtu: conf.mtu } : {}),
        ...(wantsVlanFiltering(conf) ? { vlanFiltering: true } : {}),
      });
      created = true;
    } catch (err) {
      if (isCode(err, 'EOPNOTSUPP') && wantsVlanFiltering(conf)) {
        throw new CniError(
          ErrorCode.Internal,
          `failed to create bridge "${conf.bridge}": this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING), needed by "vlan"/"vlanTrunk"`,
          undefined,
          { cause: err },
        );
      }
      // Another ADD (or process) created it between the lookup and the creation.
      if (!isCode(err, 'EEXIST')) throw toKernelCniError(err);
      link = await nl.getLink(conf.bridge);
    }
  }
  if (link.kind !== 'bridge') {
    throw new CniError(
      ErrorCode.Internal,
      `failed to create bridge "${conf.bridge}": "${conf.bridge}" already exists but is not a bridge`,
    );
  }
  let changed = false;
  if (conf.promiscMode && !link.promisc) {
    await nl.setPromisc(conf.bridge, true);
    changed = true;
  }
  // We own the routes of this interface.
  trySysctl(undefined, `net/ipv6/conf/${conf.bridge}/accept_ra`, '0');
  // A bridge made here gets its link-local address without DAD, as its IPv6 gateways (NODAD): while that
  // address is tentative the host sends no neighbour solicitation for what it forwards to the pods (host-routed
  // pods of a cluster network reach each other only so), and the first packets wait ~2 s. Its MAC is random.
  if (created) trySysctl(undefined, `net/ipv6/conf/${conf.bridge}/accept_dad`, '0');
  if (!link.up) {
    await nl.setUp(conf.bridge);
    changed = true;
  }
  return { link: changed ? await nl.getLink(conf.bridge) : link, created };
}

function hostVethName(): string {
  return `veth${randomBytes(4).toString('hex')}`;
}

interface VethPair {
  host: Link;
  container: Link;
}

/** What the steps of one ADD share: the request, its configuration and the two open sockets. */
interface AddContext {
  req: Request;
  conf: BridgeConf;
  /** Socket in the host namespace. */
  host: Netlink;
  /** Socket in the pod's namespace. */
  pod: Netlink;
  /** The pod namespace, open for the whole ADD (its sysctls are opened through it, not the path again). */
  netns: NetnsRef;
  /** Test-only fault injection (BERTH_TEST_FAULT). */
  fault: (point: string) => void;
}

/**
 * Creates the pair; its removal is armed the moment the call returns (a creation whose lookup fails removes
 * the pair itself), so a failure of anything after never leaves a pair behind.
 */
async function createVeth(ctx: AddContext, undo: UndoStack): Promise<VethPair> {
  const { host, pod, req, conf, netns } = ctx;
  for (let attempt = 0; ; attempt++) {
    const name = hostVethName();
    let hostEnd: Link;
    try {
      hostEnd = await host.createVethPair({
        name,
        // Given at creation, the MAC counts as set (`addr_assign_type` 3) rather than random, so systemd-udevd's
        // `MACAddressPolicy=persistent` (its default since v242) leaves it alone; it would otherwise change it a
        // moment after the ADD, and the result (and a CHECK) would name a MAC the link no longer has.
        mac: randomLocalMac(),
        peerName: req.ifname,
        peerNetns: netns.fd,
        ...(conf.mtu !== undefined ? { mtu: conf.mtu } : {}),
        ...(conf.mac !== undefined ? { peerMac: conf.mac } : {}),
      });
    } catch (err) {
      if (!isCode(err, 'EEXIST')) throw toKernelCniError(err);
      if ((await pod.findLink(req.ifname)) !== undefined) {
        throw new CniError(ErrorCode.Internal, `container veth name provided (${req.ifname}) already exists`);
      }
      if (attempt >= 9)
        throw new CniError(ErrorCode.Internal, `failed to find a free host veth name after 10 attempts`);
      continue;
    }
    // Removing the host end removes its peer in the pod too.
    undo.push(`delete veth ${name}`, () =>
      host.deleteLink(name).catch((e) => (isCode(e, 'ENODEV') ? undefined : Promise.reject(e))),
    );
    try {
      ctx.fault('veth-created');
      return { host: hostEnd, container: await pod.getLink(req.ifname) };
    } catch (err) {
      throw toKernelCniError(err);
    }
  }
}

/**
 * A port below IPv6's minimum MTU lowers the bridge's MTU (unless an operator set the bridge's; refused
 * anyway, that cannot be read back), and the kernel then drops every IPv6 address of the bridge: another network's gateways on a shared bridge, whose pods lose them
 * while their CHECK still passes (the reference does the same). Refused before anything is made, only for
 * such an mtu (no cost to other ADDs).
 */
async function refuseMtuDroppingIpv6(host: Netlink, conf: BridgeConf, bridge: Link): Promise<void> {
  if (conf.mtu === undefined || conf.mtu >= IPV6_MIN_MTU) return;
  const v6 = (await host.listAddresses({ link: bridge.index, family: 6 })).filter((a) => a.scope === 0);
  if (v6.length === 0) return;
  throw new CniError(
    ErrorCode.InvalidNetworkConfig,
    `mtu ${conf.mtu} is below IPv6's minimum of ${IPV6_MIN_MTU}, and bridge "${conf.bridge}" carries IPv6 addresses (${v6.map((a) => `${a.address}/${a.prefixLength}`).join(', ')}): a port of this MTU would lower the bridge's and the kernel would remove them`,
  );
}

/**
 * A bridge port: a pod's host veth, or (`vlanGateway`) the port of the `<bridge>.<vlan>` gateway pair. The
 * gateway's port gets none of the pods' port options, as in the reference (hairpin off, not isolated, the
 * access VLAN only): isolated like the pods' ports it could not reach them, and no pod its gateway.
 */
async function configurePort(
  ctx: AddContext,
  port: { bridge: Link; veth: Link; alias: string; vlanGateway?: boolean },
): Promise<void> {
  const { host, conf } = ctx;
  const { bridge, veth } = port;
  const gateway = port.vlanGateway === true;
  await host.setAlias(veth.index, port.alias);
  trySysctl(undefined, `net/ipv6/conf/${veth.name}/accept_ra`, '0');
  await host.setMaster(veth.index, bridge.index);
  await host.setBridgePort(veth.index, {
    hairpin: gateway ? false : conf.hairpinMode,
    isolated: gateway ? false : conf.portIsolation,
  });
  const trunk = gateway ? [] : conf.vlanTrunk;
  if (conf.vlan !== 0 || trunk.length > 0) {
    const vlans = [];
    // Access VLAN: PVID and untagged; with only a trunk, the native VLAN is 1 as in the reference.
    if (conf.vlan !== 0) vlans.push({ vid: conf.vlan, pvid: true, untagged: true });
    else vlans.push({ vid: 1, pvid: true, untagged: true });
    for (const vid of trunk) if (vid !== conf.vlan) vlans.push({ vid });
    try {
      if (!conf.preserveDefaultVlan) {
        const existing = await host.listPortVlans(veth.index);
        if (existing.length > 0) await host.delPortVlans(veth.index, existing);
      }
      await host.addPortVlans(veth.index, vlans);
    } catch (err) {
      // A bridge made elsewhere, on a kernel without VLAN filtering: say so as for a bridge berth creates.
      if (!isCode(err, 'EOPNOTSUPP')) throw err;
      throw new CniError(
        ErrorCode.Internal,
        `cannot set VLANs on a port of bridge "${port.bridge.name}": this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING), needed by "vlan"/"vlanTrunk"`,
        undefined,
        { cause: err },
      );
    }
  }
  await host.setUp(veth.index);
}

/** Inside the pod: sysctls, addresses, link up, routes. */
async function configureContainer(ctx: AddContext, plan: AddressPlan | undefined): Promise<void> {
  const { pod, req, conf, netns } = ctx;
  const ifn = req.ifname;
  if (plan !== undefined) {
    // DAD applies to the link-local address too, so it is set for IPv4-only pods as well (as the reference
    // does): hairpin reflection would otherwise make DAD fail.
    if (conf.enableDad) {
      trySysctl(netns, `net/ipv6/conf/${ifn}/enhanced_dad`, '1');
      trySysctl(netns, `net/ipv6/conf/${ifn}/accept_dad`, '1');
    } else {
      trySysctl(netns, `net/ipv6/conf/${ifn}/accept_dad`, '0');
    }
    if (plan.hasV6) {
      // IPv6 is switched on only for attachments that have an IPv6 address.
      trySysctl(netns, 'net/ipv6/conf/lo/disable_ipv6', '0');
      trySysctl(netns, `net/ipv6/conf/${ifn}/disable_ipv6`, '0');
      trySysctl(netns, `net/ipv6/conf/${ifn}/keep_addr_on_down`, '1');
    }
    // A gratuitous ARP on link-up tells neighbours about a reused address.
    trySysctl(netns, `net/ipv4/conf/${ifn}/arp_notify`, '1');
    for (const ip of plan.ips) {
      const p = parseCidr(ip.address);
      try {
        await pod.addAddress({ link: ifn, address: formatIp(p.ip), prefixLength: p.prefix });
      } catch (err) {
        throw new CniError(
          ErrorCode.Internal,
          `failed to add IP addr ${ip.address} to "${ifn}": ${(err as Error).message}`,
          undefined,
          { cause: err },
        );
      }
    }
  }
  if (!conf.disableContainerInterface) await pod.setUp(ifn);
  if (plan === undefined) return;
  if (plan.hasV6 && conf.enableDad) await waitDad(pod, ifn, req.signal);
  const gwOf = { 4: undefined as string | undefined, 6: undefined as string | undefined };
  for (const ip of plan.ips) {
    const f = parseCidr(ip.address).ip.family;
    if (gwOf[f] === undefined && ip.gateway !== undefined) gwOf[f] = ip.gateway;
  }
  for (const r of plan.routes) {
    const dst = parseCidr(r.dst);
    const f = dst.ip.family;
    // A route to the gateway itself (a host-routed pod's on-link route) never goes via the gateway.
    const toGateway =
      gwOf[f] !== undefined && dst.prefix === FAMILY_BITS[f] && formatIp(dst.ip) === canonicalIp(gwOf[f]);
    const gw = r.gw ?? (toGateway ? undefined : gwOf[f]);
    try {
      await pod.addRoute({
        dst: r.dst,
        link: ifn,
        // Two routes to one destination through different gateways are both kept, as the reference does.
        beside: true,
        ...(gw !== undefined ? { gateway: gw } : {}),
        ...(r.priority !== undefined ? { priority: r.priority } : {}),
        ...(r.table !== undefined ? { table: r.table } : {}),
        ...(r.scope !== undefined ? { scope: scopeName(r.scope) } : {}),
        ...(r.mtu !== undefined && r.mtu > 0 ? { mtu: r.mtu } : {}),
        ...(r.advmss !== undefined && r.advmss > 0 ? { advmss: r.advmss } : {}),
      });
    } catch (err) {
      if (isCode(err, 'EEXIST')) continue;
      throw new CniError(
        ErrorCode.Internal,
        `failed to add route ${r.dst}${gw !== undefined ? ` via ${gw}` : ''} on "${ifn}": ${(err as Error).message}${isCode(err, 'ENETUNREACH', 'EHOSTUNREACH') ? gatewayOffLinkHint(conf, plan, gw) : ''}`,
        undefined,
        { cause: err },
      );
    }
  }
}

/**
 * Why a route via `gw` found it unreachable, when a pod address with that gateway is a host prefix (a cluster
 * network's): without isGateway its gateway is the IPAM's word only, on no link of the pod (the reference
 * fails the same way, with the kernel's error alone).
 */
function gatewayOffLinkHint(conf: BridgeConf, plan: AddressPlan, gw: string | undefined): string {
  if (conf.isGateway || gw === undefined) return '';
  const gateway = canonicalIp(gw);
  const ip = plan.ips.find(
    (i) =>
      i.gateway !== undefined &&
      canonicalIp(i.gateway) === gateway &&
      isHostRouted(parseCidr(i.address), gateway),
  );
  if (ip === undefined) return '';
  return `; the pod's address ${ip.address} is a host prefix, so its gateway ${gateway} is on no link of the pod: host-routed addresses (a cluster network's) need "isGateway" (or "isDefaultGateway"), which puts the gateway on the bridge and an on-link route to it in the pod`;
}

function scopeName(scope: number): 'universe' | 'site' | 'link' | 'host' | 'nowhere' {
  switch (scope) {
    case 200:
      return 'site';
    case 253:
      return 'link';
    case 254:
      return 'host';
    case 255:
      return 'nowhere';
    default:
      return 'universe';
  }
}

/** The smallest MTU a link with an IPv6 address may have (RFC 8200). */
const IPV6_MIN_MTU = 1280;

/** How long an ADD with enabledad waits for DAD: the reference's SettleAddresses' 10 s. */
const DAD_WAIT_S = 10;

/**
 * With enabledad, the interface's IPv6 addresses, its link-local one too, must leave the tentative state
 * (as the reference's SettleAddresses: ready when the ADD returns, also with a slow DAD, `dad_transmits`
 * above 1), and a failed DAD fails the ADD at once (the reference waits out its 10 s, then succeeds with
 * the duplicate address configured).
 */
async function waitDad(pod: Netlink, ifname: string, signal: CancelSignal | undefined): Promise<void> {
  const deadline = performance.now() + DAD_WAIT_S * 1000;
  for (;;) {
    // A caller that left or a deadline passed does not keep the attachment's queue for the rest of the wait.
    if (signal?.aborted === true)
      throw new CniError(ErrorCode.TryAgainLater, `the call was cancelled while "${ifname}" waited for DAD`);
    const addrs = await pod.listAddresses({ link: ifname, family: 6 });
    const failed = addrs.find((a) => a.dadFailed);
    if (failed !== undefined)
      throw new CniError(ErrorCode.Internal, `IPv6 DAD failed for ${failed.address} on "${ifname}"`);
    if (!addrs.some((a) => a.tentative)) return;
    if (performance.now() > deadline)
      throw new CniError(
        ErrorCode.Internal,
        `IPv6 addresses on "${ifname}" still tentative after ${DAD_WAIT_S} s`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * With an access VLAN the gateway cannot sit on the bridge device (untagged, VLAN 1): like the reference,
 * a host-side veth pair `<bridge>.<vlan>` is created on first use, its other end a port of the bridge in
 * that VLAN, and the gateway addresses go on it. Shared by every pod of the VLAN, so never removed by a pod.
 */
async function ensureVlanGateway(ctx: AddContext, bridge: Link): Promise<Link> {
  const { host, conf } = ctx;
  const name = `${conf.bridge}.${conf.vlan}`;
  const existing = await host.findLink(name);
  if (existing !== undefined) return existing;
  if (Buffer.byteLength(name) > 15) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `invalid "vlan": gateway interface name ${name} is longer than 15 bytes (shorten "bridge")`,
    );
  }
  const port = hostVethName();
  await host.createVethPair({
    name: port,
    // Both ends are on the host: MACs set at creation, as for a pod's host end (createVeth).
    mac: randomLocalMac(),
    peerName: name,
    peerMac: randomLocalMac(),
    peerNetns: '/proc/self/ns/net',
    mtu: bridge.mtu,
  });
  await configurePort(ctx, {
    bridge,
    veth: await host.getLink(port),
    alias: `${name} gateway port`,
    vlanGateway: true,
  });
  // The host's end routes for the VLAN: it takes no router advertisement from a pod (as the bridge).
  trySysctl(undefined, `net/ipv6/conf/${name}/accept_ra`, '0');
  await host.setUp(name);
  return host.getLink(name);
}

/**
 * Gateway addresses on the bridge (or VLAN gateway), reference ensureAddr semantics. Each address this call
 * adds goes into `added` at once, so a failure on a later family still has the earlier ones undone.
 */
async function ensureGateways(
  ctx: AddContext,
  target: Link,
  gateways: readonly GatewayAddress[],
  added: GatewayAddress[],
): Promise<void> {
  const { host, conf } = ctx;
  const bridge = target;
  for (const gw of gateways) {
    const present = await host.listAddresses({ link: bridge.index, family: gw.family });
    // The gateway already there: done, whatever else the bridge carries. The reference stops at it too, but
    // only when it is listed before the others (usually so); berth never takes another address for a
    // conflict then, nor deletes one with forceAddress.
    if (present.some((a) => a.scope === 0 && a.address === gw.ip && a.prefixLength === gw.prefixLen))
      continue;
    for (const a of present) {
      if (a.scope !== 0) continue;
      const overlaps = gw.family === 4 || sameSubnet(`${a.address}/${a.prefixLength}`, gw.cidr);
      if (!overlaps) continue;
      if (!conf.forceAddress) {
        throw new CniError(
          ErrorCode.Internal,
          `"${target.name}" already has an IP address different from ${gw.cidr}`,
        );
      }
      await host.delAddress({ link: bridge.index, address: a.address, prefixLength: a.prefixLength });
    }
    try {
      // IPv6 gateway with NODAD: never tentative, usable by the first pod at once.
      await host.addAddress({
        link: bridge.index,
        address: gw.ip,
        prefixLength: gw.prefixLen,
        ...(gw.family === 6 ? { nodad: true } : {}),
      });
      added.push(gw);
    } catch (err) {
      if (!isCode(err, 'EEXIST'))
        throw new CniError(
          ErrorCode.Internal,
          `could not add IP address to "${target.name}": ${(err as Error).message}${
            gw.family === 6 && isCode(err, 'EACCES')
              ? ` (IPv6 is disabled on it: net.ipv6.conf.${target.name}.disable_ipv6 is 1, taken from net.ipv6.conf.default.disable_ipv6 when it was created)`
              : ''
          }`,
          undefined,
          { cause: err },
        );
    }
  }
}

/**
 * Pins the bridge MAC to itself, or it follows the lowest port MAC as ports come and go. By the ADD that put a
 * gateway address on (as the reference), and by any later ADD that finds the MAC not pinned (one that died
 * between its address and the pin, a bridge made elsewhere): two sysfs reads, where pinning on every ADD was a
 * lookup and an RTM_SETLINK each time, with a NETDEV_CHANGEADDR through the kernel's notifier chains.
 * Returns the pinned MAC, which the result reports without another lookup.
 */
async function pinBridgeMac(host: Netlink, target: Link, addedAddress: boolean): Promise<string | undefined> {
  if (target.kind !== 'bridge') return undefined;
  // Pinned already (maybe by another ADD since this one first read the bridge): sysfs has the MAC it keeps.
  const pinned = addedAddress ? undefined : pinnedMac(target.name);
  if (pinned !== undefined) return pinned;
  const now = await host.getLink(target.index);
  if (now.mac !== undefined) await host.setMac(target.index, now.mac);
  return now.mac;
}

/** IPv6: two prefixes overlap when either contains the other's network address. */
function sameSubnet(a: string, b: string): boolean {
  const pa = parseCidr(a);
  const pb = parseCidr(b);
  const shorter = Math.min(pa.prefix, pb.prefix);
  return (
    pa.ip.family === pb.ip.family &&
    networkOf({ ip: pa.ip, prefix: shorter }) === networkOf({ ip: pb.ip, prefix: shorter })
  );
}

function enableForwarding(plan: AddressPlan): void {
  for (const family of [4, 6] as const) {
    if (!plan.gateways.some((g) => g.family === family)) continue;
    const key = family === 4 ? 'net/ipv4/ip_forward' : 'net/ipv6/conf/all/forwarding';
    if (readSysctl(undefined, key) !== '1') writeSysctl(undefined, key, '1');
  }
}

/**
 * Spec: an ADD given a prevResult (a chained position) prints the prevResult plus its own changes. Our
 * interfaces go after the previous ones and our IPs' interface indices shift with them.
 */
function chainedResult(prev: Result, ours: Result): Result {
  const offset = prev.interfaces?.length ?? 0;
  const merged: Result = {
    cniVersion: ours.cniVersion,
    interfaces: [...(prev.interfaces ?? []), ...(ours.interfaces ?? [])],
  };
  const ips = [
    ...(prev.ips ?? []),
    ...(ours.ips ?? []).map((ip) => ({ ...ip, interface: (ip.interface ?? 2) + offset })),
  ];
  if (ips.length > 0) merged.ips = ips;
  const routes = [...(prev.routes ?? []), ...(ours.routes ?? [])];
  if (routes.length > 0) merged.routes = routes;
  const dns = ours.dns ?? prev.dns;
  if (dns !== undefined) merged.dns = dns;
  return merged;
}

/**
 * IPAM types that never look at the pod's interface (addresses from lease files or from the config): for a new
 * attachment their ADD runs while the veth pair is created and attached, which the kernel does on a pool
 * thread (berthd) or which keeps the process waiting anyway (standalone), so the ADD takes about the shorter of
 * the two less. Any other type (a DHCP client sends from the interface) is called once the interface exists,
 * as in the reference.
 */
const INTERFACE_FREE_IPAM: ReadonlySet<string> = new Set(['berth-ipam', 'host-local', 'static']);

/** A delegate run by the rollback gets this long in berthd: a hung one must not hold the attachment forever. */
export const CLEANUP_TIMEOUT_MS = 30_000;

/**
 * The request for a rollback step: not cancelled with the call. A caller that left, or a deadline that
 * passed, is often why the ADD fails, and its cleanup must still run (a delegated IPAM refuses to start
 * with an aborted signal, and its lease would leak). In berthd it gets a deadline of its own.
 */
function forCleanup(req: Request): Request {
  if (req.signal === undefined) return req;
  return { ...req, signal: AbortSignal.timeout(CLEANUP_TIMEOUT_MS) };
}

export async function cmdAdd(req: Request, deps: BridgeDeps): Promise<Result> {
  const conf = confFromRequest(req);
  refuseOwnNetns(req);
  // L2 only, nothing chained before: no address to print, which 0.1.0/0.2.0 cannot; refused before the veth.
  if (conf.ipamType === undefined && (req.prevResult?.ips ?? []).length === 0)
    refuseResultWithoutAddresses(req.cniVersion);
  const undo = new UndoStack();
  const tag = attachmentTag(req.containerId, req.ifname);
  const nft = nftScope(deps, conf.network);
  const lockOpts = { network: conf.network, runDir: deps.runDir };
  // What this ADD does to the bridge itself, which other networks may share: the bridge's lock inside the
  // network's (lock.ts).
  const bridgeLockOpts = { bridge: conf.bridge, runDir: deps.runDir };
  const onBridge = <T>(fn: () => Promise<T>): Promise<T> =>
    withNetworkLock(lockOpts, () => withBridgeLock(bridgeLockOpts, fn));
  const fault = (point: string): void => deps.fault?.(point);
  let netnsRef;
  try {
    netnsRef = openNetns(req.netns);
  } catch (err) {
    throw toKernelCniError(err);
  }
  let host: Netlink;
  try {
    host = await deps.kernel.host();
  } catch (err) {
    netnsRef.close();
    throw toKernelCniError(err);
  }
  let pod: Netlink | undefined;
  // The IPAM ADD once started; its DEL is armed the moment it succeeds, or fails cut short by the call's end.
  let ipamAdd: Promise<Result | undefined> | undefined;
  // No attachment record before this ADD: whatever IPAM hands out now is this ADD's alone.
  let newAttachment = false;
  const startIpamAdd = (ipamType: string): Promise<Result | undefined> => {
    const armDel = (): void =>
      undo.push(`IPAM DEL (${ipamType})`, async () => {
        await deps.ipam({ pluginType: ipamType, command: 'DEL', request: forCleanup(req) });
      });
    const added = deps.ipam({ pluginType: ipamType, command: 'ADD', request: req }).then(
      (r) => {
        armDel();
        return r;
      },
      (err: unknown) => {
        // The caller left or the deadline passed while the plugin ran (a delegate is then killed): it may
        // have written its lease already. Not for a repeated ADD: the lease may be the earlier ADD's.
        if (req.signal?.aborted === true && newAttachment) armDel();
        throw err;
      },
    );
    // Awaited later (after the veth, or by the rollback): a failure meanwhile is not an unhandled rejection.
    added.catch(() => undefined);
    return added;
  };
  try {
    // The socket is opened on the fd already held, so the pod namespace is entered by the same reference.
    pod = await deps.kernel.netns(netnsRef.fd);
    // An interface already named req.ifname in the pod is found by the veth creation's EEXIST (createVeth),
    // not by a lookup first: one request less on every ADD.
    const ctx: AddContext = { req, conf, host, pod, netns: netnsRef, fault };

    // Bridge creation and port attachment happen under the network's and the bridge's lock, so a rollback that
    // removes a bridge it created (when the bridge has no port) can never pull it from under another ADD's new
    // port, of this network or of another one on the same bridge.
    const { bridge, veth } = await onBridge(async () => {
      const b = await ensureBridge(host, conf);
      if (!b.created) await refuseMtuDroppingIpv6(host, conf, b.link);
      if (b.created) {
        undo.push(`delete bridge ${conf.bridge}`, () =>
          onBridge(async () => {
            const ports = (await host.listLinks()).filter((l) => l.masterIndex === b.link.index);
            if (ports.length === 0)
              await host
                .deleteLink(b.link.index)
                .catch((e) => (isCode(e, 'ENODEV') ? undefined : Promise.reject(e)));
          }),
        );
      }
      // Registered before any link carries the tag: GC of another network sharing the bridge skips a tagged
      // port registered elsewhere, and would otherwise delete this one between its tag and its record. A
      // rollback removes the veth (pushed later, undone first), then the record, unless it was there before
      // (this attachment's earlier ADD).
      const existed = registerAttachment(deps.runDir, conf.network, tag, {
        masquerade: conf.ipMasq,
        spoofCheck: conf.macSpoofCheck,
      });
      newAttachment = !existed;
      if (!existed)
        undo.push('unregister attachment', () =>
          withNetworkLock(lockOpts, async () => unregisterAttachment(deps.runDir, conf.network, tag)),
        );
      // Only for a new attachment: a repeated ADD whose veth then fails (its eth0 is there) must not have its
      // rollback's IPAM DEL release the address the earlier ADD handed out, so it calls IPAM after, as before.
      if (!existed && conf.ipamType !== undefined && INTERFACE_FREE_IPAM.has(conf.ipamType))
        ipamAdd = startIpamAdd(conf.ipamType);
      const v = await createVeth(ctx, undo);
      // A veth of this ADD's own (a repeated ADD fails at it while the pod has its interface): an ADD whose
      // caller then left is deleted again by berthd, also over a stale attachment record.
      req.madeNew?.();
      await configurePort(ctx, { bridge: b.link, veth: v.host, alias: tag });
      return { bridge: b.link, veth: v };
    });
    fault('after-veth');

    const result: Result = {
      cniVersion: '1.1.0',
      interfaces: [
        { name: bridge.name, ...(bridge.mac !== undefined ? { mac: bridge.mac } : {}) },
        { name: veth.host.name, ...(veth.host.mac !== undefined ? { mac: veth.host.mac } : {}) },
        {
          name: req.ifname,
          ...(veth.container.mac !== undefined ? { mac: veth.container.mac } : {}),
          sandbox: req.netns,
        },
      ],
    };

    if (conf.macSpoofCheck && veth.container.mac !== undefined) {
      const mac = veth.container.mac;
      await withNetworkLock(lockOpts, () =>
        addSpoofCheck(nft, {
          containerId: req.containerId,
          ifname: req.ifname,
          hostVeth: veth.host.name,
          mac,
        }),
      );
      undo.push('remove spoof-check entries', () =>
        withNetworkLock(lockOpts, () => removeSpoofCheck(nft, (t) => t === tag)).then(() => undefined),
      );
    }

    let plan: AddressPlan | undefined;
    if (conf.ipamType !== undefined) {
      const ipam = await (ipamAdd ??= startIpamAdd(conf.ipamType));
      fault('after-ipam');
      if (ipam === undefined || ipam.ips === undefined || ipam.ips.length === 0) {
        throw new CniError(ErrorCode.Internal, 'IPAM plugin returned missing IP config');
      }
      plan = planAddresses(conf, ipam.ips, ipam.routes ?? []);
      // The kernel refuses an IPv6 address on a link below IPv6's minimum MTU (EINVAL): say why instead.
      if (plan.hasV6 && conf.mtu !== undefined && conf.mtu < IPV6_MIN_MTU)
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `mtu ${conf.mtu} is below IPv6's minimum of ${IPV6_MIN_MTU}, and IPAM gave this pod an IPv6 address`,
        );
      result.ips = plan.ips;
      if (plan.routes.length > 0) result.routes = plan.routes;
      if (ipam.dns !== undefined) result.dns = ipam.dns;
    }

    await configureContainer(ctx, plan);

    let pinnedBridgeMac: string | undefined;
    if (plan !== undefined && (conf.isGateway || conf.ipMasq)) {
      const p = plan;
      await withNetworkLock(lockOpts, async () => {
        if (conf.isGateway && p.gateways.length > 0)
          await withBridgeLock(bridgeLockOpts, async () => {
            const target = conf.vlan !== 0 ? await ensureVlanGateway(ctx, bridge) : bridge;
            if (target !== bridge)
              (result.interfaces as Interface[]).push({
                name: target.name,
                ...(target.mac !== undefined ? { mac: target.mac } : {}),
              });
            const added: GatewayAddress[] = [];
            undo.push('remove gateway addresses', () =>
              onBridge(async () => {
                if (added.length === 0) return;
                // Other pods may already route through them: remove only while ours is the only port.
                const ports = (await host.listLinks()).filter(
                  (l) => l.masterIndex === bridge.index && l.index !== veth.host.index,
                );
                if (ports.length > 0) return;
                for (const g of added)
                  await host
                    .delAddress({ link: target.index, address: g.ip, prefixLength: g.prefixLen })
                    .catch(() => undefined);
              }),
            );
            await ensureGateways(ctx, target, p.gateways, added);
            if (p.gateways.some((g) => g.hostRouted === true)) {
              // Host-routed pods reach each other through the gateway; a redirect would tell a pod to skip it
              // for a neighbour its own routes do not put on-link.
              trySysctl(undefined, `net/ipv4/conf/${target.name}/send_redirects`, '0');
            }
            pinnedBridgeMac = await pinBridgeMac(host, target, added.length > 0);
            enableForwarding(p);
          });
        fault('after-gateway');
        if (conf.ipMasq) {
          await addMasquerade(nft, { containerId: req.containerId, ifname: req.ifname }, p.masq);
          undo.push('remove masquerade entries', () =>
            withNetworkLock(lockOpts, () => removeMasquerade(nft, (t) => t === tag)).then(() => undefined),
          );
        }
      });
      fault('after-masq');
    }

    if (!conf.disableContainerInterface) {
      try {
        await host.waitOperUp(veth.host.index, { timeoutMs: 2550 });
      } catch (err) {
        const now = await host.findLink(veth.host.index);
        throw new CniError(
          ErrorCode.Internal,
          `bridge port in error state: ${now?.operState ?? 'gone'}`,
          undefined,
          { cause: err },
        );
      }
    }

    // An unpinned bridge takes a port's MAC as ports come and go, so its MAC is read again unless this ADD
    // pinned it or found it pinned. The host veth keeps the MAC it was created with.
    const bridgeMac = pinnedBridgeMac ?? (await host.getLink(bridge.index)).mac;
    if (bridgeMac !== undefined) (result.interfaces as Interface[])[0]!.mac = bridgeMac;
    if (conf.dns !== undefined) result.dns = conf.dns;
    return req.prevResult !== undefined ? chainedResult(req.prevResult, result) : result;
  } catch (err) {
    // An IPAM ADD still running beside a failed veth step: its DEL must be on the stack before the unwind.
    await ipamAdd?.catch(() => undefined);
    await undo.unwind(req.log);
    throw toKernelCniError(err);
  } finally {
    pod?.close();
    host.close();
    netnsRef.close();
  }
}
