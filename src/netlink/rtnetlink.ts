// rtnetlink verbs over one socket bound to one namespace: what berth-bridge does to links, addresses and routes.
import { randomBytes } from 'node:crypto';
import { closeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { createNetlink, type NetlinkSocket } from 'netlink/dist/netlink';
import type { NetlinkMessage } from 'netlink/dist/structs';
import { networkIp } from '../address/cidr';
import { NetlinkError, fromErrno, toNetlinkError } from './errors';
import { bytesToIp, ipToBytes, ipv4Broadcast, parseCidr, type IpFamily } from './ip-bytes';
import { loadNativeAddon } from '../native-addon';
import { openNetns, withNetns, type NetnsRef, type NetnsSpec } from './netns';
import {
  AF,
  BRIDGE_FLAGS,
  BRIDGE_VLAN_INFO,
  IFA,
  IFADDRMSG_LEN,
  IFA_F,
  IFF,
  IFINFOMSG_LEN,
  IFLA,
  IFLA_BRIDGE,
  IFLA_BRPORT,
  IFLA_BR_VLAN_FILTERING,
  IFLA_INFO,
  NLA_F_NESTED,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NLM_F,
  NLM_F_ACK,
  NLM_F_REQUEST,
  RTA,
  RTAX,
  RTEXT_FILTER,
  RTM,
  RTM_NAMES,
  RTMSG_LEN,
  RTN_UNICAST,
  RTPROT,
  RT_SCOPE,
  RT_TABLE,
  VETH_INFO_PEER,
  align4,
  decodeAttrList,
  decodeAttrs,
  encodeAttrs,
  ifaddrmsg,
  nlmsghdr,
  ifinfomsg,
  readStr,
  readU32,
  readU8,
  rtmsg,
  str,
  u16,
  u32,
  u8,
  type Attr,
} from './rtnl-codec';
import type {
  Address,
  AddressFilter,
  AddressOptions,
  BridgeOptions,
  BridgePort,
  BridgePortOptions,
  Link,
  LinkRef,
  Netlink,
  OperState,
  PortVlan,
  Route,
  RouteFilter,
  RouteOptions,
  VethOptions,
  VlanOptions,
  WaitOptions,
} from './types';

const NETLINK_ROUTE = 0;
const NLM_F_DUMP_INTR = 0x10;
const OPERSTATES: readonly OperState[] = [
  'unknown',
  'notpresent',
  'down',
  'lowerlayerdown',
  'testing',
  'dormant',
  'up',
];

/**
 * Opens an rtnetlink socket in `netns` (a path, an fd, an open NetnsRef) or, without one, in the
 * caller's namespace. The socket is created inside `withNetns` (synchronously) and stays bound to that
 * namespace for its whole life, so the verbs can be awaited freely afterwards. Close it when done.
 * Errors: those of openNetns/withNetns (ENOENT / ENOTNS for a bad path, op 'open netns').
 */
export function openNetlink(netns?: NetnsSpec, opts: NetlinkOptions = {}): Netlink {
  const create = (): { socket: NetlinkSocket; slowFd: number | undefined } => {
    let slowFd: number | undefined;
    try {
      slowFd = loadNativeAddon().netlinkOpen?.(NETLINK_ROUTE);
    } catch {
      // No addon here, or no descriptor left (EMFILE): the slow requests then go on the main socket.
      slowFd = undefined;
    }
    try {
      return { socket: createNetlink(NETLINK_ROUTE), slowFd };
    } catch (err) {
      if (slowFd !== undefined) closeSync(slowFd);
      throw toNetlinkError(err, 'socket', 'rtnetlink');
    }
  };
  const { socket, slowFd } = netns === undefined ? create() : withNetns(netns, create);
  const label = typeof netns === 'string' ? netns : typeof netns === 'object' ? netns.path : undefined;
  return new RtnlSocket(socket, slowFd, label, opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
}

export interface NetlinkOptions {
  /** A request whose reply has not come by then fails (ETIMEDOUT); default 10 s. */
  requestTimeoutMs?: number;
}

/**
 * The kernel answers rtnetlink requests in microseconds; a reply this late is lost, and waiting for it
 * forever would hold the network lock of every ADD behind it (in berthd, until restart).
 */
const REQUEST_TIMEOUT_MS = 10_000;

/** Runs `fn` with a socket in `netns` and closes it afterwards, also on failure. */
export async function withNetlink<T>(
  netns: NetnsSpec | undefined,
  fn: (nl: Netlink) => Promise<T>,
): Promise<T> {
  const nl = openNetlink(netns);
  try {
    return await fn(nl);
  } finally {
    nl.close();
  }
}

function macToBytes(mac: string): Buffer {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new NetlinkError({
      code: 'EINVAL',
      errno: -22,
      op: 'parse mac',
      object: mac,
      message: `not a MAC address: ${mac}`,
    });
  }
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

function bytesToMac(b: Buffer | undefined): string | undefined {
  if (b === undefined || b.length === 0) return undefined;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** A random locally administered unicast MAC, in the form links are read back with. */
export function randomLocalMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return bytesToMac(b)!;
}

function familyOf(f: IpFamily): number {
  return f === 4 ? AF.INET : AF.INET6;
}

function parseLink(data: Buffer): Link {
  const index = data.readInt32LE(4);
  const flags = data.readUInt32LE(8);
  const a = decodeAttrs(data, IFINFOMSG_LEN);
  const info = a.get(IFLA.LINKINFO);
  const infoAttrs = info !== undefined ? decodeAttrs(info) : undefined;
  const parent = readU32(a.get(IFLA.LINK));
  const alias = readStr(a.get(IFLA.IFALIAS));
  return {
    index,
    name: readStr(a.get(IFLA.IFNAME)) ?? '',
    kind: readStr(infoAttrs?.get(IFLA_INFO.KIND)),
    portKind: readStr(infoAttrs?.get(IFLA_INFO.SLAVE_KIND)),
    mtu: readU32(a.get(IFLA.MTU)) ?? 0,
    mac: bytesToMac(a.get(IFLA.ADDRESS)),
    up: (flags & IFF.UP) !== 0,
    lowerUp: (flags & IFF.LOWER_UP) !== 0,
    operState: OPERSTATES[readU8(a.get(IFLA.OPERSTATE)) ?? 0] ?? 'unknown',
    flags,
    masterIndex: readU32(a.get(IFLA.MASTER)),
    // IFLA_LINK equal to the link itself means "no parent" (e.g. lo reports its own index).
    parentIndex: parent !== undefined && parent !== index ? parent : undefined,
    linkNetnsId: a.has(IFLA.LINK_NETNSID) ? a.get(IFLA.LINK_NETNSID)!.readInt32LE(0) : undefined,
    alias: alias === '' ? undefined : alias,
    promiscuity: readU32(a.get(IFLA.PROMISCUITY)) ?? 0,
    promisc: (flags & IFF.PROMISC) !== 0,
  };
}

function parseAddress(data: Buffer): Address {
  const family = data.readUInt8(0) === AF.INET ? 4 : 6;
  const a = decodeAttrs(data, IFADDRMSG_LEN);
  const flags = readU32(a.get(IFA.FLAGS)) ?? data.readUInt8(2);
  const raw = a.get(IFA.LOCAL) ?? a.get(IFA.ADDRESS);
  return {
    index: data.readUInt32LE(4),
    family,
    address: raw !== undefined ? bytesToIp(raw) : '',
    prefixLength: data.readUInt8(1),
    scope: data.readUInt8(3),
    flags,
    tentative: (flags & IFA_F.TENTATIVE) !== 0,
    dadFailed: (flags & IFA_F.DADFAILED) !== 0,
    nodad: (flags & IFA_F.NODAD) !== 0,
    permanent: (flags & IFA_F.PERMANENT) !== 0,
    label: readStr(a.get(IFA.LABEL)),
  };
}

/** A next hop's address: RTA_GATEWAY, or RTA_VIA (struct rtvia: u16 family, then a next hop of the other family). */
function gatewayOf(a: Map<number, Buffer>): string | undefined {
  const via = a.get(RTA.VIA);
  const gw = a.get(RTA.GATEWAY) ?? (via !== undefined && via.length > 2 ? via.subarray(2) : undefined);
  return gw !== undefined ? bytesToIp(gw) : undefined;
}

/**
 * A route as listed: one entry per next hop, so that a multipath route (RTA_MULTIPATH: rtnexthop structs,
 * each with its ifindex and its own RTA_GATEWAY or RTA_VIA) shows each of its gateways and interfaces.
 */
function parseRoutes(data: Buffer): Route[] {
  const family = data.readUInt8(0) === AF.INET ? 4 : 6;
  const dstLen = data.readUInt8(1);
  const a = decodeAttrs(data, RTMSG_LEN);
  const dst = a.get(RTA.DST);
  const prefsrc = a.get(RTA.PREFSRC);
  const route: Route = {
    family,
    dst: `${dst !== undefined ? bytesToIp(dst) : family === 4 ? '0.0.0.0' : '::'}/${dstLen}`,
    gateway: gatewayOf(a),
    oif: readU32(a.get(RTA.OIF)),
    priority: readU32(a.get(RTA.PRIORITY)),
    table: readU32(a.get(RTA.TABLE)) ?? data.readUInt8(4),
    scope: data.readUInt8(6),
    protocol: data.readUInt8(5),
    type: data.readUInt8(7),
    prefsrc: prefsrc !== undefined ? bytesToIp(prefsrc) : undefined,
  };
  const multipath = a.get(RTA.MULTIPATH);
  if (multipath === undefined) return [route];
  const hops: Route[] = [];
  for (let pos = 0; pos + 8 <= multipath.length;) {
    const len = multipath.readUInt16LE(pos);
    if (len < 8 || pos + len > multipath.length) break;
    const hop = decodeAttrs(multipath.subarray(pos + 8, pos + len));
    hops.push({ ...route, oif: multipath.readInt32LE(pos + 4), gateway: gatewayOf(hop) });
    pos += align4(len);
  }
  return hops.length > 0 ? hops : [route];
}

function refLabel(ref: LinkRef): string {
  return typeof ref === 'number' ? `ifindex ${ref}` : ref;
}

/** ifinfomsg index + IFLA_IFNAME selecting a link by name (index 0) or by index. */
function select(ref: LinkRef): { index: number; attrs: Attr[] } {
  return typeof ref === 'number' ? { index: ref, attrs: [] } : { index: 0, attrs: [[IFLA.IFNAME, str(ref)]] };
}

class RtnlSocket implements Netlink {
  /** Set once the socket failed: every request from then on fails with it. */
  private broken: Error | undefined;
  /** Rejections of the requests waiting for a reply, so a socket error fails them instead of leaving them. */
  private readonly pending = new Set<(err: Error) => void>();
  /** The slow requests on `slowFd`, chained: one acknowledgement is awaited per socket at a time. */
  private slowQueue: Promise<unknown> = Promise.resolve();
  private slowSeq = 0;
  private seq = 0;
  /** The NLMSG_DONE ending each reply a request on `socket` waits for, by sequence number. */
  private readonly dumpEnds = new Map<number, { done?: NetlinkMessage }>();

  constructor(
    private readonly socket: NetlinkSocket,
    /**
     * A second socket of the same namespace for the requests whose kernel work is long (a veth's creation
     * and deletion: the kernel does it inside sendmsg, in the sender's thread, ~20 ms for a deletion's RCU
     * grace periods). Sent from a libuv pool thread (native netlinkRequest), so berthd's event loop serves
     * other calls meanwhile and concurrent deletions overlap in the kernel instead of queueing behind the
     * event loop. Undefined with an addon built before it: those requests then go on `socket`.
     */
    private slowFd: number | undefined,
    readonly netns: string | undefined,
    private readonly timeoutMs: number,
  ) {
    // Without a listener an 'error' event is thrown: in berthd, an uncaught exception ending every call.
    socket.on('error', (err: Error) => {
      this.broken = err;
      for (const fail of this.pending) fail(err);
      this.pending.clear();
    });
    // The library hands a request its dump without the NLMSG_DONE, and with it what the kernel says only there:
    // the error that ended a dump early (its payload) and NLM_F_DUMP_INTR when the table changed near the end.
    // It is kept here for the waiting request (protected in the library; reached through its instance).
    const lib = socket as unknown as {
      emitMessage(msg: NetlinkMessage | NetlinkMessage[], rinfo: unknown): unknown;
    };
    const emitMessage = lib.emitMessage.bind(socket);
    lib.emitMessage = (msg, rinfo) => {
      const done = Array.isArray(msg) ? msg[msg.length - 1] : undefined;
      if (done !== undefined && done.type === NLMSG_DONE) {
        const slot = this.dumpEnds.get(done.seq);
        if (slot !== undefined) slot.done = done;
      }
      return emitMessage(msg, rinfo);
    };
  }

  close(): void {
    this.socket.close();
    const fd = this.slowFd;
    this.slowFd = undefined;
    // Closed once a request still in flight on a pool thread is done, so its fd cannot be reused under it.
    if (fd !== undefined) {
      void this.slowQueue.then(() => {
        try {
          closeSync(fd);
        } catch {
          // Nothing to do about a failed close; it must not become an unhandled rejection in berthd.
        }
      });
    }
  }

  /**
   * One acknowledged request sent from a pool thread on `slowFd` (see there); on `socket` without one.
   * Errors as `request`'s.
   */
  private async slowRequest(type: number, payload: Buffer, flags: number, object: string): Promise<void> {
    const fd = this.slowFd;
    const send = loadNativeAddon().netlinkRequest;
    if (fd === undefined || send === undefined) {
      await this.request(type, payload, flags, object);
      return;
    }
    const op = RTM_NAMES[type] ?? `RTM ${type}`;
    this.slowSeq = (this.slowSeq + 1) >>> 0;
    const header = nlmsghdr(
      NLMSG_HDRLEN + payload.length,
      type,
      flags | NLM_F_REQUEST | NLM_F_ACK,
      this.slowSeq,
    );
    const message = Buffer.concat([header, payload]);
    const run = (): Promise<number> => send(fd, message, this.timeoutMs);
    const sent = this.slowQueue.then(run, run);
    this.slowQueue = sent.catch(() => undefined);
    let errno: number;
    try {
      errno = await sent;
    } catch (err) {
      throw toNetlinkError(err, op, this.where(object));
    }
    if (errno !== 0) throw fromErrno(errno, op, this.where(object));
  }

  /**
   * One request and its reply (a dump's NLMSG_DONE apart, as `done`), failed by a socket error or after the
   * timeout. One request at a time per socket: every caller awaits each before the next (the library keeps
   * one multipart buffer, and the kernel refuses a second dump while one is unfinished: EBUSY); calls that
   * run side by side use sockets of their own.
   */
  private async send(
    type: number,
    payload: Buffer,
    flags: number,
  ): Promise<{ msgs: NetlinkMessage[]; done: NetlinkMessage | undefined }> {
    if (this.broken !== undefined) throw this.broken;
    let fail: (err: Error) => void = () => undefined;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    this.pending.add(fail);
    this.seq = (this.seq % 0xffffffff) + 1;
    const seq = this.seq;
    const slot: { done?: NetlinkMessage } = {};
    this.dumpEnds.set(seq, slot);
    const reply = this.socket
      .request(type, payload, {
        flags,
        seq,
        checkError: false,
        timeout: this.timeoutMs,
        // The kernel routes replies by the socket, not by nlmsg_pid (iproute2 sends 0 too); without it
        // the library asks the kernel for the socket's address (getsockname) on every request.
        localPort: 0,
      })
      .catch((err: unknown) => {
        if (!(err instanceof Error) || err.message !== 'Timeout has been reached') throw err;
        throw Object.assign(new Error(`no reply from the kernel within ${this.timeoutMs} ms`), {
          code: 'ETIMEDOUT',
        });
      });
    try {
      const [msgs] = await Promise.race([reply, failed]);
      return { msgs, done: slot.done };
    } finally {
      this.pending.delete(fail);
      this.dumpEnds.delete(seq);
    }
  }

  /**
   * Sends one request and returns the payloads of the reply; NLMSG_ERROR becomes a NetlinkError. A dump
   * that the kernel marks inconsistent (NLM_F_DUMP_INTR: the table changed under it) is retried, up to
   * 5 attempts in all, the last one accepted as is (the Go plugins' netlinksafe does the same).
   */
  private async request(type: number, payload: Buffer, flags: number, object: string): Promise<Buffer[]> {
    const op = RTM_NAMES[type] ?? `RTM ${type}`;
    const dump = (flags & NLM_F.DUMP) === NLM_F.DUMP;
    let reply;
    for (let attempt = 1; ; attempt++) {
      try {
        reply = await this.send(type, payload, flags);
      } catch (err) {
        throw toNetlinkError(err, op, this.where(object));
      }
      const interrupted = [...reply.msgs, ...(reply.done !== undefined ? [reply.done] : [])].some(
        (m) => (m.flags & NLM_F_DUMP_INTR) !== 0,
      );
      if (!dump || attempt >= 5 || !interrupted) break;
    }
    const { msgs, done } = reply;
    // A dump the kernel ended with an error (its NLMSG_DONE carries it) is not the whole table.
    const doneErrno = done !== undefined && done.data.length >= 4 ? done.data.readInt32LE(0) : 0;
    if (doneErrno < 0) throw fromErrno(doneErrno, op, this.where(object));
    const first = msgs[0];
    if (first !== undefined && first.type === NLMSG_ERROR) {
      const errno = first.data.readInt32LE(0);
      if (errno !== 0) throw fromErrno(errno, op, this.where(object));
      return [];
    }
    return msgs.map((m) => m.data);
  }

  private where(object: string): string {
    return this.netns !== undefined ? `${object} (netns ${this.netns})` : object;
  }

  private async linkRequest(
    type: number,
    ref: LinkRef,
    m: { family?: number; flags?: number; change?: number },
    attrs: Attr[],
    nlFlags = 0,
  ): Promise<Buffer[]> {
    const sel = select(ref);
    const payload = Buffer.concat([
      ifinfomsg({ ...m, index: sel.index }),
      encodeAttrs([...sel.attrs, ...attrs]),
    ]);
    return this.request(type, payload, nlFlags, refLabel(ref));
  }

  private async indexOf(ref: LinkRef): Promise<number> {
    return typeof ref === 'number' ? ref : (await this.getLink(ref)).index;
  }

  async getLink(ref: LinkRef): Promise<Link> {
    const [reply] = await this.linkRequest(RTM.GETLINK, ref, {}, [
      [IFLA.EXT_MASK, u32(RTEXT_FILTER.SKIP_STATS)],
    ]);
    if (reply === undefined) throw fromErrno(-19, 'RTM_GETLINK', this.where(refLabel(ref)));
    return parseLink(reply);
  }

  async findLink(ref: LinkRef): Promise<Link | undefined> {
    try {
      return await this.getLink(ref);
    } catch (err) {
      if (err instanceof NetlinkError && err.code === 'ENODEV') return undefined;
      throw err;
    }
  }

  async listLinks(): Promise<Link[]> {
    const payload = Buffer.concat([
      ifinfomsg({}),
      encodeAttrs([[IFLA.EXT_MASK, u32(RTEXT_FILTER.SKIP_STATS)]]),
    ]);
    const replies = await this.request(RTM.GETLINK, payload, NLM_F.DUMP, 'links');
    return replies.map(parseLink);
  }

  async createBridge(opts: BridgeOptions): Promise<Link> {
    const data: Attr[] = [];
    // Off is the kernel default, and kernels without CONFIG_BRIDGE_VLAN_FILTERING reject the attribute
    // whatever its value (EOPNOTSUPP), so it is only sent to turn filtering on.
    if (opts.vlanFiltering === true) data.push([IFLA_BR_VLAN_FILTERING, u8(1)]);
    const linkinfo: Attr[] = [[IFLA_INFO.KIND, str('bridge')]];
    if (data.length > 0) linkinfo.push([IFLA_INFO.DATA, data]);
    const attrs: Attr[] = [[IFLA.IFNAME, str(opts.name)]];
    if (opts.mtu !== undefined) attrs.push([IFLA.MTU, u32(opts.mtu)]);
    if (opts.mac !== undefined) attrs.push([IFLA.ADDRESS, macToBytes(opts.mac)]);
    attrs.push([IFLA.LINKINFO, linkinfo]);
    const payload = Buffer.concat([ifinfomsg({}), encodeAttrs(attrs)]);
    await this.request(RTM.NEWLINK, payload, NLM_F.CREATE | NLM_F.EXCL, opts.name);
    return this.getLink(opts.name);
  }

  async setBridgeVlanFiltering(bridge: LinkRef, on: boolean): Promise<void> {
    await this.linkRequest(RTM.NEWLINK, bridge, {}, [
      [
        IFLA.LINKINFO,
        [
          [IFLA_INFO.KIND, str('bridge')],
          [IFLA_INFO.DATA, [[IFLA_BR_VLAN_FILTERING, u8(on ? 1 : 0)]]],
        ],
      ],
    ]);
  }

  async createVethPair(opts: VethOptions): Promise<Link> {
    const peerNs: NetnsRef = typeof opts.peerNetns === 'object' ? opts.peerNetns : openNetns(opts.peerNetns);
    try {
      // VETH_INFO_PEER carries a whole struct ifinfomsg followed by the peer's own IFLA_* attributes.
      const peerAttrs: Attr[] = [
        [IFLA.IFNAME, str(opts.peerName)],
        [IFLA.NET_NS_FD, u32(peerNs.fd)],
      ];
      if (opts.mtu !== undefined) peerAttrs.push([IFLA.MTU, u32(opts.mtu)]);
      if (opts.peerMac !== undefined) peerAttrs.push([IFLA.ADDRESS, macToBytes(opts.peerMac)]);
      const peer = Buffer.concat([ifinfomsg({}), encodeAttrs(peerAttrs)]);
      const attrs: Attr[] = [[IFLA.IFNAME, str(opts.name)]];
      if (opts.mtu !== undefined) attrs.push([IFLA.MTU, u32(opts.mtu)]);
      if (opts.mac !== undefined) attrs.push([IFLA.ADDRESS, macToBytes(opts.mac)]);
      attrs.push([
        IFLA.LINKINFO,
        [
          [IFLA_INFO.KIND, str('veth')],
          [IFLA_INFO.DATA, [[VETH_INFO_PEER, peer]]],
        ],
      ]);
      const payload = Buffer.concat([ifinfomsg({}), encodeAttrs(attrs)]);
      await this.slowRequest(
        RTM.NEWLINK,
        payload,
        NLM_F.CREATE | NLM_F.EXCL,
        `${opts.name} (peer ${opts.peerName})`,
      );
    } finally {
      if (peerNs !== opts.peerNetns) peerNs.close();
    }
    // The pair exists from here: a failed lookup removes it, so the caller gets the link or nothing to undo.
    try {
      return await this.getLink(opts.name);
    } catch (err) {
      await this.deleteLink(opts.name).catch(() => undefined);
      throw err;
    }
  }

  async setUp(ref: LinkRef): Promise<void> {
    await this.linkRequest(RTM.SETLINK, ref, { flags: IFF.UP, change: IFF.UP }, []);
  }

  async setDown(ref: LinkRef): Promise<void> {
    await this.linkRequest(RTM.SETLINK, ref, { flags: 0, change: IFF.UP }, []);
  }

  async setMtu(ref: LinkRef, mtu: number): Promise<void> {
    await this.linkRequest(RTM.SETLINK, ref, {}, [[IFLA.MTU, u32(mtu)]]);
  }

  async setMac(ref: LinkRef, mac: string): Promise<void> {
    await this.linkRequest(RTM.SETLINK, ref, {}, [[IFLA.ADDRESS, macToBytes(mac)]]);
  }

  async setMaster(ref: LinkRef, master: LinkRef): Promise<void> {
    const masterIndex = await this.indexOf(master);
    await this.linkRequest(RTM.SETLINK, ref, {}, [[IFLA.MASTER, u32(masterIndex)]]);
  }

  async noMaster(ref: LinkRef): Promise<void> {
    await this.linkRequest(RTM.SETLINK, ref, {}, [[IFLA.MASTER, u32(0)]]);
  }

  async rename(ref: LinkRef, newName: string): Promise<void> {
    const index = await this.indexOf(ref);
    const payload = Buffer.concat([ifinfomsg({ index }), encodeAttrs([[IFLA.IFNAME, str(newName)]])]);
    await this.request(RTM.SETLINK, payload, 0, `${refLabel(ref)} -> ${newName}`);
  }

  async setAlias(ref: LinkRef, alias: string): Promise<void> {
    // An empty IFLA_IFALIAS removes the alias; a NUL-terminated one would be stored verbatim.
    await this.linkRequest(RTM.SETLINK, ref, {}, [
      [IFLA.IFALIAS, alias === '' ? Buffer.alloc(0) : Buffer.from(alias, 'utf8')],
    ]);
  }

  async setPromisc(ref: LinkRef, on: boolean): Promise<void> {
    await this.linkRequest(RTM.SETLINK, ref, { flags: on ? IFF.PROMISC : 0, change: IFF.PROMISC }, []);
  }

  async deleteLink(ref: LinkRef): Promise<void> {
    const sel = select(ref);
    const payload = Buffer.concat([ifinfomsg({ index: sel.index }), encodeAttrs(sel.attrs)]);
    await this.slowRequest(RTM.DELLINK, payload, 0, refLabel(ref));
  }

  async waitOperUp(ref: LinkRef, opts: WaitOptions = {}): Promise<Link> {
    const deadline = performance.now() + (opts.timeoutMs ?? 5000);
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      const link = await this.getLink(ref);
      if (link.operState === 'up') return link;
      if (performance.now() >= deadline) {
        throw new NetlinkError({
          code: 'ETIMEDOUT',
          errno: -110,
          op: 'wait operstate up',
          object: this.where(refLabel(ref)),
          message: `wait operstate up ${this.where(refLabel(ref))}: still ${link.operState} after ${opts.timeoutMs ?? 5000} ms`,
        });
      }
      await sleep(Math.min(delay, Math.max(1, deadline - performance.now())));
    }
  }

  async setBridgePort(ref: LinkRef, opts: BridgePortOptions): Promise<void> {
    const index = await this.indexOf(ref);
    const port: Attr[] = [];
    if (opts.hairpin !== undefined) port.push([IFLA_BRPORT.MODE, u8(opts.hairpin ? 1 : 0)]);
    if (opts.isolated !== undefined) port.push([IFLA_BRPORT.ISOLATED, u8(opts.isolated ? 1 : 0)]);
    if (opts.learning !== undefined) port.push([IFLA_BRPORT.LEARNING, u8(opts.learning ? 1 : 0)]);
    if (port.length === 0) return;
    // br_setlink only parses IFLA_PROTINFO as nested attributes when NLA_F_NESTED is set.
    const payload = Buffer.concat([
      ifinfomsg({ family: AF.BRIDGE, index }),
      encodeAttrs([[IFLA.PROTINFO | NLA_F_NESTED, port]]),
    ]);
    await this.request(RTM.SETLINK, payload, 0, refLabel(ref));
  }

  /** One AF_BRIDGE dump entry for `index`: IFLA_MASTER, IFLA_PROTINFO and IFLA_AF_SPEC. */
  private async bridgeEntry(ref: LinkRef): Promise<Map<number, Buffer> | undefined> {
    const index = await this.indexOf(ref);
    const payload = Buffer.concat([
      ifinfomsg({ family: AF.BRIDGE }),
      encodeAttrs([[IFLA.EXT_MASK, u32(RTEXT_FILTER.BRVLAN_COMPRESSED)]]),
    ]);
    const replies = await this.request(RTM.GETLINK, payload, NLM_F.DUMP, refLabel(ref));
    for (const r of replies) {
      if (r.readInt32LE(4) === index) return decodeAttrs(r, IFINFOMSG_LEN);
    }
    return undefined;
  }

  async getBridgePort(ref: LinkRef): Promise<BridgePort | undefined> {
    const index = await this.indexOf(ref);
    const entry = await this.bridgeEntry(index);
    const protinfo = entry?.get(IFLA.PROTINFO);
    if (entry === undefined || protinfo === undefined) return undefined;
    const p = decodeAttrs(protinfo);
    return {
      index,
      masterIndex: readU32(entry.get(IFLA.MASTER)),
      hairpin: readU8(p.get(IFLA_BRPORT.MODE)) === 1,
      isolated: readU8(p.get(IFLA_BRPORT.ISOLATED)) === 1,
      learning: readU8(p.get(IFLA_BRPORT.LEARNING)) === 1,
    };
  }

  private async vlanRequest(
    type: number,
    ref: LinkRef,
    vlans: readonly PortVlan[],
    opts: VlanOptions,
  ): Promise<void> {
    const index = await this.indexOf(ref);
    const spec: Attr[] = [];
    if (opts.self === true) spec.push([IFLA_BRIDGE.FLAGS, u16(BRIDGE_FLAGS.SELF)]);
    for (const v of vlans) {
      const flags =
        (v.pvid === true ? BRIDGE_VLAN_INFO.PVID : 0) | (v.untagged === true ? BRIDGE_VLAN_INFO.UNTAGGED : 0);
      const entry = (f: number, vid: number) => Buffer.concat([u16(f), u16(vid)]);
      if (v.vidEnd !== undefined && v.vidEnd !== v.vid) {
        spec.push([IFLA_BRIDGE.VLAN_INFO, entry(flags | BRIDGE_VLAN_INFO.RANGE_BEGIN, v.vid)]);
        spec.push([IFLA_BRIDGE.VLAN_INFO, entry(flags | BRIDGE_VLAN_INFO.RANGE_END, v.vidEnd)]);
      } else {
        spec.push([IFLA_BRIDGE.VLAN_INFO, entry(flags, v.vid)]);
      }
    }
    const payload = Buffer.concat([
      ifinfomsg({ family: AF.BRIDGE, index }),
      encodeAttrs([[IFLA.AF_SPEC, spec]]),
    ]);
    const what = vlans.map((v) => (v.vidEnd !== undefined ? `${v.vid}-${v.vidEnd}` : `${v.vid}`)).join(',');
    await this.request(type, payload, 0, `${refLabel(ref)} vlan ${what}`);
  }

  addPortVlans(ref: LinkRef, vlans: readonly PortVlan[], opts: VlanOptions = {}): Promise<void> {
    return this.vlanRequest(RTM.SETLINK, ref, vlans, opts);
  }

  delPortVlans(ref: LinkRef, vlans: readonly PortVlan[], opts: VlanOptions = {}): Promise<void> {
    return this.vlanRequest(RTM.DELLINK, ref, vlans, opts);
  }

  async listPortVlans(ref: LinkRef): Promise<PortVlan[]> {
    const entry = await this.bridgeEntry(ref);
    const spec = entry?.get(IFLA.AF_SPEC);
    if (spec === undefined) return [];
    const out: PortVlan[] = [];
    let begin: PortVlan | undefined;
    for (const [type, b] of decodeAttrList(spec)) {
      if (type !== IFLA_BRIDGE.VLAN_INFO || b.length < 4) continue;
      const flags = b.readUInt16LE(0);
      const vid = b.readUInt16LE(2);
      if ((flags & BRIDGE_VLAN_INFO.RANGE_END) !== 0 && begin !== undefined) {
        begin.vidEnd = vid;
        out.push(begin);
        begin = undefined;
        continue;
      }
      const v: PortVlan = { vid };
      if ((flags & BRIDGE_VLAN_INFO.PVID) !== 0) v.pvid = true;
      if ((flags & BRIDGE_VLAN_INFO.UNTAGGED) !== 0) v.untagged = true;
      if ((flags & BRIDGE_VLAN_INFO.RANGE_BEGIN) !== 0) begin = v;
      else out.push(v);
    }
    return out;
  }

  private async addressRequest(type: number, opts: AddressOptions, nlFlags: number): Promise<void> {
    const index = await this.indexOf(opts.link);
    const { ip } = parseCidr(opts.address);
    const family = ip.family;
    const bytes = ipToBytes(ip);
    const flags =
      (opts.nodad === true ? IFA_F.NODAD : 0) | (opts.noPrefixRoute === true ? IFA_F.NOPREFIXROUTE : 0);
    const attrs: Attr[] = [
      [IFA.LOCAL, bytes],
      [IFA.ADDRESS, bytes],
    ];
    if (family === 4 && type === RTM.NEWADDR && opts.prefixLength < 31) {
      attrs.push([IFA.BROADCAST, ipToBytes(ipv4Broadcast(opts.address, opts.prefixLength))]);
    }
    if (flags !== 0) attrs.push([IFA.FLAGS, u32(flags)]);
    const payload = Buffer.concat([
      ifaddrmsg({ family: familyOf(family), prefixLength: opts.prefixLength, flags, index }),
      encodeAttrs(attrs),
    ]);
    await this.request(
      type,
      payload,
      nlFlags,
      `${opts.address}/${opts.prefixLength} dev ${refLabel(opts.link)}`,
    );
  }

  addAddress(opts: AddressOptions): Promise<void> {
    return this.addressRequest(RTM.NEWADDR, opts, NLM_F.CREATE | NLM_F.EXCL);
  }

  delAddress(opts: AddressOptions): Promise<void> {
    return this.addressRequest(RTM.DELADDR, opts, 0);
  }

  async listAddresses(filter: AddressFilter = {}): Promise<Address[]> {
    const index = filter.link !== undefined ? await this.indexOf(filter.link) : undefined;
    const family = filter.family !== undefined ? familyOf(filter.family) : AF.UNSPEC;
    const payload = ifaddrmsg({ family, prefixLength: 0, index: 0 });
    const replies = await this.request(RTM.GETADDR, payload, NLM_F.DUMP, 'addresses');
    return replies
      .filter((r) => r[0] === AF.INET || r[0] === AF.INET6)
      .map(parseAddress)
      .filter((a) => index === undefined || a.index === index);
  }

  private async routeRequest(type: number, opts: RouteOptions, nlFlags: number): Promise<void> {
    const dst = parseCidr(opts.dst);
    const oif = opts.link !== undefined ? await this.indexOf(opts.link) : undefined;
    const table = opts.table ?? RT_TABLE.MAIN;
    const adding = type === RTM.NEWROUTE;
    // For deletion iproute2 leaves protocol/type as wildcards and uses scope nowhere to match any scope.
    const scope =
      opts.scope !== undefined
        ? RT_SCOPE[opts.scope]
        : !adding
          ? RT_SCOPE.nowhere
          : opts.gateway === undefined && oif !== undefined
            ? RT_SCOPE.link
            : RT_SCOPE.universe;
    const attrs: Attr[] = [];
    // The network of the destination: an IPAM route written with host bits (`10.1.2.3/24`, which libcni's
    // ParseCIDR keeps) is taken as its network, as the kernel does for IPv6; for IPv4 it answers EINVAL
    // (the reference bridge fails the ADD so).
    if (dst.prefix > 0) attrs.push([RTA.DST, ipToBytes(networkIp(dst))]);
    if (opts.gateway !== undefined) {
      const gw = ipToBytes(opts.gateway);
      const gwFamily = gw.length === 4 ? 4 : 6;
      if (gwFamily === dst.ip.family) attrs.push([RTA.GATEWAY, gw]);
      else attrs.push([RTA.VIA, Buffer.concat([u16(familyOf(gwFamily)), gw])]);
    }
    if (oif !== undefined) attrs.push([RTA.OIF, u32(oif)]);
    if (opts.priority !== undefined) attrs.push([RTA.PRIORITY, u32(opts.priority)]);
    if (opts.src !== undefined) attrs.push([RTA.PREFSRC, ipToBytes(opts.src)]);
    const metrics: Attr[] = [];
    if (opts.mtu !== undefined) metrics.push([RTAX.MTU, u32(opts.mtu)]);
    if (opts.advmss !== undefined) metrics.push([RTAX.ADVMSS, u32(opts.advmss)]);
    if (metrics.length > 0) attrs.push([RTA.METRICS, metrics]);
    attrs.push([RTA.TABLE, u32(table)]);
    const payload = Buffer.concat([
      rtmsg({
        family: familyOf(dst.ip.family),
        dstLen: dst.prefix,
        table: table < 256 ? table : RT_TABLE.UNSPEC,
        protocol: opts.protocol ?? (adding ? RTPROT.BOOT : 0),
        scope,
        type: adding ? RTN_UNICAST : 0,
      }),
      encodeAttrs(attrs),
    ]);
    const via = opts.gateway !== undefined ? ` via ${opts.gateway}` : '';
    const dev = opts.link !== undefined ? ` dev ${refLabel(opts.link)}` : '';
    await this.request(type, payload, nlFlags, `${opts.dst}${via}${dev}`);
  }

  addRoute(opts: RouteOptions): Promise<void> {
    return this.routeRequest(RTM.NEWROUTE, opts, NLM_F.CREATE | (opts.beside === true ? 0 : NLM_F.EXCL));
  }

  replaceRoute(opts: RouteOptions): Promise<void> {
    return this.routeRequest(RTM.NEWROUTE, opts, NLM_F.CREATE | NLM_F.REPLACE);
  }

  delRoute(opts: RouteOptions): Promise<void> {
    return this.routeRequest(RTM.DELROUTE, opts, 0);
  }

  async listRoutes(filter: RouteFilter = {}): Promise<Route[]> {
    const oif = filter.link !== undefined ? await this.indexOf(filter.link) : undefined;
    const family = filter.family !== undefined ? familyOf(filter.family) : AF.UNSPEC;
    const replies = await this.request(RTM.GETROUTE, rtmsg({ family }), NLM_F.DUMP, 'routes');
    return replies
      .filter((r) => r[0] === AF.INET || r[0] === AF.INET6) // not the multicast (RTNL_FAMILY_IPMR…) tables
      .flatMap(parseRoutes)
      .filter(
        (r) =>
          (filter.table === undefined || r.table === filter.table) &&
          (oif === undefined || r.oif === oif) &&
          (filter.protocol === undefined || r.protocol === filter.protocol),
      );
  }
}
