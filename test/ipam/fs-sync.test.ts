// berthd's group commit across networks (src/ipam/daemon/fs-sync.ts): one syncfs at a time per filesystem,
// callers that arrive while a round runs share the next one, and an error reaches every caller of its round.
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { FilesystemSync } from '../../src/ipam/daemon/fs-sync';

let dir: string;
let syncer: FilesystemSync | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-fssync-`));
});

afterEach(() => {
  syncer?.close();
  syncer = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/** A syncfs stand-in that counts calls and lets the test end each round. */
function scriptedSyncfs(): {
  calls: number[];
  inFlight: () => number;
  end: (err?: Error) => void;
  fn: (fd: number) => Promise<void>;
} {
  const calls: number[] = [];
  const pending: { resolve: () => void; reject: (e: Error) => void }[] = [];
  return {
    calls,
    inFlight: () => pending.length,
    end: (err) => {
      const p = pending.shift()!;
      if (err) p.reject(err);
      else p.resolve();
    },
    fn: (fd) => {
      calls.push(fd);
      return new Promise<void>((resolve, reject) => pending.push({ resolve, reject }));
    },
  };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('FilesystemSync', () => {
  test('at most two rounds at once per filesystem; callers meanwhile share the next one', async () => {
    const s = scriptedSyncfs();
    syncer = new FilesystemSync(s.fn);
    const dev = statSync(dir).dev;
    mkdirSync(join(dir, 'a'));
    mkdirSync(join(dir, 'b'));
    const first = syncer.sync(dev, join(dir, 'a'));
    const second = syncer.sync(dev, join(dir, 'b'));
    // Two networks on the same filesystem, five callers while two rounds run.
    const during = [1, 2, 3, 4, 5].map((i) => syncer!.sync(dev, join(dir, i % 2 === 0 ? 'a' : 'b')));
    await tick();
    expect(s.calls).toHaveLength(2);
    expect(s.inFlight()).toBe(2);
    s.end();
    expect((await first).round).toBe(1);
    await tick();
    // The five are covered by one round that started after they called.
    expect(s.calls).toHaveLength(3);
    s.end();
    expect((await second).round).toBe(2);
    s.end();
    const rounds = await Promise.all(during);
    expect(rounds.map((r) => r.round)).toEqual([3, 3, 3, 3, 3]);
    // One descriptor for the filesystem, whichever directory asked.
    expect(new Set(s.calls).size).toBe(1);
  });

  test('an error fails every round in flight and every caller waiting; later callers get a fresh try', async () => {
    const s = scriptedSyncfs();
    syncer = new FilesystemSync(s.fn);
    const dev = statSync(dir).dev;
    const a = syncer.sync(dev, dir);
    const b = syncer.sync(dev, dir);
    const waiting = syncer.sync(dev, dir);
    await tick();
    expect(s.inFlight()).toBe(2);
    // The kernel reports the error to the first round that checks, not necessarily the one it concerns.
    s.end(Object.assign(new Error('syncfs EIO'), { code: 'EIO' }));
    await expect(a).rejects.toMatchObject({ code: 'EIO' });
    await expect(b).rejects.toMatchObject({ code: 'EIO' });
    await expect(waiting).rejects.toMatchObject({ code: 'EIO' });
    // b's own syncfs then succeeds: too late, it stays failed.
    s.end();
    await tick();
    const later = syncer.sync(dev, dir);
    await tick();
    s.end();
    expect((await later).round).toBe(3);
  });
  test('with the real syncfs (the default)', async () => {
    syncer = new FilesystemSync();
    const r = await syncer.sync(statSync(dir).dev, dir);
    expect(r.round).toBe(1);
    expect(r.seconds).toBeGreaterThan(0);
  });
});
