// The extraction directory check of the single executable: only a directory nobody else can write to
// (and whose ancestors nobody else can swap) may hold libraries berth will dlopen().
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { assertPrivateDir } from '../../src/sea/native-assets';

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
});
