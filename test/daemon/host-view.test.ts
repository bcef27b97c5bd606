// The container/host comparison of berth-ipam's paths (src/daemon/host-view.ts), on a fake host root: a
// directory `host` standing for the host's `/`. What berthd sees as shared with it is reached through a
// symlink of ours into `host`; what is berthd's alone is a directory of ours of the same name.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { berthIpamNotShared, hostViewThrough, resolveInRoot } from '../../src/daemon/host-view';
import { ipamStatePaths } from '../../src/ipam/config';

const t = mkdtempSync(join(tmpdir(), `bt${process.pid}-hvu-`));
const hostRoot = join(t, 'host');
const ours = join(t, 'ours');
// The host's /data, /run and an absolute link /var/run → /run (as on Debian); ours the same names.
for (const d of ['data', 'run', 'var', 'etc']) mkdirSync(join(hostRoot, d), { recursive: true });
symlinkSync('/run', join(hostRoot, 'var', 'run'));
writeFileSync(join(hostRoot, 'etc', 'resolv.conf'), 'nameserver 198.18.0.53\n');
// berthd's view: `ours/shared` is the host's /data (a mount, in a real container), `ours/mine` its own.
mkdirSync(ours);
mkdirSync(join(ours, 'mine'));
symlinkSync(join(hostRoot, 'data'), join(ours, 'shared'));
afterAll(() => rmSync(t, { recursive: true, force: true }));

describe('resolveInRoot', () => {
  it("follows an absolute link inside the root, as the host's kernel would (not in ours)", () => {
    expect(resolveInRoot(hostRoot, '/var/run')).toBe(`${hostRoot}/run`);
    expect(resolveInRoot(hostRoot, '/var/run/../data')).toBe(`${hostRoot}/data`);
    expect(resolveInRoot(hostRoot, '/../../data')).toBe(`${hostRoot}/data`);
    expect(resolveInRoot(hostRoot, '/nope/x')).toBeUndefined();
  });

  it('a loop of links is undefined, not a hang', () => {
    symlinkSync('/loop2', join(hostRoot, 'loop1'));
    symlinkSync('/loop1', join(hostRoot, 'loop2'));
    expect(resolveInRoot(hostRoot, '/loop1/x')).toBeUndefined();
  });
});

describe('hostViewThrough', () => {
  const warnings: string[] = [];
  // A path is the same string on both sides: `ours/...` in berthd's root and in the host's (under hostRoot).
  const view = hostViewThrough(hostRoot, (l) => warnings.push(l));
  const shared = join(ours, 'shared');

  it('a directory both see is shared, also a data dir not made yet below it', () => {
    // berthd's `ours/shared` and the host's `ours/shared`: the host has the same link (it is the host's
    // tree that decides), to its /data.
    mkdirSync(join(hostRoot, ours), { recursive: true });
    symlinkSync('/data', join(hostRoot, ours, 'shared'));
    expect(view.notShared(shared)).toBeUndefined();
    expect(view.notShared(join(shared, 'not-yet', 'net'))).toBeUndefined();
  });

  it("a directory only berthd's side has is not shared, named once in the log", () => {
    mkdirSync(join(hostRoot, ours, 'mine'), { recursive: true });
    expect(view.notShared(join(ours, 'mine'))).toMatch(/is not the host's/);
    expect(view.notShared(join(ours, 'mine', 'not-yet'))).toMatch(
      new RegExp(`${join(ours, 'mine')} differs`),
    );
    view.notShared(join(ours, 'mine'));
    expect(warnings.filter((w) => w.startsWith(`${join(ours, 'mine')} `))).toHaveLength(1);
  });

  it("a config's data dir and resolvConf are both checked; the default data dir when none is named", () => {
    const config = (ipam: Record<string, unknown>) => ({ name: 'n', ipam: { type: 'berth-ipam', ...ipam } });
    // Read as berth-ipam reads them: the default data dir, field names in any case.
    expect(ipamStatePaths(config({}))).toEqual(['/var/lib/cni/networks']);
    expect(ipamStatePaths(config({ DataDir: join(ours, 'mine') }))).toEqual([join(ours, 'mine')]);
    expect(berthIpamNotShared(view, config({ dataDir: shared }))).toBeUndefined();
    writeFileSync(join(ours, 'mine', 'resolv.conf'), 'nameserver 198.18.0.54\n');
    expect(
      berthIpamNotShared(view, config({ dataDir: shared, resolvConf: join(ours, 'mine', 'resolv.conf') })),
    ).toMatch(/resolv\.conf is not the host's/);
    expect(berthIpamNotShared(view, config({ dataDir: join(ours, 'mine') }))).toMatch(/not the host's/);
  });

  it('our own root, or a root that cannot be read: nothing is refused', () => {
    expect(hostViewThrough(`/proc/${process.pid}/root`).notShared(join(ours, 'mine'))).toBeUndefined();
    const missing = hostViewThrough(join(t, 'no-such-root'));
    expect(missing.notShared(join(ours, 'mine'))).toBeUndefined();
    expect(missing.unchecked).toMatch(/cannot be read/);
  });
});
