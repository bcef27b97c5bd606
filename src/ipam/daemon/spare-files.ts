// Inode recycling for berthd's lease directories. On ext4 without a journal (these machines, and many nodes),
// every inode freed stays "recently deleted" for about half a minute and each new create scans past all of
// them: under a steady allocate/release load a create climbs from ~15 µs to ~450 µs of kernel CPU. So berthd
// never frees an inode in steady state: a removed lease file is renamed into `.berth/spare/` and the next new
// file (lease, attachment record, cursor, state) is written into such a spare and linked into place.
//
// A spare's first byte is `{`, as every file under `.berth/` starts: host-local's scans, which match file
// contents against container ids, can never take one for a lease.
import * as fs from 'node:fs';
import { join } from 'node:path';

const REUSE = fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW;
const CREATE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
const NOT_A_LEASE = Buffer.from('{');

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** The spare files of one network directory. Used only under the network's flock. */
export class SpareFiles {
  private names: string[] = [];
  /** Sizes of spares known from their last write: a new content of the same size needs no ftruncate. */
  private readonly sizes = new Map<string, number>();
  /** Sizes of the files placed since the last `adopt` (the files were not re-read since), by name. */
  private readonly placed = new Map<string, number>();
  private seq = 0;
  // Names must not collide with spares a previous daemon left (adopted at the next `adopt`).
  private readonly token = `${process.pid.toString(36)}${Date.now().toString(36)}`;

  constructor(
    private readonly dir: string,
    /** Spares kept at most; beyond that a removed file is unlinked. */
    private readonly max = 256,
  ) {}

  get count(): number {
    return this.names.length;
  }

  /**
   * Takes over the spares on disk (a previous daemon's, or after a re-read of the directory), stamping each as
   * a non-lease first: one renamed there by a writer that died before stamping still holds lease content.
   */
  adopt(): void {
    this.names = [];
    this.sizes.clear();
    this.placed.clear();
    for (const name of fs.readdirSync(this.dir)) {
      const path = join(this.dir, name);
      try {
        const fd = fs.openSync(path, REUSE);
        try {
          fs.writeSync(fd, NOT_A_LEASE, 0, 1, 0);
        } finally {
          fs.closeSync(fd);
        }
        if (this.names.length < this.max) this.names.push(path);
        else fs.unlinkSync(path);
      } catch {
        try {
          fs.unlinkSync(path);
        } catch {
          // Not ours to clear (a directory): left alone.
        }
      }
    }
  }

  private freshName(): string {
    return join(this.dir, `s-${this.token}-${this.seq++}`);
  }

  /** A spare (or a new file) holding exactly `data`, open for writing; its name is `path`. */
  private fill(data: Buffer): { path: string; fd: number } {
    for (;;) {
      const reused = this.names.pop();
      const path = reused ?? this.freshName();
      let fd: number;
      try {
        fd = fs.openSync(path, reused === undefined ? CREATE : REUSE, 0o600);
      } catch (err) {
        // Removed behind our back (host-local's DEL may remove a file it matched): take another.
        if (reused !== undefined && errnoOf(err) === 'ENOENT') continue;
        throw err;
      }
      const size = reused === undefined ? undefined : this.sizes.get(reused);
      if (reused !== undefined) this.sizes.delete(reused);
      try {
        fs.writeSync(fd, data, 0, data.length, 0);
        if (reused !== undefined && size !== data.length) fs.ftruncateSync(fd, data.length);
      } catch (err) {
        fs.closeSync(fd);
        this.names.push(path);
        throw err;
      }
      return { path, fd };
    }
  }

  /**
   * Creates `target` holding `data`, failing with EEXIST when it exists (host-local's exclusive create),
   * never visible half-written. Returns the new file's descriptor, for the caller to sync and close.
   */
  placeNew(target: string, data: string): number {
    const { path, fd } = this.fill(Buffer.from(data));
    try {
      fs.linkSync(path, target);
    } catch (err) {
      fs.closeSync(fd);
      this.names.push(path);
      throw err;
    }
    // The inode keeps its other name: nothing is freed.
    fs.unlinkSync(path);
    this.placed.set(target, data.length);
    return fd;
  }

  /**
   * Replaces `target` (or creates it) atomically; its old inode becomes a spare. For berth's own files
   * (cursors, state, records), never for leases: the old content is not stamped.
   */
  replace(target: string, data: string): void {
    const { path, fd } = this.fill(Buffer.from(data));
    fs.closeSync(fd);
    const keep = this.freshName();
    let kept = false;
    try {
      fs.linkSync(target, keep);
      kept = true;
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') {
        this.names.push(path);
        throw err;
      }
    }
    fs.renameSync(path, target);
    this.placed.delete(target);
    // A cursor holds an address, never a container id: host-local cannot take it for a lease either.
    if (kept) this.keep(keep, true);
  }

  /**
   * Removes `target`, keeping its inode as a spare; false when it was not there. `notALease`: the content
   * already starts with `{` (berth's index files), no stamping needed.
   */
  remove(target: string, notALease = false): boolean {
    const path = this.freshName();
    const size = this.placed.get(target);
    this.placed.delete(target);
    try {
      fs.renameSync(target, path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return false;
      throw err;
    }
    this.keep(path, notALease, size);
    return true;
  }

  private keep(path: string, notALease: boolean, size?: number): void {
    try {
      if (this.names.length >= this.max) throw new Error('enough spares');
      if (!notALease) {
        const fd = fs.openSync(path, REUSE);
        try {
          fs.writeSync(fd, NOT_A_LEASE, 0, 1, 0);
        } finally {
          fs.closeSync(fd);
        }
      }
      this.names.push(path);
      if (size !== undefined) this.sizes.set(path, size);
    } catch {
      // Too many spares, or not a regular file (a symlink or directory someone put under a lease's name).
      try {
        fs.unlinkSync(path);
      } catch {
        // A directory stays in `.berth/spare`; `adopt` skips what it cannot open.
      }
    }
  }
}
