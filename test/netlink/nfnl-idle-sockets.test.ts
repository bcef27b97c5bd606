// The idle nfnetlink sockets berth keeps in its own namespace (src/netlink/nftnl.ts): closing one after a
// deleting transaction waits for the kernel's RCU grace period, so they are kept; failed ones are not.
import { describe, expect, it } from 'vitest';
import { IdleSockets } from '../../src/netlink/nftnl';

class FakeSocket {
  failed = false;
  closed = false;
  held = true;
  close(): void {
    this.closed = true;
  }
  ref(held: boolean): void {
    this.held = held;
  }
}

describe('idle nfnetlink sockets', () => {
  it('keeps a socket given back and hands the same one out again, unreferenced while idle', () => {
    const pool = new IdleSockets<FakeSocket>(2);
    expect(pool.take()).toBeUndefined();
    const s = new FakeSocket();
    pool.give(s);
    expect(s.closed).toBe(false);
    expect(s.held).toBe(false);
    expect(pool.size).toBe(1);
    expect(pool.take()).toBe(s);
    expect(s.held).toBe(true);
    expect(pool.size).toBe(0);
  });

  it('closes a socket that failed instead of keeping it', () => {
    const pool = new IdleSockets<FakeSocket>(2);
    const s = new FakeSocket();
    s.failed = true;
    pool.give(s);
    expect(s.closed).toBe(true);
    expect(pool.size).toBe(0);
    expect(pool.take()).toBeUndefined();
  });

  it('closes instead of handing out a socket that failed while idle, or that cannot be held again', () => {
    const pool = new IdleSockets<FakeSocket>(3);
    const broken = new FakeSocket();
    const closedUnderneath = new FakeSocket();
    const good = new FakeSocket();
    pool.give(good);
    pool.give(closedUnderneath);
    pool.give(broken);
    // A socket error while idle; and one the library closed itself, so that holding it throws.
    broken.failed = true;
    closedUnderneath.ref = () => {
      throw new Error('Netlink socket is closed');
    };
    expect(pool.take()).toBe(good);
    expect(broken.closed).toBe(true);
    expect(closedUnderneath.closed).toBe(true);
    expect(pool.size).toBe(0);
  });

  it('keeps at most its limit and closes the sockets beyond it', () => {
    const pool = new IdleSockets<FakeSocket>(2);
    const sockets = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
    for (const s of sockets) pool.give(s);
    expect(sockets.map((s) => s.closed)).toEqual([false, false, true]);
    expect(pool.size).toBe(2);
  });
});
