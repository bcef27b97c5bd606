// The bridge's only door to the kernel room (lint enforces it: no other file of src/bridge imports
// src/netlink): rtnetlink sockets on the host or in a pod's namespace, sysctls there, namespaces, nftables
// and the kernel's errors. One place to adapt if the netlink room's entry points move.
import { readFileSync } from 'node:fs';
import { netlinkCode } from '../netlink/errors';
import { openNetlink } from '../netlink/rtnetlink';
import { readSysctl as nlReadSysctl, writeSysctl as nlWriteSysctl } from '../netlink/sysctl';
import type { NetnsSpec } from '../netlink/netns';
import type { Netlink } from '../netlink/types';

export type { Netlink };
export type { Link } from '../netlink/types';
export { netlinkCode, toKernelCniError } from '../netlink/errors';
export { isOwnNetns, openNetns, type NetnsRef } from '../netlink/netns';
export { type NftFamily } from '../netlink/nftables';
export { applyNft, nfnlListChain as readNftChain, readNftTable, type ListFocus } from '../netlink/nftnl';
export { RT_TABLE } from '../netlink/rtnl-codec';
export { randomLocalMac } from '../netlink/rtnetlink';

/** A socket in the plugin's own (host) namespace. */
export async function hostNetlink(): Promise<Netlink> {
  return openNetlink();
}

/** A socket bound to the pod's namespace (opened inside it, used from outside). */
export async function netnsNetlink(netns: string | number): Promise<Netlink> {
  return openNetlink(netns);
}

/**
 * A host interface's MAC when it was set explicitly (sysfs `addr_assign_type` 3, NET_ADDR_SET) rather than
 * chosen by the kernel, which for a bridge means following its lowest port; undefined when not pinned or
 * unreadable. Read after the pin is seen, so it is the MAC the interface keeps.
 */
export function pinnedMac(ifname: string): string | undefined {
  try {
    if (readFileSync(`/sys/class/net/${ifname}/addr_assign_type`, 'utf8').trim() !== '3') return undefined;
    return readFileSync(`/sys/class/net/${ifname}/address`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Keys naming an interface must be in slash form (interface names may contain dots). */
export function writeSysctl(netns: NetnsSpec | undefined, key: string, value: string): void {
  nlWriteSysctl(key, value, netns);
}

export function readSysctl(netns: NetnsSpec | undefined, key: string): string {
  return nlReadSysctl(key, netns);
}

/** Best-effort sysctl write (the reference ignores these failures, e.g. on hosts booted with ipv6.disable=1). */
export function trySysctl(netns: NetnsSpec | undefined, key: string, value: string): void {
  try {
    nlWriteSysctl(key, value, netns);
  } catch {
    // missing key (IPv6 disabled, interface gone): nothing to set
  }
}

export function isCode(err: unknown, ...codes: string[]): boolean {
  const c = netlinkCode(err);
  return c !== undefined && codes.includes(c);
}
