// The bridge's locks as berthd uses them: many requests of one process take the same network lock; the
// in-process queue hands it over in arrival order without polling, and the flock behind it still keeps
// other processes (standalone plugins) out.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { networkLockFile, withNetworkLock } from '../../src/bridge/lock';

// Every flock attempt the lock module makes, and whether it got the lock.
const attempts = vi.hoisted(() => [] as { mode: string; got: boolean }[]);
vi.mock('../../src/native-addon', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/native-addon')>();
  return {
    ...real,
    loadNativeAddon: () => {
      const addon = real.loadNativeAddon();
      return {
        flock: (fd: number, mode: 'ex' | 'sh' | 'un', nonBlocking?: boolean) => {
          const got = addon.flock(fd, mode, nonBlocking);
          attempts.push({ mode, got });
          return got;
        },
      };
    },
  };
});

let runDir: string;
beforeEach(() => {
  runDir = mkdtempSync(join(tmpdir(), `bt${process.pid}-lock-`));
});
afterEach(() => {
  vi.restoreAllMocks();
  rmSync(runDir, { recursive: true, force: true });
});

describe('withNetworkLock inside one process', () => {
  it('hands the lock over in arrival order, one flock attempt per take (no polling)', async () => {
    attempts.length = 0;
    const order: number[] = [];
    let holders = 0;
    await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        withNetworkLock({ network: 'n1', runDir }, async () => {
          holders++;
          expect(holders).toBe(1);
          order.push(i);
          await new Promise((r) => setTimeout(r, 3));
          holders--;
        }),
      ),
    );
    expect(order).toEqual([...Array(12).keys()]);
    // Without the queue, waiters poll flock and most attempts fail.
    expect(attempts.filter((a) => a.mode === 'ex')).toEqual(Array(12).fill({ mode: 'ex', got: true }));
  });

  it('a failing holder passes the lock on; other networks do not wait', async () => {
    const failing = withNetworkLock({ network: 'n1', runDir }, async () => {
      await new Promise((r) => setTimeout(r, 20));
      throw new Error('boom');
    });
    const t0 = Date.now();
    const other = await withNetworkLock({ network: 'n2', runDir }, async () => Date.now() - t0);
    expect(other).toBeLessThan(15);
    await expect(failing).rejects.toThrow('boom');
    expect(await withNetworkLock({ network: 'n1', runDir }, async () => 'next')).toBe('next');
  });

  it("still waits for another process's flock, and times out with code 11", async () => {
    const file = networkLockFile(runDir, 'n1');
    await withNetworkLock({ network: 'n1', runDir }, async () => undefined); // creates the file
    const holder = spawn('flock', [file, 'sh', '-c', 'echo held; sleep 0.5'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
      await expect(
        withNetworkLock({ network: 'n1', runDir, timeoutMs: 100 }, async () => 'x'),
      ).rejects.toMatchObject({ code: 11 });
      const t0 = Date.now();
      expect(await withNetworkLock({ network: 'n1', runDir }, async () => 'got it')).toBe('got it');
      expect(Date.now() - t0).toBeGreaterThan(100);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  /** A flock held by another process for `seconds`; resolves once it holds it. */
  async function heldElsewhere(seconds: number): Promise<ReturnType<typeof spawn>> {
    const file = networkLockFile(runDir, 'n1');
    await withNetworkLock({ network: 'n1', runDir }, async () => undefined); // creates the file
    const holder = spawn('flock', [file, 'sh', '-c', `echo held; sleep ${seconds}`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
    return holder;
  }

  /** Date.now stepped by `step` ms from 50 ms on. */
  function stepWallClock(step: number): void {
    const real = Date.now.bind(Date);
    const t0 = real();
    vi.spyOn(Date, 'now').mockImplementation(() => (real() - t0 > 50 ? real() + step : real()));
  }

  it('a wall clock stepped forward while waiting for the flock: the lock is still had once free', async () => {
    const holder = await heldElsewhere(0.4);
    try {
      stepWallClock(3_600_000);
      expect(await withNetworkLock({ network: 'n1', runDir, timeoutMs: 1_500 }, async () => 'got it')).toBe(
        'got it',
      );
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('a wall clock stepped back while waiting for the flock: the timeout still ends the wait', async () => {
    const holder = await heldElsewhere(3);
    try {
      stepWallClock(-3_600_000);
      const t0 = performance.now();
      await expect(
        withNetworkLock({ network: 'n1', runDir, timeoutMs: 300 }, async () => 'got it'),
      ).rejects.toMatchObject({ code: 11 });
      expect(performance.now() - t0).toBeLessThan(2_000);
    } finally {
      holder.kill('SIGKILL');
    }
  });
});
