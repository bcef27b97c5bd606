// Inode recycling for berthd's lease directories. On ext4 without a journal (these machines, and many nodes),
// a freed inode counts as "recently deleted" for a minute or more, and every new create scans past all such
// inodes of its group: under a steady allocate/release load a create climbs from ~15 µs to ~450 µs of kernel
// CPU. So berthd never frees an inode in steady state. Every file it creates (lease, attachment record,
// cursor, state) is written into a spare file of `.berth/spare/` and link(2)ed into place; the spare name
// stays as a second name of the file (its shadow), so that removing the file later is one unlink(2) of its
// real name, after which the inode is a spare again. A spare is stamped with a `{` as its first byte. The
// files stay open (up to a bound), so a placement is a look (fstat), a write and a link, a removal an unlink and a write.
//
// A freed-up inode cools until a sync round covering its removal has ended (the daemon calls `takeCooling`
// before a round and `warm` after it): reused earlier, a power cut could leave the old name on disk with the
// new content, another container's id under a released address.
//
// host-local's DEL walks the whole network directory and removes every file whose content is
// `<id>\r\n<ifname>`: a spare (`{`) never matches; a shadow of a live lease is that lease's own inode, so the
// DEL that matches it releases that very lease. host-local's CHECK and ADD match only IP-named files.
import * as fs from 'node:fs';
import { join } from 'node:path';

// Non-blocking: a FIFO someone put under one of these names must not hold berthd in open(2) (a spare is
// checked to be a regular file before anything is written to it).
const REUSE = fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;
const CREATE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
const NOT_A_LEASE = Buffer.from('{');

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** A regular file with this one name: an inode berth may stamp and hand out again. */
function isSpareInode(st: fs.Stats): boolean {
  return st.isFile() && st.nlink === 1;
}

/** At most this many descriptors stay open per network (spares and placed files); beyond, paths are reopened. */
const DEFAULT_MAX_OPEN = 1024;

/**
 * Descriptors all networks together may keep open: a quarter of the soft RLIMIT_NOFILE (which Node raises to
 * the hard limit at start), at most 4096, so that held files never starve the sockets and lock files.
 */
const processBudget = { used: 0, max: fdBudget() };

function fdBudget(): number {
  try {
    const line = fs
      .readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
    if (soft === 'unlimited') return 4096;
    const n = Number(soft);
    if (Number.isFinite(n)) return Math.min(4096, Math.floor(n / 4));
  } catch {
    // No /proc: a small budget.
  }
  return 256;
}

/** Spares taken to cool during one sync round. */
export interface CoolingBatch {
  generation: number;
  spares: Spare[];
}

interface Spare {
  path: string;
  fd?: number;
}

/** The spare files of one network directory. Used only under the network's flock. */
export class SpareFiles {
  /** Ready for a new file. */
  private spares: Spare[] = [];
  /** Removed since the last `takeCooling`: not reused before a sync round covered the removal. */
  private cooling: Spare[] = [];
  /** Files placed since the last `adopt` (the directory was not re-read since), with their shadow. */
  private readonly placed = new Map<string, { shadow: string; fd?: number }>();
  private open = 0;
  /** Bumped by `close`: cooling batches taken before it are stale. */
  private generation = 0;
  /** What is on disk was taken over (`adopt`); until then nothing under the directory is touched. */
  private adopted = false;
  private seq = 0;
  // Names must not collide with spares a previous daemon left (adopted at the next `adopt`).
  private readonly token = `${process.pid.toString(36)}${Date.now().toString(36)}`;

  constructor(
    private readonly dir: string,
    /** Spares kept at most (ready and cooling); beyond that a removed file is unlinked. */
    private readonly max = 256,
    private readonly maxOpen = DEFAULT_MAX_OPEN,
  ) {}

  /** Spares ready for a new file. */
  get count(): number {
    return this.spares.length;
  }

  /** Spares waiting for a sync round. */
  get coolingCount(): number {
    return this.cooling.length;
  }

  /** Descriptors held open. */
  get openCount(): number {
    return this.open;
  }

  /** The spares removed so far, for the caller to `warm` once a sync round that starts now has ended. */
  takeCooling(): CoolingBatch {
    return { generation: this.generation, spares: this.cooling.splice(0) };
  }

  /** Their removal is durable: ready for reuse. */
  warm(batch: CoolingBatch): void {
    if (this.outdated(batch)) return;
    for (const s of batch.spares) {
      if (this.spares.length < this.max) this.spares.push(s);
      else this.drop(s.path, s.fd);
    }
  }

