// The container/host comparison of berth-ipam's paths (src/daemon/host-view.ts), on a fake host root: a
// directory whose tree links back to some of this machine's directories (shared) and not to others.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { berthIpamNotShared, berthIpamPaths, hostViewThrough } from '../../src/daemon/host-view';

const t = mkdtempSync(join(tmpdir(), `bt${process.pid}-hvu-`));
const hostRoot = join(t, 'host');
for (const d of ['shared', 'mine', 'etc']) mkdirSync(join(t, d));
writeFileSync(join(t, 'etc', 'resolv.conf'), 'nameserver 198.18.0.53\n');
// The host sees t/shared as it is; t/mine and t/etc are other directories of the same name on the host.
mkdirSync(join(hostRoot, t, 'mine'), { recursive: true });
mkdirSync(join(hostRoot, t, 'etc'), { recursive: true });
symlinkSync(join(t, 'shared'), join(hostRoot, t, 'shared'));
afterAll(() => rmSync(t, { recursive: true, force: true }));

describe('hostViewThrough', () => {
  const warnings: string[] = [];
  const view = hostViewThrough(hostRoot, (l) => warnings.push(l));

  it('a directory both see is shared, also a data dir not made yet below it', () => {
    expect(view.notShared(join(t, 'shared'))).toBeUndefined();
    expect(view.notShared(join(t, 'shared', 'not-yet', 'net'))).toBeUndefined();
  });

  it("a directory only berthd's side has is not shared, named once in the log", () => {
    expect(view.notShared(join(t, 'mine'))).toMatch(/is not the host's/);
    expect(view.notShared(join(t, 'mine', 'not-yet'))).toMatch(new RegExp(`${join(t, 'mine')} differs`));
    view.notShared(join(t, 'mine'));
    expect(warnings.filter((w) => w.startsWith(join(t, 'mine ')))).toHaveLength(1);
  });

  it("a config's data dir and resolvConf are both checked; the default data dir when none is named", () => {
    const config = (ipam: Record<string, unknown>) => ({ name: 'n', ipam: { type: 'berth-ipam', ...ipam } });
    expect(berthIpamPaths(config({}), '/var/lib/cni/networks')).toEqual(['/var/lib/cni/networks']);
    expect(berthIpamNotShared(view, config({ dataDir: join(t, 'shared') }), '/x')).toBeUndefined();
    expect(
      berthIpamNotShared(
        view,
        config({ dataDir: join(t, 'shared'), resolvConf: join(t, 'etc', 'resolv.conf') }),
        '/x',
      ),
    ).toMatch(/resolv\.conf is not the host's/);
    expect(berthIpamNotShared(view, config({ dataDir: join(t, 'mine') }), '/x')).toMatch(/not the host's/);
  });

  it('our own root, or a root that cannot be read: nothing is refused', () => {
    expect(hostViewThrough(`/proc/${process.pid}/root`).notShared(join(t, 'mine'))).toBeUndefined();
    const missing = hostViewThrough(join(t, 'no-such-root'));
    expect(missing.notShared(join(t, 'mine'))).toBeUndefined();
    expect(missing.unchecked).toMatch(/cannot be read/);
  });
});
