// An rtnetlink socket in a process that serves many calls (berthd): a socket error fails that socket's
// requests (it must not become an uncaught exception ending every call), and a lost reply times out.
import { describe, expect, it } from 'vitest';
import { openNetlink } from '../../src/netlink/rtnetlink';

// The node_netlink socket under our wrapper (private there; reached here to inject faults).
interface Inner {
  emit(event: 'error', err: Error): boolean;
  send(...args: unknown[]): number;
  generateSeq(): number;
}
const inner = (nl: object): Inner => (nl as { socket: Inner }).socket;

describe('rtnetlink socket failures', () => {
  it('a socket error fails the pending request and the later ones, and throws nothing', async () => {
    const nl = openNetlink();
    try {
      const pending = nl.listLinks();
      expect(() =>
        inner(nl).emit('error', Object.assign(new Error('boom'), { code: 'ENOBUFS' })),
      ).not.toThrow();
      await expect(pending).rejects.toMatchObject({ code: 'ENOBUFS' });
      await expect(nl.getLink('lo')).rejects.toMatchObject({ code: 'ENOBUFS' });
    } finally {
      nl.close();
    }
  });

  it('a reply that never comes fails with ETIMEDOUT after the request timeout', async () => {
    const nl = openNetlink(undefined, { requestTimeoutMs: 200 });
    try {
      const sock = inner(nl);
      // The request is "sent" but never reaches the kernel, so no reply will come.
      sock.send = () => sock.generateSeq();
      const t0 = Date.now();
      await expect(nl.getLink('lo')).rejects.toMatchObject({ code: 'ETIMEDOUT' });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    } finally {
      nl.close();
    }
  });
});