  /** The round failed: they wait for the next one. */
  cool(batch: CoolingBatch): void {
    if (this.outdated(batch)) return;
    this.cooling.push(...batch.spares);
  }

  /**
   * A batch taken before `close`: its files are on disk for the next `adopt` to find, so it must not come
   * back as well (one inode listed twice would be placed under two names).
   */
  private outdated(batch: CoolingBatch): boolean {
    if (batch.generation === this.generation) return false;
    for (const s of batch.spares) this.closeFd(s.fd);
    return true;
  }

  /**
   * Forgets everything (the files stay); what is on disk is taken over again at the next placement or
   * removal, so that a read-only use of the directory (an admin listing) leaves the spares alone.
   */
  close(): void {
    this.adopted = false;
    this.generation++;
    for (const s of [...this.spares, ...this.cooling]) this.closeFd(s.fd);
    for (const p of this.placed.values()) this.closeFd(p.fd);
    this.spares = [];
    this.cooling = [];
    this.placed.clear();
  }

  private closeFd(fd: number | undefined): void {
    if (fd === undefined) return;
    this.uncount();
    fs.closeSync(fd);
  }

  /** A held descriptor leaves the pool (closed, or taken for use). */
  private uncount(): void {
    this.open--;
    processBudget.used--;
  }

  /** Keeps `fd` open if the budgets allow, else closes it. */
  private hold(fd: number): number | undefined {
    if (this.open >= this.maxOpen || processBudget.used >= processBudget.max) {
      fs.closeSync(fd);
      return undefined;
    }
    this.open++;
    processBudget.used++;
    return fd;
  }

  /** Unlinks a spare name for good (its inode is freed unless it has other names). */
  private drop(path: string, fd: number | undefined): void {
    this.closeFd(fd);
    try {
      fs.unlinkSync(path);
    } catch {
      // Gone already, or a directory someone put there: left alone (`adopt` skips what it cannot open).
    }
  }

  /**
   * Takes over what is on disk (a previous daemon's spares, or after the directory was re-read): a name with
   * other links is the shadow of a live file and is dropped (its file lives on); a single-linked one is a
   * spare, stamped again (a writer that died between removing a file and stamping left its content) and
   * cooling (its removal may not be on disk yet).
   */
  adopt(): void {
    this.close();
    this.adopted = true;
    for (const name of fs.readdirSync(this.dir)) {
      const path = join(this.dir, name);
      let fd: number | undefined;
      try {
        fd = fs.openSync(path, REUSE);
        if (!isSpareInode(fs.fstatSync(fd)) || this.cooling.length >= this.max)
          throw new Error('not a spare');
        fs.writeSync(fd, NOT_A_LEASE, 0, 1, 0);
        fs.fchmodSync(fd, 0o600);
        const held = this.hold(fd);
        fd = undefined;
        this.cooling.push(held === undefined ? { path } : { path, fd: held });
      } catch {
        if (fd !== undefined) fs.closeSync(fd);
        this.drop(path, undefined);
      }
    }
  }

  private freshName(): string {
    return join(this.dir, `s-${this.token}-${this.seq++}`);
  }

  /** Puts a spare back after a failed use: its content was (partly) overwritten, so it is stamped again. */
  private putBack(path: string, fd: number): void {
    try {
      fs.writeSync(fd, NOT_A_LEASE, 0, 1, 0);
      const held = this.hold(fd);
      this.spares.push(held === undefined ? { path } : { path, fd: held });
    } catch {
      fs.closeSync(fd);
      this.drop(path, undefined);
    }
  }

  /** A spare (or a new file) holding exactly `data`, with an open descriptor. */
  private fill(data: Buffer): { path: string; fd: number } {
    for (;;) {
      // Every spare in the list exists on disk; a fresh name is created.
      const spare = this.spares.pop();
      const path = spare?.path ?? this.freshName();
      let fd = spare?.fd;
      if (fd !== undefined) this.uncount();
      else {
        try {
          fd = fs.openSync(path, spare !== undefined ? REUSE : CREATE, 0o600);
        } catch (err) {
          // Removed behind our back (host-local's DEL may remove a file it matched): take another.
          if (spare !== undefined && errnoOf(err) === 'ENOENT') continue;
          throw err;
        }
      }
      // Another berth process on this directory (an admin command on the files, a second daemon) may have
      // used the inode for a file of its own since it became our spare: a spare has no other name. The same
      // look tells whether the new content needs a truncate (the old one may be longer).
      const st = spare === undefined ? undefined : fs.fstatSync(fd);
      if (st !== undefined && !isSpareInode(st)) {
        fs.closeSync(fd);
        continue;
      }
      try {
        fs.writeSync(fd, data, 0, data.length, 0);
        if (st !== undefined && st.size > data.length) fs.ftruncateSync(fd, data.length);
      } catch (err) {
        this.putBack(path, fd);
        throw err;
      }
      return { path, fd };
    }
  }

