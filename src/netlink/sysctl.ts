// sysctls of a given network namespace: /proc/sys/net follows the namespace of whoever *opens* the file,
// so the file is opened inside withNetns and read or written through that descriptor.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { toNetlinkError } from './errors';
import { withNetns, type NetnsSpec } from './netns';

/**
 * `/proc/sys/…` for a key. Dotted keys (`net.ipv4.ip_forward`) have every dot turned into a slash;
 * interface names may contain dots (`eth0.100`), so keys naming an interface should be passed in slash
 * form (`net/ipv6/conf/eth0.100/accept_ra`), which is used as is. An absolute path is taken verbatim.
 */
export function sysctlPath(key: string): string {
  if (key.startsWith('/')) return key;
  return `/proc/sys/${key.includes('/') ? key : key.replace(/\./g, '/')}`;
}

function openIn(path: string, flags: 'r' | 'w', netns: NetnsSpec | undefined): number {
  return netns === undefined ? openSync(path, flags) : withNetns(netns, () => openSync(path, flags));
}

function label(key: string, netns: NetnsSpec | undefined): string {
  if (netns === undefined) return key;
  return `${key} (netns ${typeof netns === 'object' ? (netns.path ?? `fd ${netns.fd}`) : netns})`;
}

/** Reads a sysctl (trimmed) in `netns` or the caller's namespace. ENOENT for an unknown key. */
export function readSysctl(key: string, netns?: NetnsSpec): string {
  let fd: number;
  try {
    fd = openIn(sysctlPath(key), 'r', netns);
  } catch (err) {
    throw toNetlinkError(err, 'sysctl read', label(key, netns));
  }
  try {
    const buf = Buffer.alloc(4096);
    const n = readSync(fd, buf, 0, buf.length, null);
    return buf.toString('utf8', 0, n).trim();
  } catch (err) {
    throw toNetlinkError(err, 'sysctl read', label(key, netns));
  } finally {
    closeSync(fd);
  }
}

/** Writes a sysctl in `netns` or the caller's namespace. ENOENT for an unknown key, EINVAL for a bad value. */
export function writeSysctl(key: string, value: string, netns?: NetnsSpec): void {
  let fd: number;
  try {
    fd = openIn(sysctlPath(key), 'w', netns);
  } catch (err) {
    throw toNetlinkError(err, 'sysctl write', label(key, netns));
  }
  try {
    writeSync(fd, value);
  } catch (err) {
    throw toNetlinkError(err, 'sysctl write', label(key, netns));
  } finally {
    closeSync(fd);
  }
}
