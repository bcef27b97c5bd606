// The extraction directory check of the single executable: only a directory nobody else can write to
// (and whose ancestors nobody else can swap) may hold libraries berth will dlopen().
import { createHash } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { assertPrivateDir, placeAddon } from '../../src/sea/native-assets';

describe('assertPrivateDir', () => {
  let base: string;
  beforeEach(() => {
    // mkdtemp makes a 0700 directory of ours under the sticky /tmp.
    base = mkdtempSync(join(tmpdir(), `bt${process.pid}-sea-`));
  });
  afterEach(() => {
    chmodSync(base, 0o700);
    rmSync(base, { recursive: true, force: true });
  });

  it('accepts a 0700 directory of ours under a sticky world-writable /tmp', () => {
    const dir = join(base, 'native');
    mkdirSync(dir, { mode: 0o700 });
    expect(() => assertPrivateDir(dir)).not.toThrow();
  });

  it.each([
    [0o777, 'writable by group or others'],
    [0o770, 'writable by group or others'],
    [0o702, 'writable by group or others'],
  ])('refuses a directory with mode %s', (mode, message) => {
    const dir = join(base, 'native');
    mkdirSync(dir);
    chmodSync(dir, mode);
    expect(() => assertPrivateDir(dir)).toThrow(message);
  });

  it('refuses a symlink to a private directory', () => {
    const real = join(base, 'real');
    mkdirSync(real, { mode: 0o700 });
    const link = join(base, 'link');
    symlinkSync(real, link);
    expect(() => assertPrivateDir(link)).toThrow('symlink');
  });

  it('refuses a private directory inside a group-writable, non-sticky one', () => {
    const parent = join(base, 'shared');
    const dir = join(parent, 'native');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(parent, 0o775);
    expect(() => assertPrivateDir(dir)).toThrow(`${parent} (above ${dir}) is writable by group or others`);
  });

  it.runIf(process.geteuid?.() === 0)('refuses a directory owned by another user (root only)', async () => {
    const { chownSync } = await import('node:fs');
    const dir = join(base, 'native');
    mkdirSync(dir, { mode: 0o700 });
    chownSync(dir, 65534, 65534);
    expect(() => assertPrivateDir(dir)).toThrow('owned by uid 65534');
  });

  it('refuses something that is not a directory', () => {
    expect(() => assertPrivateDir(join(base, 'missing'))).toThrow(/ENOENT/);
  });

  it('accepts a private directory below a symlinked ancestor of ours (/var/lib/berth on a data disk)', () => {
    mkdirSync(join(base, 'disk', 'berth', 'native'), { recursive: true, mode: 0o700 });
    symlinkSync(join(base, 'disk', 'berth'), join(base, 'berth'));
    expect(() => assertPrivateDir(join(base, 'berth', 'native'))).not.toThrow();
  });

  it('refuses one whose symlinked ancestor leads into a group-writable directory', () => {
    const shared = join(base, 'shared');
    mkdirSync(join(shared, 'berth', 'native'), { recursive: true, mode: 0o700 });
    chmodSync(shared, 0o775);
    symlinkSync(join(shared, 'berth'), join(base, 'berth'));
    expect(() => assertPrivateDir(join(base, 'berth', 'native'))).toThrow(
      `${shared} (above ${join(base, 'berth', 'native')}) is writable by group or others`,
    );
  });
});

describe('placeAddon', () => {
  let base: string;
  const bytes = new Uint8Array(20_000).map((_, i) => i % 251);
  const sha = createHash('sha256').update(bytes).digest('hex');
  beforeEach(() => {
    base = mkdtempSync(join(tmpdir(), `bt${process.pid}-sea-`));
  });
  afterEach(() => rmSync(base, { recursive: true, force: true }));

  it('writes the bytes once under their sha256, mode 0500, no temp file left', () => {
    const dir = join(base, 'native');
    const file = placeAddon(dir, 'x', sha, bytes);
    expect(file).toBe(join(dir, `${sha}.node`));
    expect(readFileSync(file).equals(Buffer.from(bytes))).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o500);
    const ino = statSync(file).ino;
    placeAddon(dir, 'x', sha, bytes);
    expect(statSync(file).ino).toBe(ino);
    expect(readdirSync(dir)).toEqual([`${sha}.node`]);
  });

  it('a file cut short under that name (a full disk, an older berth) is written again, not trusted', () => {
    const dir = join(base, 'native');
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(join(dir, `${sha}.node`), bytes.subarray(0, 16_384), { mode: 0o500 });
    const file = placeAddon(dir, 'x', sha, bytes);
    expect(statSync(file).size).toBe(bytes.length);
  });

  it('through a symlinked ancestor: checked, written and loaded at the path with no link in it', () => {
    mkdirSync(join(base, 'disk', 'berth'), { recursive: true, mode: 0o700 });
    symlinkSync(join(base, 'disk', 'berth'), join(base, 'berth'));
    const file = placeAddon(join(base, 'berth', 'native'), 'x', sha, bytes);
    expect(file).toBe(join(realpathSync(base), 'disk', 'berth', 'native', `${sha}.node`));
  });

  it('bytes that are not what the manifest says are refused', () => {
    expect(() => placeAddon(join(base, 'native'), 'x', '0'.repeat(64), bytes)).toThrow(/corrupt/);
  });
});
