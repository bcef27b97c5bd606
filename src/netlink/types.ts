// The small types the kernel room hands out, and the Netlink interface (real: rtnetlink.ts; a fake may follow).
import type { IpFamily } from './ip-bytes';
import type { NetnsSpec } from './netns';

/** A link by name or by ifindex (in the namespace of the socket). */
export type LinkRef = string | number;

/** IFLA_OPERSTATE (RFC 2863). */
export type OperState = 'unknown' | 'notpresent' | 'down' | 'lowerlayerdown' | 'testing' | 'dormant' | 'up';

export interface Link {
  index: number;
  name: string;
  /** IFLA_INFO_KIND: 'bridge', 'veth', …; undefined for devices without one (lo, physical NICs). */
  kind: string | undefined;
  /** IFLA_INFO_SLAVE_KIND: 'bridge' for a bridge port. */
  portKind: string | undefined;
  mtu: number;
  /** IFLA_ADDRESS as aa:bb:cc:dd:ee:ff. */
  mac: string | undefined;
  /** IFF_UP: administratively up. */
  up: boolean;
  /** IFF_LOWER_UP: carrier. */
  lowerUp: boolean;
  operState: OperState;
  /** Raw IFF_* flags. */
  flags: number;
  /** IFLA_MASTER: the bridge this link is a port of. */
  masterIndex: number | undefined;
  /** IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace). */
  parentIndex: number | undefined;
  /** IFLA_LINK_NETNSID: set when the peer/parent lives in another namespace. */
  linkNetnsId: number | undefined;
  /** IFLA_IFALIAS. */
  alias: string | undefined;
  /** IFLA_PROMISCUITY: > 0 means the device receives everything. */
  promiscuity: number;
  /** IFF_PROMISC as set by the user (`ip link set … promisc on`). */
  promisc: boolean;
}

export interface BridgeOptions {
  name: string;
  mtu?: number;
  /** IFLA_BR_VLAN_FILTERING. */
  vlanFiltering?: boolean;
  mac?: string;
}

export interface VethOptions {
  /** The end created in the socket's namespace. */
  name: string;
  /** The other end, created directly in `peerNetns` (IFLA_NET_NS_FD in VETH_INFO_PEER). */
  peerName: string;
  peerNetns: NetnsSpec;
  mtu?: number;
  mac?: string;
  peerMac?: string;
}

/** Bridge port settings (IFLA_PROTINFO, AF_BRIDGE); undefined leaves a setting as it is. */
export interface BridgePortOptions {
  /** IFLA_BRPORT_MODE: send frames back out of the port they came in on. */
  hairpin?: boolean;
  /** IFLA_BRPORT_ISOLATED: isolated ports only talk to non-isolated ones. */
  isolated?: boolean;
  /** IFLA_BRPORT_LEARNING. */
  learning?: boolean;
}

export interface BridgePort {
  index: number;
  masterIndex: number | undefined;
  hairpin: boolean;
  isolated: boolean;
  learning: boolean;
}

/** A VLAN entry on a bridge port (or the bridge itself); `vidEnd` makes it a range vid..vidEnd. */
export interface PortVlan {
  vid: number;
  vidEnd?: number;
  /** Untagged ingress frames get this VLAN (only one PVID per port). */
  pvid?: boolean;
  /** Egress frames of this VLAN leave untagged. */
  untagged?: boolean;
}

export interface VlanOptions {
  /** Apply to the bridge device itself (BRIDGE_FLAGS_SELF) instead of a port. */
  self?: boolean;
}

export interface Address {
  index: number;
  family: IpFamily;
  address: string;
  prefixLength: number;
  /** RT_SCOPE_*: 0 global, 253 link, 254 host. */
  scope: number;
  /** IFA_F_* bits (from IFA_FLAGS when present). */
  flags: number;
  /** IFA_F_TENTATIVE: IPv6 DAD still running; the address cannot be used yet. */
  tentative: boolean;
  /** IFA_F_DADFAILED: another host answered DAD; the address will never become usable. */
  dadFailed: boolean;
  nodad: boolean;
  permanent: boolean;
  label: string | undefined;
}

export interface AddressOptions {
  link: LinkRef;
  address: string;
  prefixLength: number;
  /** IFA_F_NODAD: skip IPv6 duplicate address detection (usable immediately). */
  nodad?: boolean;
  /** IFA_F_NOPREFIXROUTE: do not add the prefix route. */
  noPrefixRoute?: boolean;
}

export interface AddressFilter {
  link?: LinkRef;
  family?: IpFamily;
}

export type RouteScope = 'universe' | 'site' | 'link' | 'host' | 'nowhere';

export interface Route {
  family: IpFamily;
  /** Destination as a CIDR; the default route is 0.0.0.0/0 or ::/0. */
  dst: string;
  gateway: string | undefined;
  /** RTA_OIF. */
  oif: number | undefined;
  /** RTA_PRIORITY (the metric). */
  priority: number | undefined;
  /** RTA_TABLE (254 = main, 255 = local). */
  table: number;
  scope: number;
  /** RTPROT_*: 2 kernel, 3 boot, 4 static, 190 berthd. */
  protocol: number;
  /** RTN_*: 1 unicast, 2 local, … */
  type: number;
  prefsrc: string | undefined;
}

