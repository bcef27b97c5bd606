// Root-test fixtures for the kernel room: uniquely named namespaces, links and nft tables, independent
// observers (ip/bridge/nft/sysctl in JSON), and cleanup that runs even when a test fails.
import { execFileSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { NetlinkError } from '../../src/netlink/errors';

export function sh(cmd: string, args: readonly string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function trySh(cmd: string, args: readonly string[]): string | undefined {
  try {
    return sh(cmd, args);
  } catch {
    return undefined;
  }
}

/** The thread's netns as the kernel sees it, read without our code. */
export function threadNetns(): string {
  return readlinkSync('/proc/thread-self/ns/net');
}

/** Where a test does its work: the host namespace, or a pod namespace by name (and path). */
export interface Place {
  label: 'host' | 'pod';
  /** `ip netns` name, undefined for the host. */
  nsName: string | undefined;
  /** Path for our API, undefined for the host. */
  path: string | undefined;
}

let counter = 0;

/** Everything one test creates; `cleanup()` removes it all (netns, host links, nft tables). */
export class KernelFixture {
  readonly prefix: string;
  private readonly netnses: string[] = [];
  private readonly hostLinks: string[] = [];
  private readonly nftTables: Array<[string, string]> = [];

  constructor() {
    // bt<pid><letter>: unique on the machine and leaves room for a 2-3 byte suffix in a 15-byte link name.
    this.prefix = `bt${process.pid}${String.fromCharCode(97 + (counter++ % 26))}`;
  }

  /** A link name with this fixture's prefix (kernel limit: 15 bytes). */
  name(suffix: string): string {
    const n = `${this.prefix}${suffix}`;
    if (Buffer.byteLength(n) > 15) throw new Error(`link name too long: ${n}`);
    return n;
  }

  addNetns(suffix: string): Place {
    const nsName = `${this.prefix}-${suffix}`;
    sh('ip', ['netns', 'add', nsName]);
    this.netnses.push(nsName);
    return { label: 'pod', nsName, path: `/var/run/netns/${nsName}` };
  }

  /** Remember a link created in the host namespace (deleting it also removes a veth peer elsewhere). */
  hostLink(name: string): string {
    this.hostLinks.push(name);
    return name;
  }

  nftTable(family: string, name: string): string {
    this.nftTables.push([family, name]);
    return name;
  }

  cleanup(): void {
    for (const l of this.hostLinks.splice(0).reverse()) trySh('ip', ['link', 'del', l]);
    for (const n of this.netnses.splice(0).reverse()) trySh('ip', ['netns', 'del', n]);
    for (const [f, t] of this.nftTables.splice(0)) trySh('nft', ['delete', 'table', f, t]);
  }
}

export const HOST: Place = { label: 'host', nsName: undefined, path: undefined };

/** Runs an observer command in `place` (ip netns exec for a pod). */
export function observe(place: Place, cmd: string, args: readonly string[]): string {
  return place.nsName === undefined ? sh(cmd, args) : sh('ip', ['netns', 'exec', place.nsName, cmd, ...args]);
}

export function observeJson<T = any>(place: Place, cmd: string, args: readonly string[]): T {
  const out = observe(place, cmd, ['-j', ...args]).trim();
  return JSON.parse(out === '' ? '[]' : out) as T;
}

/** `ip -j -d link show dev X` in `place`, or undefined when the link does not exist. */
export function ipLink(place: Place, name: string): any | undefined {
  try {
    return observeJson<any[]>(place, 'ip', ['-d', 'link', 'show', 'dev', name])[0];
  } catch {
    return undefined;
  }
}

/** Leftovers carrying a process-wide prefix: netns names, host links, nft tables. */
export function leftovers(pidPrefix: string): string[] {
  const out: string[] = [];
  for (const line of sh('ip', ['netns', 'list']).split('\n'))
    if (line.startsWith(pidPrefix)) out.push(`netns ${line}`);
  for (const l of JSON.parse(sh('ip', ['-j', 'link', 'show'])) as Array<{ ifname: string }>) {
    if (l.ifname.startsWith(pidPrefix)) out.push(`link ${l.ifname}`);
  }
  for (const line of sh('nft', ['list', 'tables']).split('\n'))
    if (line.includes(pidPrefix)) out.push(`nft ${line}`);
  return out;
}

/** Whether this kernel has CONFIG_BRIDGE_VLAN_FILTERING (some minimal VM kernels do not). */
export function kernelHasBridgeVlans(): boolean {
  const name = `bt${process.pid}vq`;
  const ok = trySh('ip', ['link', 'add', name, 'type', 'bridge', 'vlan_filtering', '1']) !== undefined;
  if (ok) trySh('ip', ['link', 'del', name]);
  return ok;
}

/**
 * The hooks every kernel test file needs, registered once: after each test, close the sockets it opened,
 * remove what its fixtures made and check the thread is back in its original namespace; after the file,
 * check nothing named after this process is left. `fresh()` gives a test its fixture, `track()` a socket.
 */
export function useKernelFixture(): {
  fresh(): KernelFixture;
  track<T extends { close(): void }>(socket: T): T;
} {
  const fixtures: KernelFixture[] = [];
  const sockets: { close(): void }[] = [];
  let original = '';
  beforeAll(() => {
    original = threadNetns();
  });
  afterEach(() => {
    for (const s of sockets.splice(0)) s.close();
    for (const f of fixtures.splice(0)) f.cleanup();
    expect(threadNetns()).toBe(original);
  });
  afterAll(() => {
    expect(leftovers(`bt${process.pid}`)).toEqual([]);
  });
  return {
    fresh: () => {
      const f = new KernelFixture();
      fixtures.push(f);
      return f;
    },
    track: (socket) => {
      sockets.push(socket);
      return socket;
    },
  };
}

/** The NetlinkError a promise rejects with (fails the test if it resolves or rejects with something else). */
export async function rejection(p: Promise<unknown>): Promise<NetlinkError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(NetlinkError);
    return e as NetlinkError;
  }
  throw new Error('expected a rejection');
}
