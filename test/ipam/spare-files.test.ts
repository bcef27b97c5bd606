// berthd's inode recycling (src/ipam/daemon/spare-files.ts) on real files: a removed file's inode comes back
// as the next new file, no content of an earlier file shows through, and nothing under the spare directory
// can be taken for a lease by host-local's content scans.
import {
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { SpareFiles } from '../../src/ipam/daemon/spare-files';

let dir: string;
let net: string;
let spareDir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-spare-`));
  net = join(dir, 'net');
  spareDir = join(net, '.berth', 'spare');
  mkdirSync(spareDir, { recursive: true });
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function place(s: SpareFiles, name: string, data: string): number {
  s.placeNew(join(net, name), data);
  return statSync(join(net, name)).ino;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

function inodesIn(d: string): number[] {
  return readdirSync(d).map((f) => statSync(join(d, f)).ino);
}

/** What the daemon does around a sync round that covered the removals so far. */
function synced(s: SpareFiles): void {
  s.warm(s.takeCooling());
}

function spareContents(): string[] {
  return readdirSync(spareDir).map((f) => readFileSync(join(spareDir, f), 'latin1'));
}

describe('SpareFiles', () => {
  test("a removed lease's inode is the next new file's, with exactly the new content", () => {
    const s = new SpareFiles(spareDir);
    const first = place(s, '198.18.0.2', 'container-with-a-long-id\r\neth0');
    expect(s.remove(join(net, '198.18.0.2'))).toBe(true);
    expect(readdirSync(net).sort()).toEqual(['.berth']);
    expect(s.coolingCount).toBe(1);
    synced(s);
    expect(s.count).toBe(1);
    // Shorter content into the same inode: nothing of the old one is left behind it.
    const second = place(s, '198.18.0.3', 'short\r\neth1');
    expect(second).toBe(first);
    expect(readFileSync(join(net, '198.18.0.3'), 'utf8')).toBe('short\r\neth1');
    // Its spare name stays as a second name (the shadow), so that removing it is one unlink.
    expect(statSync(join(net, '198.18.0.3')).nlink).toBe(2);
    expect(inodesIn(spareDir)).toEqual([second]);
    // Same size again (no truncate needed): still exact.
    s.remove(join(net, '198.18.0.3'));
    synced(s);
    expect(place(s, '198.18.0.4', 'other\r\neth2')).toBe(first);
    expect(readFileSync(join(net, '198.18.0.4'), 'utf8')).toBe('other\r\neth2');
  });

  test('a removed inode is not reused before a sync round covered its removal', () => {
    const s = new SpareFiles(spareDir);
    const first = place(s, '198.18.0.2', 'a\r\neth0');
    s.remove(join(net, '198.18.0.2'));
    const cooling = s.takeCooling();
    // The round runs: a placement meanwhile gets another inode.
    const during = place(s, '198.18.0.3', 'b\r\neth0');
    expect(during).not.toBe(first);
    // The round failed: still cooling, still not reused.
    s.cool(cooling);
    expect(place(s, '198.18.0.4', 'c\r\neth0')).not.toBe(first);
    // The next round ends: reused.
    synced(s);
    expect(place(s, '198.18.0.5', 'd\r\neth0')).toBe(first);
  });

  test('a spare never holds lease content: its first byte is "{"', () => {
    const s = new SpareFiles(spareDir);
    for (let i = 2; i < 6; i++) place(s, `198.18.0.${i}`, `ctr-${i}\r\neth0`);
    for (let i = 2; i < 6; i++) s.remove(join(net, `198.18.0.${i}`));
    const contents = spareContents();
    expect(contents).toHaveLength(4);
    for (const c of contents) expect(c.startsWith('{')).toBe(true);
  });

  test('placeNew is exclusive: an existing name fails with EEXIST and keeps both files intact', () => {
    const s = new SpareFiles(spareDir);
    writeFileSync(join(net, '198.18.0.9'), 'someone\r\neth0');
    place(s, '198.18.0.8', 'a\r\neth0');
    s.remove(join(net, '198.18.0.8'));
    synced(s);
    expect(() => s.placeNew(join(net, '198.18.0.9'), 'me\r\neth0')).toThrow(
      expect.objectContaining({ code: 'EEXIST' }),
    );
    expect(readFileSync(join(net, '198.18.0.9'), 'utf8')).toBe('someone\r\neth0');
    // The spare it tried is still there for the next file, stamped again over the content it was given.
    expect(s.count).toBe(1);
    expect(readdirSync(spareDir)).toHaveLength(1);
    expect(spareContents()[0]!.startsWith('{')).toBe(true);
  });

  test("a spare removed behind its back (host-local's DEL matched it) is skipped", () => {
    const s = new SpareFiles(spareDir);
    place(s, '198.18.0.2', 'a\r\neth0');
    s.remove(join(net, '198.18.0.2'));
    for (const f of readdirSync(spareDir)) rmSync(join(spareDir, f));
    place(s, '198.18.0.3', 'b\r\neth0');
    expect(readFileSync(join(net, '198.18.0.3'), 'utf8')).toBe('b\r\neth0');
  });

  test("host-local's DEL removing a lease and its shadow: the release finds nothing, nothing is left", () => {
    const s = new SpareFiles(spareDir);
    place(s, '198.18.0.2', 'ctr\r\neth0');
    // What host-local's DEL does: every file whose content matches, wherever it is.
    for (const d of [net, spareDir])
      for (const f of readdirSync(d))
        if (f !== '.berth' && readFileSync(join(d, f), 'utf8') === 'ctr\r\neth0') rmSync(join(d, f));
    expect(s.remove(join(net, '198.18.0.2'))).toBe(false);
    expect(s.count).toBe(0);
    expect(readdirSync(spareDir)).toEqual([]);
  });

  test('a lease removed by someone else leaves its shadow, which the release turns into a spare', () => {
    const s = new SpareFiles(spareDir);
    const ino = place(s, '198.18.0.2', 'ctr\r\neth0');
    rmSync(join(net, '198.18.0.2'));
    expect(s.remove(join(net, '198.18.0.2'))).toBe(false);
    expect(inodesIn(spareDir)).toEqual([ino]);
    expect(spareContents()[0]!.startsWith('{')).toBe(true);
  });

  test('replace swaps the content atomically and keeps the old inode as a spare', () => {
    const s = new SpareFiles(spareDir);
    const state = join(net, 'state.json');
    s.replace(state, '{"gen":1}');
    const ino1 = statSync(state).ino;
    s.replace(state, '{"gen":2}');
    expect(readFileSync(state, 'utf8')).toBe('{"gen":2}');
    synced(s);
    expect(s.count).toBe(1);
    s.replace(state, '{"gen":3}');
    // The third write went into the first inode.
    expect(statSync(state).ino).toBe(ino1);
    expect(readFileSync(state, 'utf8')).toBe('{"gen":3}');
  });

  test('a reused inode is 0600 whoever wrote it, and a file others rewrite in place is truncated on reuse', () => {
    const s = new SpareFiles(spareDir);
    // host-local writes its leases 0644.
    writeFileSync(join(net, '198.18.0.7'), 'host-local-container-id\r\neth0', { mode: 0o644 });
    s.remove(join(net, '198.18.0.7'));
    synced(s);
    place(s, '198.18.0.8', 'mine\r\neth0');
    expect(statSync(join(net, '198.18.0.8')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(net, '198.18.0.8'), 'utf8')).toBe('mine\r\neth0');
    // A record: a plugin on the files may rewrite it in place, longer.
    const rec = join(net, 'rec');
    s.placeNew(rec, '{"v":1}');
    writeFileSync(rec, '{"v":1,"rewritten":"in place, longer"}');
    s.remove(rec);
    s.remove(join(net, '198.18.0.8'));
    synced(s);
    // Both spares come back exact, whichever is taken first.
    place(s, '198.18.0.9', 'x\r\neth0');
    place(s, '198.18.0.10', 'y\r\neth0');
    expect(readFileSync(join(net, '198.18.0.9'), 'utf8')).toBe('x\r\neth0');
    expect(readFileSync(join(net, '198.18.0.10'), 'utf8')).toBe('y\r\neth0');
  });

  test('remove of a missing name is false; more spares than the cap are unlinked', () => {
    const s = new SpareFiles(spareDir, 2);
    expect(s.remove(join(net, '198.18.0.77'))).toBe(false);
    for (let i = 2; i < 6; i++) place(s, `198.18.0.${i}`, `c${i}\r\neth0`);
    for (let i = 2; i < 6; i++) s.remove(join(net, `198.18.0.${i}`));
    expect(s.coolingCount).toBe(2);
    synced(s);
    expect(s.count).toBe(2);
    expect(readdirSync(spareDir)).toHaveLength(2);
  });

  test('adopt takes over spares on disk, stamps one a crash left with lease content, drops shadows and non-files', () => {
    writeFileSync(join(spareDir, 's-old-1'), 'crashed-before-stamp\r\neth0');
    writeFileSync(join(spareDir, 's-old-2'), '{');
    symlinkSync('/etc/hostname', join(spareDir, 's-link'));
    // The shadow of a live lease a previous daemon placed: the lease must keep its content.
    writeFileSync(join(net, '198.18.0.9'), 'live\r\neth0');
    linkSync(join(net, '198.18.0.9'), join(spareDir, 's-old-shadow'));
    const s = new SpareFiles(spareDir);
    s.adopt();
    // Their removal may not be on disk yet: they cool first.
    expect(s.coolingCount).toBe(2);
    synced(s);
    expect(s.count).toBe(2);
    expect(readdirSync(spareDir).sort()).toEqual(['s-old-1', 's-old-2']);
    for (const c of spareContents()) expect(c.startsWith('{')).toBe(true);
    expect(readFileSync(join(net, '198.18.0.9'), 'utf8')).toBe('live\r\neth0');
    expect(statSync(join(net, '198.18.0.9')).nlink).toBe(1);
    // Both spares are used before any new inode is made.
    const old = new Set(inodesIn(spareDir));
    const a = place(s, '198.18.0.2', 'x\r\neth0');
    const b = place(s, '198.18.0.3', 'y\r\neth0');
    expect(new Set([a, b])).toEqual(old);
    expect(readFileSync(join(net, '198.18.0.2'), 'utf8')).toBe('x\r\neth0');
  });

  test('descriptors stay open up to the bound, are reused across remove and place, and close() closes all', () => {
    const base = openFds();
    const s = new SpareFiles(spareDir, 256, 8);
    for (let i = 2; i < 14; i++) place(s, `198.18.0.${i}`, `c${i}\r\neth0`);
    expect(s.openCount).toBe(8);
    expect(openFds()).toBe(base + 8);
    for (let i = 2; i < 14; i++) s.remove(join(net, `198.18.0.${i}`));
    synced(s);
    for (let i = 2; i < 14; i++) place(s, `198.18.1.${i}`, `d${i}\r\neth0`);
    expect(s.openCount).toBe(8);
    for (let i = 2; i < 14; i++)
      expect(readFileSync(join(net, `198.18.1.${i}`), 'utf8')).toBe(`d${i}\r\neth0`);
    s.close();
    expect(s.openCount).toBe(0);
    expect(openFds()).toBe(base);
    // After close the files are still there; a new instance adopts what is spare (nothing: all are live).
    const again = new SpareFiles(spareDir, 256, 8);
    again.adopt();
    expect(again.count).toBe(0);
    expect(readdirSync(spareDir)).toEqual([]);
    again.close();
    expect(openFds()).toBe(base);
  });

  test('all networks together keep at most a quarter of the descriptor limit open', () => {
    // A child under RLIMIT_NOFILE 64: two networks placing 40 files each hold 16 descriptors in all.
    const script = `
      const { SpareFiles } = require(${JSON.stringify(join(__dirname, '../../dist/ipam/daemon/spare-files.js'))});
      const fs = require('node:fs');
      const out = [];
      for (const n of ['a', 'b']) {
        const dir = ${JSON.stringify(dir)} + '/' + n;
        fs.mkdirSync(dir + '/spare', { recursive: true });
        const s = new SpareFiles(dir + '/spare');
        for (let i = 0; i < 40; i++) s.placeNew(dir + '/f' + i, 'x' + i);
        out.push(s.openCount);
      }
      console.log(JSON.stringify(out));`;
    const r = spawnSync('prlimit', ['--nofile=64:64', process.execPath, '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const [a, b] = JSON.parse(r.stdout) as [number, number];
    expect(a + b).toBe(16);
    expect(readdirSync(join(dir, 'b')).filter((f) => f.startsWith('f'))).toHaveLength(40);
  });

  test('a cooling batch taken before close never comes back beside what adopt found: no inode is listed twice', () => {
    const s = new SpareFiles(spareDir);
    const a = place(s, '198.18.0.2', 'a\r\neth0');
    s.remove(join(net, '198.18.0.2'));
    const inFlight = s.takeCooling();
    // The directory is re-read meanwhile (someone else changed it): the next use adopts what is on disk.
    s.close();
    place(s, '198.18.0.3', 'b\r\neth0');
    // The round of the batch ends only now.
    s.warm(inFlight);
    synced(s);
    expect(s.count).toBe(1);
    const c = place(s, '198.18.0.4', 'c\r\neth0');
    const d = place(s, '198.18.0.5', 'd\r\neth0');
    expect(c).toBe(a);
    expect(d).not.toBe(a);
    expect(readFileSync(join(net, '198.18.0.4'), 'utf8')).toBe('c\r\neth0');
    expect(readFileSync(join(net, '198.18.0.5'), 'utf8')).toBe('d\r\neth0');
  });

  test('after close, nothing under the spare directory is touched until the next placement or removal', () => {
    const s = new SpareFiles(spareDir);
    place(s, '198.18.0.2', 'a\r\neth0');
    s.remove(join(net, '198.18.0.2'));
    s.close();
    const before = readdirSync(spareDir).map((f) => statSync(join(spareDir, f)).ctimeMs);
    const fresh = new SpareFiles(spareDir);
    fresh.takeCooling();
    fresh.close();
    expect(readdirSync(spareDir).map((f) => statSync(join(spareDir, f)).ctimeMs)).toEqual(before);
  });

  test('a spare another process has linked elsewhere meanwhile is never written into', () => {
    const s = new SpareFiles(spareDir);
    const a = place(s, '198.18.0.2', 'a\r\neth0');
    s.remove(join(net, '198.18.0.2'));
    synced(s);
    // Another berth process (a second daemon, an admin command on the files) put the inode to use.
    const [spare] = readdirSync(spareDir);
    linkSync(join(spareDir, spare!), join(net, 'theirs'));
    writeFileSync(join(net, 'theirs'), '{"theirs":true}');
    const b = place(s, '198.18.0.3', 'b\r\neth0');
    expect(b).not.toBe(a);
    expect(readFileSync(join(net, 'theirs'), 'utf8')).toBe('{"theirs":true}');
  });

  test('a removed file with another name (a `cp -al` backup) keeps its content and mode there', () => {
    const s = new SpareFiles(spareDir);
    place(s, '198.18.0.2', 'ours\r\neth0');
    // A lease berth did not place (host-local's, 0644), and one it did; both hard-linked into a backup.
    writeFileSync(join(net, '198.18.0.3'), 'theirs\r\neth0', { mode: 0o644 });
    const backup = join(dir, 'backup');
    mkdirSync(backup);
    for (const f of ['198.18.0.2', '198.18.0.3']) linkSync(join(net, f), join(backup, f));
    expect(s.remove(join(net, '198.18.0.2'))).toBe(true);
    expect(s.remove(join(net, '198.18.0.3'))).toBe(true);
    expect(readFileSync(join(backup, '198.18.0.2'), 'utf8')).toBe('ours\r\neth0');
    expect(readFileSync(join(backup, '198.18.0.3'), 'utf8')).toBe('theirs\r\neth0');
    expect(statSync(join(backup, '198.18.0.3')).mode & 0o777).toBe(0o644);
    // Neither inode is a spare: nothing under the spare directory names them, and new files get others.
    expect(s.coolingCount).toBe(0);
    synced(s);
    const backupInodes = inodesIn(backup);
    expect(inodesIn(spareDir).filter((i) => backupInodes.includes(i))).toEqual([]);
    expect(backupInodes).not.toContain(place(s, '198.18.0.4', 'new\r\neth0'));
  });

  test('a FIFO under a spare name never blocks (it is dropped), nor one under a removed lease name', () => {
    const fifo = (path: string): void => {
      expect(spawnSync('mkfifo', [path]).status).toBe(0);
    };
    fifo(join(spareDir, 's-fifo'));
    const s = new SpareFiles(spareDir);
    // Opened for writing without a reader, a FIFO would hold this thread in open(2) for good.
    place(s, '198.18.0.2', 'a\r\neth0');
    expect(readdirSync(spareDir)).not.toContain('s-fifo');
    fifo(join(net, '198.18.0.5'));
    expect(s.remove(join(net, '198.18.0.5'))).toBe(true);
    expect(s.coolingCount).toBe(0);
    expect(readdirSync(spareDir).filter((f) => statSync(join(spareDir, f)).isFIFO())).toEqual([]);
  });
});