export interface RouteOptions {
  /** CIDR; 0.0.0.0/0 or ::/0 for the default route. */
  dst: string;
  /**
   * Next hop. An IPv6 next hop for an IPv4 `dst` is sent as RTA_VIA (RFC 5549, `ip route add … via inet6
   * <addr>`, Linux ≥ 5.2); the kernel refuses the reverse (EINVAL: IPv6 routes have no RTA_VIA).
   */
  gateway?: string;
  link?: LinkRef;
  /** The metric (RTA_PRIORITY). */
  priority?: number;
  /** Routing table id (default 254, main). */
  table?: number;
  /** Default: 'universe' with a gateway, 'link' for a device route without one. */
  scope?: RouteScope;
  /** Preferred source address (RTA_PREFSRC). */
  src?: string;
  /** Path MTU of the route (RTAX_MTU in RTA_METRICS, `ip route … mtu N`). */
  mtu?: number;
  /** MSS advertised to peers on this route (RTAX_ADVMSS, `ip route … advmss N`). */
  advmss?: number;
  /**
   * addRoute: a route to the same destination through another next hop stays, and this one goes beside it
   * (IPv4: a second route; IPv6: another next hop of a multipath route), as Go netlink's RouteAddEcmp does
   * for the reference plugins. Only the very same route is EEXIST. Default: any route to the destination is.
   */
  beside?: boolean;
  /**
   * RTPROT_* the route is installed with (default 3, boot, like `ip route add`). On delete, a given
   * protocol must match (the kernel compares it when non-zero), so a delete never hits another owner's route.
   */
  protocol?: number;
}

export interface RouteFilter {
  family?: IpFamily;
  /** Only this table (default: every table). */
  table?: number;
  link?: LinkRef;
  /** Only routes of this RTPROT_* (e.g. 190, berthd's own). */
  protocol?: number;
}

export interface WaitOptions {
  /** Give up after this long (default 5000 ms); NetlinkError 'ETIMEDOUT'. */
  timeoutMs?: number;
}

/**
 * An rtnetlink socket bound to one network namespace (the one it was opened in). Every verb rejects
 * with a NetlinkError (`code` 'EEXIST', 'ENODEV', …, `op` 'RTM_NEWLINK', …, `object` the name).
 */
export interface Netlink {
  /** The namespace path given to openNetlink, or undefined for the caller's namespace. */
  readonly netns: string | undefined;
  close(): void;

  /** RTM_GETLINK; ENODEV when there is no such link. */
  getLink(ref: LinkRef): Promise<Link>;
  /** Like getLink, but undefined instead of ENODEV. */
  findLink(ref: LinkRef): Promise<Link | undefined>;
  listLinks(): Promise<Link[]>;
  /** RTM_NEWLINK kind bridge; EEXIST if a link of that name exists (of any kind). */
  createBridge(opts: BridgeOptions): Promise<Link>;
  /** Turns vlan_filtering on or off on an existing bridge. */
  setBridgeVlanFiltering(bridge: LinkRef, on: boolean): Promise<void>;
  /**
   * RTM_NEWLINK kind veth: `name` here, `peerName` created directly in `peerNetns`. Returns the local
   * end (its `parentIndex` is the peer's ifindex over there). EEXIST if either name is taken.
   */
  createVethPair(opts: VethOptions): Promise<Link>;
  setUp(ref: LinkRef): Promise<void>;
  setDown(ref: LinkRef): Promise<void>;
  setMtu(ref: LinkRef, mtu: number): Promise<void>;
  setMac(ref: LinkRef, mac: string): Promise<void>;
  /** IFLA_MASTER. A master that is not a bridge (or bond…) fails with EOPNOTSUPP; a missing one with ENODEV. */
  setMaster(ref: LinkRef, master: LinkRef): Promise<void>;
  noMaster(ref: LinkRef): Promise<void>;
  /** The link must be down to be renamed (EBUSY otherwise). */
  rename(ref: LinkRef, newName: string): Promise<void>;
  /** IFLA_IFALIAS; '' removes it. */
  setAlias(ref: LinkRef, alias: string): Promise<void>;
  setPromisc(ref: LinkRef, on: boolean): Promise<void>;
  /** RTM_DELLINK (a veth takes its peer with it); ENODEV when missing. */
  deleteLink(ref: LinkRef): Promise<void>;
  /** Polls with exponential back-off (1 ms doubling to 50 ms) until operstate is up; ETIMEDOUT after the bound. */
  waitOperUp(ref: LinkRef, opts?: WaitOptions): Promise<Link>;

  setBridgePort(ref: LinkRef, opts: BridgePortOptions): Promise<void>;
  /** undefined when the link is not a bridge port. */
  getBridgePort(ref: LinkRef): Promise<BridgePort | undefined>;
  addPortVlans(ref: LinkRef, vlans: readonly PortVlan[], opts?: VlanOptions): Promise<void>;
  delPortVlans(ref: LinkRef, vlans: readonly PortVlan[], opts?: VlanOptions): Promise<void>;
  /** Ranges come back compressed (vid..vidEnd) as the kernel groups them. */
  listPortVlans(ref: LinkRef): Promise<PortVlan[]>;

  /** RTM_NEWADDR (IPv4 gets its broadcast address computed); EEXIST when present. */
  addAddress(opts: AddressOptions): Promise<void>;
  /** RTM_DELADDR; EADDRNOTAVAIL when the address is not there. */
  delAddress(opts: AddressOptions): Promise<void>;
  listAddresses(filter?: AddressFilter): Promise<Address[]>;

  /** RTM_NEWROUTE (protocol boot, like `ip route add`); EEXIST when present. */
  addRoute(opts: RouteOptions): Promise<void>;
  /** RTM_NEWROUTE with NLM_F_REPLACE: adds, or replaces the route of the same dst/table/metric in place. */
  replaceRoute(opts: RouteOptions): Promise<void>;
  /** RTM_DELROUTE; ESRCH when no route matches. */
  delRoute(opts: RouteOptions): Promise<void>;
  listRoutes(filter?: RouteFilter): Promise<Route[]>;
}
