// openNetlink when the main socket cannot be made (no descriptor left, EMFILE): the pool thread's socket,
// opened just before, is closed again, and the failure is a NetlinkError of op 'socket' (berthd keeps running
// and the call fails with a CNI error instead of leaking a descriptor per call).
import { readdirSync, readlinkSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { NetlinkError } from '../../src/netlink/errors';
import { openNetlink } from '../../src/netlink/rtnetlink';
import { loadNativeAddon } from '../../src/native-addon';

vi.mock('netlink/dist/netlink', async (importOriginal) => ({
  ...(await importOriginal<typeof import('netlink/dist/netlink')>()),
  createNetlink: () => {
    throw Object.assign(new Error('Too many open files'), { code: 'EMFILE', errno: -24 });
  },
}));

/** Netlink sockets this process holds (`/proc/self/net/netlink` would list every process's). */
function socketFds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      // closed while listing (the listing's own descriptor)
    }
  }
  return n;
}

describe('rtnetlink socket creation failure', () => {
  it('closes the pool-thread socket and reports a NetlinkError of op socket', () => {
    // Without the addon's socket there would be nothing to leak, and the test would prove nothing.
    expect(typeof loadNativeAddon().netlinkOpen).toBe('function');
    const before = socketFds();
    let thrown: unknown;
    try {
      openNetlink();
    } catch (err) {
      thrown = err;
    }
    expect(socketFds()).toBe(before);
    expect(thrown).toBeInstanceOf(NetlinkError);
    expect(thrown).toMatchObject({ op: 'socket', code: 'EMFILE' });
  });
});
