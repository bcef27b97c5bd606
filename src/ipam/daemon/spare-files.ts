// Inode recycling for berthd's lease directories. On ext4 without a journal (these machines, and many nodes),
// a freed inode counts as "recently deleted" for a minute or more, and every new create scans past all such
// inodes of its group: under a steady allocate/release load a create climbs from ~15 µs to ~450 µs of kernel
// CPU. So berthd never frees an inode in steady state. Every file it creates (lease, attachment record,
// cursor, state) is written into a spare file of `.berth/spare/` and link(2)ed into place; the spare name
// stays as a second name of the file (its shadow), so that removing the file later is one unlink(2) of its
// real name, after which the inode is a spare again. A spare is stamped with a `{` as its first byte.
//
// host-local's DEL walks the whole network directory and removes every file whose content is
// `<id>\r\n<ifname>`: a spare (`{`) never matches; a shadow of a live lease is that lease's own inode, so the
// DEL that matches it releases that very lease. host-local's CHECK and ADD match only IP-named files.
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
  /** Files placed since the last `adopt` (the directory was not re-read since): their shadow and size. */
  private readonly placed = new Map<string, { shadow: string; size: number }>();
  private seq = 0;
  // Names must not collide with spares a previous daemon left (adopted at the next `adopt`).
  private readonly token = `${process.pid.toString(36)}${Date.now().toString(36)}`;

  constructor(
    private readonly dir: string,
    /** Spares kept at most; beyond that a removed file is unlinked. */
    private readonly max = 256,
  ) {}

  /** Spares ready for a new file. */
  get count(): number {
    return this.names.length;
  }

  /**
   * Takes over what is on disk (a previous daemon's spares, or after the directory was re-read): a name with
   * other links is the shadow of a live file and is dropped (its file lives on); a single-linked one is a
   * spare, stamped again (a writer that died between removing a file and stamping left its content).
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
          if (fs.fstatSync(fd).nlink > 1 || this.names.length >= this.max) throw new Error('not a spare');
          fs.writeSync(fd, NOT_A_LEASE, 0, 1, 0);
        } finally {
          fs.closeSync(fd);
        }
        this.names.push(path);
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
   * never visible half-written. Returns the new file's descriptor, for the caller to close.
   */
  placeNew(target: string, data: string): number {
    const buf = Buffer.from(data);
    const { path, fd } = this.fill(buf);
    try {
      fs.linkSync(path, target);
    } catch (err) {
      fs.closeSync(fd);
      this.names.push(path);
      throw err;
    }
    this.placed.set(target, { shadow: path, size: buf.length });
    return fd;
  }

  /**
   * Replaces `target` (or creates it) atomically; its old inode becomes a spare. For berth's own files
   * (cursors, state, records), never for leases: the old content is not stamped.
   */
  replace(target: string, data: string): void {
    const { path, fd } = this.fill(Buffer.from(data));
    fs.closeSync(fd);
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
          this.names.push(path);
          throw err;
        }
      }
    }
    fs.renameSync(path, target);
    this.placed.delete(target);
    // A cursor holds an address, never a container id: host-local cannot take it for a lease either.
    if (keep !== undefined) this.keep(keep, true, old?.size);
  }

  /**
   * Removes `target`, keeping its inode as a spare; false when it was not there. `notALease`: the content
   * already starts with `{` (berth's index files), no stamping needed.
   */
  remove(target: string, notALease = false): boolean {
    const placed = this.placed.get(target);
    this.placed.delete(target);
    if (placed !== undefined) {
      let was = true;
      try {
        fs.unlinkSync(target);
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw err;
        // Removed by someone else (the shadow now holds the only name): a spare all the same.
        was = false;
      }
      this.keep(placed.shadow, notALease, placed.size);
      return was;
    }
    const path = this.freshName();
    try {
      fs.renameSync(target, path);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return false;
      throw err;
    }
    this.keep(path, notALease);
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
      // Too many spares, gone (host-local's DEL removed a shadow), or not a regular file (a symlink or
      // directory someone put under a lease's name).
      try {
        fs.unlinkSync(path);
      } catch {
        // A directory stays in `.berth/spare`; `adopt` skips what it cannot open.
      }
    }
  }
}
