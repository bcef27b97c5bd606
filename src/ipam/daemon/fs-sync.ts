// berthd's group commit across networks: syncfs(2) rounds per filesystem, shared by every network directory
// on it. A caller is covered by a round that starts after its call (every write it made before calling is on
// disk when its promise resolves); callers that arrive while rounds run share the next one. Two rounds may
// run at once (the second starts while the first flushes): one at a time gave ~7 % fewer pairs/s in
// alternating bench runs.
//
// Each filesystem gets one descriptor for as long as a network on it is known. The kernel (Linux >= 5.8)
// reports a writeback error once per descriptor, to the first syncfs that checks after it happened, which
// may be another round than the one covering the failed write: so an error fails every round in flight and
// every caller already waiting, and only callers that come later can succeed again.
import * as fs from 'node:fs';
import { loadNativeAddon } from '../../native-addon';

/** syncfs calls in flight per filesystem. */
const MAX_IN_FLIGHT = 2;

export interface SyncRound {
  /** Rounds of this filesystem so far, this one included: equal numbers mean one shared round. */
  round: number;
  /** How long the round took. */
  seconds: number;
}

interface Waiter {
  resolve(r: SyncRound): void;
  reject(err: unknown): void;
}

interface Round {
  waiters: Waiter[];
  /** Failed by another round's error: its own success does not count. */
  failed: boolean;
}

interface Filesystem {
  fd: number;
  inFlight: Set<Round>;
  /** Forgotten by `close` while rounds ran: the descriptor goes when the last ends. */
  closed: boolean;
  rounds: number;
  next: Waiter[];
}

export class FilesystemSync {
  private readonly byDev = new Map<number | bigint, Filesystem>();

  constructor(
    private readonly syncfs: (fd: number) => Promise<void> = (fd) => loadNativeAddon().syncfs(fd),
  ) {}

  /** Makes everything written so far to the filesystem of `dir` (device `dev`) durable. */
  sync(dev: number | bigint, dir: string): Promise<SyncRound> {
    let f = this.byDev.get(dev);
    if (f === undefined) {
      // Any directory of the filesystem will do, for as long as the daemon runs (also once it is removed).
      f = {
        fd: fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY),
        inFlight: new Set(),
        closed: false,
        rounds: 0,
        next: [],
      };
      this.byDev.set(dev, f);
    }
    const target = f;
    return new Promise<SyncRound>((resolve, reject) => {
      target.next.push({ resolve, reject });
      if (target.inFlight.size < MAX_IN_FLIGHT) this.run(target);
    });
  }

  /** Closes the descriptors (shutdown, tests); rounds still running keep theirs until they end. */
  close(): void {
    this.closeExcept(new Set());
  }

  /**
   * Closes the descriptors of filesystems no network uses any more (all forgotten): one held on a removed
   * data dir kept its filesystem busy, so it could not be unmounted or remounted read-only.
   */
  closeExcept(inUse: ReadonlySet<number | bigint>): void {
    for (const [dev, f] of this.byDev) {
      if (inUse.has(dev)) continue;
      f.closed = true;
      if (f.inFlight.size === 0) fs.closeSync(f.fd);
      this.byDev.delete(dev);
    }
  }

  private run(f: Filesystem): void {
    const r: Round = { waiters: f.next.splice(0), failed: false };
    f.inFlight.add(r);
    const round = ++f.rounds;
    const started = process.hrtime.bigint();
    let done: Promise<void>;
    try {
      done = this.syncfs(f.fd);
    } catch (err) {
      done = Promise.reject(err);
    }
    done
      .then(
        () => {
          if (r.failed) return;
          const seconds = Number(process.hrtime.bigint() - started) / 1e9;
          for (const w of r.waiters) w.resolve({ round, seconds });
        },
        (err: unknown) => {
          // The failed write may belong to any caller so far: the other rounds in flight and those waiting.
          const all = [...f.inFlight].flatMap((o) => (o.failed ? [] : ((o.failed = true), o.waiters)));
          for (const w of [...all, ...f.next.splice(0)]) w.reject(err);
        },
      )
      .finally(() => {
        f.inFlight.delete(r);
        if (f.closed) {
          if (f.inFlight.size === 0) fs.closeSync(f.fd);
          for (const w of f.next.splice(0)) w.reject(new Error('filesystem sync closed'));
          return;
        }
        if (f.next.length > 0 && f.inFlight.size < MAX_IN_FLIGHT) this.run(f);
      })
      .catch(() => undefined);
  }
}