  /**
   * Creates `target` holding `data`, failing with EEXIST when it exists (host-local's exclusive create),
   * never visible half-written.
   */
  placeNew(target: string, data: string): void {
    if (!this.adopted) this.adopt();
    const buf = Buffer.from(data);
    const stale = this.placed.get(target);
    if (stale !== undefined) {
      // Removed behind our back and not re-read since (only a writer ignoring the directory's sentinel):
      // its shadow holds the only name left.
      this.placed.delete(target);
      this.keep(stale.shadow, stale.fd);
    }
    for (;;) {
      const f = this.fill(buf);
      try {
        fs.linkSync(f.path, target);
      } catch (err) {
        // The spare's name was removed behind our back while we held it open: take another.
        if (errnoOf(err) === 'ENOENT' && !fs.existsSync(f.path)) {
          fs.closeSync(f.fd);
          continue;
        }
        this.putBack(f.path, f.fd);
        throw err;
      }
      const fd = this.hold(f.fd);
      this.placed.set(target, fd === undefined ? { shadow: f.path } : { shadow: f.path, fd });
      return;
    }
  }

  /** Replaces `target` (or creates it) atomically; its old inode becomes a spare. */
  replace(target: string, data: string): void {
    if (!this.adopted) this.adopt();
    const { path, fd } = this.fill(Buffer.from(data));
    const old = this.placed.get(target);
    let keep = old?.shadow;
    if (keep === undefined) {
      // A file we did not place: a new name keeps its inode.
      keep = this.freshName();
      try {
        fs.linkSync(target, keep);
      } catch (err) {
        keep = undefined;
        if (errnoOf(err) !== 'ENOENT') {
          this.putBack(path, fd);
          throw err;
        }
      }
    }
    fs.closeSync(fd);
    fs.renameSync(path, target);
    this.placed.delete(target);
    if (keep !== undefined) this.keep(keep, old?.fd);
    else if (old !== undefined) this.closeFd(old.fd);
  }

  /** Removes `target`, keeping its inode as a spare; false when it was not there. */
  remove(target: string): boolean {
    if (!this.adopted) this.adopt();
    const placed = this.placed.get(target);
    if (placed !== undefined) {
      try {
        fs.unlinkSync(target);
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw err;
        this.placed.delete(target);
        // Removed by someone else. host-local's DEL also removed the shadow (same content): nothing is left
        // to keep. Otherwise the shadow holds the only name: a spare all the same.
        if (!fs.existsSync(placed.shadow)) {
          this.closeFd(placed.fd);
          return false;
        }
        this.keep(placed.shadow, placed.fd);
        return false;
      }
      this.placed.delete(target);
      this.keep(placed.shadow, placed.fd);
      return true;
    }
    const path = this.freshName();
    try {
      fs.renameSync(target, path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return false;
      throw err;
    }
    this.keep(path);
    return true;
  }

  /** A removed file's inode becomes a cooling spare: stamped `{`, mode 0600 whoever wrote it. */
  private keep(path: string, fd?: number): void {
    if (this.spares.length + this.cooling.length >= this.max) {
      this.drop(path, fd);
      return;
    }
    let own = fd;
    try {
      own ??= fs.openSync(path, REUSE);
      // Another name of the inode (a backup made with `cp -al`, a hard link put in the directory) would get
      // the stamp and the mode: the name goes, the inode stays theirs.
      if (!isSpareInode(fs.fstatSync(own))) throw new Error('not ours alone');
      fs.writeSync(own, NOT_A_LEASE, 0, 1, 0);
      if (fd === undefined) fs.fchmodSync(own, 0o600);
    } catch {
      // Gone (host-local's DEL removed a shadow), not a regular file (a symlink, directory or FIFO someone put
      // under a lease's name), or an inode with another name.
      if (own !== undefined && own !== fd) fs.closeSync(own);
      this.drop(path, fd);
      return;
    }
    const spare: Spare = { path };
    if (own !== fd) {
      const held = this.hold(own);
      if (held !== undefined) spare.fd = held;
    } else if (fd !== undefined) spare.fd = fd;
    this.cooling.push(spare);
  }
}
