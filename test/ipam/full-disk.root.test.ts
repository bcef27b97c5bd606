// berth-ipam on a full disk (when kubelet evicts pods): the lease files, host-local's layout, are right
// after a DEL even when berth's derived index (.berth/) cannot be written; the DEL must not fail for that,
// and once there is room again the index is rebuilt from the files. A small tmpfs is the full disk.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addressesOf, assertBuilt, hostLocal, ipam, leaseFiles, netConf } from './harness';

const base = mkdtempSync(join(tmpdir(), `bt${process.pid}-ipamfull-`));
const dataDir = join(base, 'mnt');
mkdirSync(dataDir);
const name = `bt${process.pid}-full`;
const config = (type: 'berth-ipam' | 'host-local', cniVersion = '1.0.0', dir = dataDir) =>
  netConf({ name, type, cniVersion, ipam: { dataDir: dir, ranges: [[{ subnet: '198.18.154.0/24' }]] } });
/** STATUS (spec 1.1.0) of berth-ipam on `dir`: its exit code and error message. */
function status(dir = dataDir): { status: number | null; code?: number; msg?: string } {
  const r = ipam({ command: 'STATUS', config: config('berth-ipam', '1.1.0', dir) });
  return r.status === 0 ? { status: 0 } : { status: r.status, code: r.json?.code, msg: r.json?.msg };
}

beforeAll(() => {
  assertBuilt();
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', `bt${process.pid}-ipamfull`, dataDir]);
});
afterAll(() => {
  try {
    execFileSync('umount', [dataDir]);
  } catch {
    // not mounted
  }
  rmSync(base, { recursive: true, force: true });
});

describe('berth-ipam on a full disk', () => {
  it('DEL succeeds with the index unwritable; with room again, the files decide and ADD works', () => {
    for (const id of ['c1', 'c2'])
      expect(ipam({ command: 'ADD', config: config('berth-ipam'), containerId: id }).status).toBe(0);
    // host-local changes the directory: berth's next call has to rebuild (and write) its index
    expect(hostLocal({ command: 'ADD', config: config('host-local'), containerId: 'h1' }).status).toBe(0);
    const filler = join(dataDir, 'filler');
    try {
      execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k', 'count=1000'], { stdio: 'ignore' });
    } catch {
      // stops at ENOSPC, as meant
    }
    // Every ADD would fail now, though the directory is writable: STATUS says so (the runtime's readiness).
    expect(status()).toEqual({
      status: 1,
      code: 50,
      msg: expect.stringMatching(/the filesystem of .* is full/),
    });
    // A DEL of an attachment holding nothing frees no space: the rebuilt index cannot be written.
    const none = ipam({ command: 'DEL', config: config('berth-ipam'), containerId: 'x1' });
    expect(none.status, none.stdout + none.stderr).toBe(0);
    expect(none.stderr).toMatch(/cannot update the lease index/);
    const del = ipam({ command: 'DEL', config: config('berth-ipam'), containerId: 'c1' });
    expect(del.status, del.stdout + del.stderr).toBe(0);
    expect([...leaseFiles(dataDir, name).values()].map((v) => v.split('\r\n')[0]).sort()).toEqual([
      'c2',
      'h1',
    ]);

    rmSync(filler);
    expect(status()).toEqual({ status: 0 });
    const again = ipam({ command: 'ADD', config: config('berth-ipam'), containerId: 'c1' });
    expect(again.status, again.stdout + again.stderr).toBe(0);
    const [ip] = addressesOf(again);
    expect(leaseFiles(dataDir, name).get(ip!)).toBe('c1\r\neth0');
    expect(new Set(leaseFiles(dataDir, name).keys()).size).toBe(3);
  });
});

/** `fn` on a filesystem of `type` mounted for it under the test's dir, unmounted after (also on failure). */
function onMount(label: string, type: string, options: string, fn: (dir: string) => void): void {
  const dir = join(base, label);
  mkdirSync(dir);
  execFileSync('mount', ['-t', type, '-o', options, `bt${process.pid}-ipam${label}`, dir]);
  try {
    expect(
      ipam({ command: 'ADD', config: config('berth-ipam', '1.1.0', dir), containerId: `${label}1` }).status,
    ).toBe(0);
    fn(dir);
  } finally {
    execFileSync('umount', [dir]);
  }
}

describe('berth-ipam with no inode left', () => {
  it('STATUS is 50 while the filesystem has no free inode, and ready again once one is free', () => {
    onMount('inodes', 'tmpfs', 'size=1m,nr_inodes=64', (dir) => {
      expect(status(dir)).toEqual({ status: 0 });
      let n = 0;
      try {
        for (; n < 100; n++) writeFileSync(join(dir, `filler-${n}`), '');
      } catch {
        // ENOSPC: out of inodes, as meant
      }
      expect(n).toBeLessThan(100);
      expect(status(dir)).toEqual({
        status: 1,
        code: 50,
        msg: expect.stringMatching(/the filesystem of .* has no free inode/),
      });
      rmSync(join(dir, 'filler-0'));
      expect(status(dir)).toEqual({ status: 0 });
    });
  });
});

describe('berth-ipam on a filesystem that keeps no block count', () => {
  it('STATUS is ready on ramfs (statfs says 0 blocks of 0 free: no count, not full)', () => {
    onMount('ramfs', 'ramfs', 'mode=0755', (dir) => expect(status(dir)).toEqual({ status: 0 }));
  });
});
