// Serialises the host-side steps of ADD/DEL/GC that share state per network (bridge creation, gateway
// addresses, nftables sets) across concurrent plugin processes, with flock(2) on a file per network.
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { loadNativeAddon } from '../native-addon';

/**
 * A short stable key for a network name: names may hold characters that files and nftables object
 * names cannot, and nft names are limited in length.
 */
export function networkKey(network: string): string {
  return createHash('sha256').update(network).digest('hex').slice(0, 12);
}

export interface NetworkLockOptions {
  network: string;
  /** berth's run directory (BridgeDeps.runDir). */
  runDir: string;
  /** Gives up with code 11 (try again later) after this long; default 60 s. */
  timeoutMs?: number;
}

/**
 * The network's lock file. It stays after use: unlinking a flock file is racy by nature (a waiter holding
 * the old inode and a newcomer creating a new file would both "hold" the lock), and it is one empty file
 * on tmpfs. Only a caller that alone uses the network (berth demo's throw-away one) may remove it.
 */
export function networkLockFile(runDir: string, network: string): string {
  return join(runDir, 'bridge', `${networkKey(network)}.lock`);
}

/** Runs fn holding the network's exclusive lock; the lock is released when fn settles. */
export async function withNetworkLock<T>(opts: NetworkLockOptions, fn: () => Promise<T>): Promise<T> {
  const file = networkLockFile(opts.runDir, opts.network);
  return withFileLock({ file, what: `network "${opts.network}"`, timeoutMs: opts.timeoutMs }, fn);
}

/** The bridge's lock file (kept after use, as the network's). */
export function bridgeLockFile(runDir: string, bridge: string): string {
  return join(runDir, 'bridge', `br-${networkKey(bridge)}.lock`);
}

/**
 * Runs fn holding the lock of one bridge, for what networks sharing it (Multus: one bridge, a network per
 * VLAN) do to the bridge itself: creating it and attaching a port, its gateway addresses and `<bridge>.<vlan>`,
 * and a rollback's removal of a bridge it created. Without it, one network's rollback could remove the bridge
 * between another network's lookup and its port's attachment. Taken inside the network's lock, never around it.
 */
export async function withBridgeLock<T>(
  opts: { bridge: string; runDir: string; timeoutMs?: number },
  fn: () => Promise<T>,
): Promise<T> {
  const file = bridgeLockFile(opts.runDir, opts.bridge);
  return withFileLock({ file, what: `bridge "${opts.bridge}"`, timeoutMs: opts.timeoutMs }, fn);
}

/**
 * Runs fn holding the one host-wide lock that creating berth's nftables tables (and their base chains) and
 * deleting them take, so that a table is never deleted between another network's look at it and its setup.
 * Lock order: a network lock first, then a bridge lock, then this one; nobody takes a network or bridge lock
 * while holding it.
 */
export async function withTablesLock<T>(runDir: string, fn: () => Promise<T>): Promise<T> {
  const file = join(runDir, 'bridge', 'nft-tables.lock');
  return withFileLock({ file, what: 'the nftables tables' }, fn);
}

/**
 * Takers of a lock file in this process, in arrival order. In berthd many requests share the process: the
 * queue hands the lock from one to the next the moment it is released, where flock polling alone would
 * add up to 25 ms per hand-off; the flock behind it still excludes other processes (standalone plugins).
 */
const queues = new Map<string, (() => void)[]>();

/** Resolves when this caller is first in the file's queue; the returned function passes the turn on. */
async function takeTurn(file: string, what: string, deadline: number): Promise<() => void> {
  let queue = queues.get(file);
  if (queue === undefined) {
    queue = [];
    queues.set(file, queue);
  }
  const q = queue;
  let wake: () => void = () => undefined;
  const turn = new Promise<void>((resolve) => (wake = resolve));
  q.push(wake);
  if (q.length === 1) wake();
  const leave = (): void => {
    const i = q.indexOf(wake);
    if (i !== -1) q.splice(i, 1);
    if (q.length === 0) queues.delete(file);
    else if (i === 0) q[0]!();
  };
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), Math.max(0, deadline - performance.now()));
  });
  try {
    if ((await Promise.race([turn, timedOut])) === 'timeout') {
      leave();
      throw new CniError(ErrorCode.TryAgainLater, `timed out waiting for the lock of ${what} (${file})`);
    }
  } finally {
    clearTimeout(timer);
  }
  return leave;
}

async function withFileLock<T>(
  opts: { file: string; what: string; timeoutMs?: number | undefined },
  fn: () => Promise<T>,
): Promise<T> {
  // Monotonic, as every deadline here: a step of the wall clock neither ends the wait at once nor stretches it.
  const deadline = performance.now() + (opts.timeoutMs ?? 60_000);
  const leave = await takeTurn(opts.file, opts.what, deadline);
  try {
    return await withFlock(opts, deadline, fn);
  } finally {
    leave();
  }
}

async function withFlock<T>(
  opts: { file: string; what: string },
  deadline: number,
  fn: () => Promise<T>,
): Promise<T> {
  mkdirSync(dirname(opts.file), { recursive: true, mode: 0o700 });
  const fd = openSync(opts.file, 'a', 0o600);
  try {
    const addon = loadNativeAddon();
    let wait = 2;
    // Non-blocking attempts with a short back-off: a blocking flock would freeze the event loop and
    // could not time out.
    while (!addon.flock(fd, 'ex', true)) {
      if (performance.now() > deadline) {
        throw new CniError(
          ErrorCode.TryAgainLater,
          `timed out waiting for the lock of ${opts.what} (${opts.file})`,
        );
      }
      await sleep(wait);
      wait = Math.min(wait * 2, 25);
    }
    return await fn();
  } finally {
    // Closing the descriptor drops the flock.
    closeSync(fd);
  }
}
