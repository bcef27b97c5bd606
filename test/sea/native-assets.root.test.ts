// The addon written on a disk that fills up: write(2) stops short, then fails. Nothing may be left under
// the addon's name (a short library is dlopen()ed and dies with SIGBUS on every later call), and the next
// run, with room again, writes it whole. A small tmpfs stands in for the full disk.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { placeAddon } from '../../src/sea/native-assets';

const base = mkdtempSync(join(tmpdir(), `bt${process.pid}-seafull-`));
const mnt = join(base, 'mnt');
mkdirSync(mnt);
afterAll(() => {
  try {
    execFileSync('umount', [mnt]);
  } catch {
    // not mounted
  }
  rmSync(base, { recursive: true, force: true });
});

describe('placeAddon on a full disk', () => {
  it('fails without leaving a short file; with room again it writes the whole addon', () => {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k,mode=700', `bt${process.pid}-seafull`, mnt]);
    const bytes = new Uint8Array(40_000).map((_, i) => (i * 7) % 256);
    const sha = createHash('sha256').update(bytes).digest('hex');
    const dir = join(mnt, 'native');
    expect(() => placeAddon(dir, 'x', sha, bytes)).toThrow(/ENOSPC/);
    expect(readdirSync(dir)).toEqual([]);
    execFileSync('mount', ['-o', 'remount,size=1m', mnt]);
    const file = placeAddon(dir, 'x', sha, bytes);
    expect(statSync(file).size).toBe(bytes.length);
  });
});
