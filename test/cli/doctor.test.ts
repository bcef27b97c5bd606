import { copyFileSync, mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  diagnose,
  effectiveVersion,
  parseRuntimeVersion,
  runtimeSupport,
  type DoctorFacts,
} from '../../src/cli/runtime/compat';
import { runDoctor } from '../../src/cli/doctor';

const conflist = (cniVersion: string, extra: Record<string, unknown> = {}) => ({
  cniVersion,
  name: 'n',
  plugins: [{ type: 'berth-bridge', ipam: { type: 'berth-ipam' } }],
  ...extra,
});
const facts = (over: Partial<DoctorFacts>): DoctorFacts => ({
  confDir: '/c',
  binDir: '/b',
  configs: [],
  plugins: ['loopback', 'berth-bridge', 'berth-ipam'],
  runtimes: [],
  ...over,
});
const warnings = (f: DoctorFacts) =>
  diagnose(f)
    .filter((x) => x.level === 'warn')
    .map((x) => x.message);

describe('runtime support table', () => {
  it('containerd 1.6 and 1.7 read up to 1.0.0 and ignore cniVersions; 2.0 reads 1.1.0', () => {
    expect(runtimeSupport('containerd', '1.6.20')).toMatchObject({
      maxVersion: '1.0.0',
      readsCniVersions: false,
    });
    expect(runtimeSupport('containerd', '1.7.13')).toMatchObject({ maxVersion: '1.0.0' });
    expect(runtimeSupport('containerd', '1.5.9')).toMatchObject({ maxVersion: '0.4.0' });
    expect(runtimeSupport('containerd', '2.0.0')).toMatchObject({
      maxVersion: '1.1.0',
      readsCniVersions: true,
    });
    expect(runtimeSupport('cri-o', '1.29.1').maxVersion).toBe('1.0.0');
    expect(runtimeSupport('podman', '5.0.0').noCni).toBe(true);
  });
  it('parses the runtimes --version lines', () => {
    expect(
      parseRuntimeVersion(
        'containerd',
        'containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1\n',
      ),
    ).toBe('1.6.20');
    expect(parseRuntimeVersion('containerd', 'containerd containerd.io v1.7.13 7c3aca7\n')).toBe('1.7.13');
    expect(parseRuntimeVersion('podman', 'podman version 4.3.1\n')).toBe('4.3.1');
    expect(parseRuntimeVersion('cri-o', 'crio version 1.28.1\nVersion: 1.28.1\n')).toBe('1.28.1');
  });
  it('with cniVersions, a libcni >= 1.2 picks the highest it reads; an older one uses cniVersion', () => {
    const c = conflist('1.0.0', { cniVersions: ['1.0.0', '1.1.0'] });
    expect(effectiveVersion(c, runtimeSupport('containerd', '2.0.1'))).toBe('1.1.0');
    expect(effectiveVersion(c, runtimeSupport('containerd', '1.6.20'))).toBe('1.0.0');
    // cniVersion is a candidate too (libcni's ConfListFromBytes)
    const older = conflist('1.0.0', { cniVersions: ['0.4.0'] });
    expect(effectiveVersion(older, runtimeSupport('containerd', '2.0.1'))).toBe('1.0.0');
  });
});

describe('diagnose', () => {
  it('warns when containerd 1.6 meets a 1.1.0 config, and names the version to use', () => {
    const w = warnings(
      facts({
        runtimes: [{ name: 'containerd', version: '1.6.20' }],
        configs: [{ file: '10-b.conflist', config: conflist('1.1.0') }],
      }),
    );
    expect(w).toHaveLength(1);
    expect(w[0]).toContain('10-b.conflist');
    expect(w[0]).toContain('up to 1.0.0');
    expect(w[0]).toContain('"cniVersion": "1.0.0"');
  });
  it('is quiet for a 1.0.0 config (with a 1.1.0 cniVersions list) on containerd 1.6 and 2.0', () => {
    const configs = [
      { file: '10-b.conflist', config: conflist('1.0.0', { cniVersions: ['1.0.0', '1.1.0'] }) },
    ];
    expect(warnings(facts({ runtimes: [{ name: 'containerd', version: '1.6.20' }], configs }))).toEqual([]);
    expect(warnings(facts({ runtimes: [{ name: 'containerd', version: '2.0.2' }], configs }))).toEqual([]);
  });
  it('warns when loopback is missing for containerd; not for CRI-O (it brings lo up itself) or podman 4', () => {
    const configs = [{ file: 'a.conflist', config: conflist('1.0.0') }];
    const plugins = ['berth-bridge', 'berth-ipam'];
    expect(
      warnings(facts({ plugins, configs, runtimes: [{ name: 'containerd', version: '1.6.20' }] }))[0],
    ).toContain('/b/loopback is missing');
    expect(warnings(facts({ plugins, configs, runtimes: [{ name: 'cri-o', version: '1.28.0' }] }))).toEqual(
      [],
    );
    expect(warnings(facts({ plugins, configs, runtimes: [{ name: 'podman', version: '4.3.1' }] }))).toEqual(
      [],
    );
  });
  it('warns when a chained plugin does not speak the version the runtime picks from cniVersions', () => {
    const chain = {
      cniVersion: '1.0.0',
      cniVersions: ['1.0.0', '1.1.0'],
      name: 'n',
      plugins: [{ type: 'berth-bridge', ipam: { type: 'berth-ipam' } }, { type: 'portmap' }],
    };
    const all = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0'];
    const f = (version: string) =>
      facts({
        plugins: ['loopback', 'berth-bridge', 'berth-ipam', 'portmap'],
        configs: [{ file: 'a.conflist', config: chain }],
        runtimes: [{ name: 'containerd', version }],
        pluginVersions: {
          'berth-bridge': [...all, '1.1.0'],
          'berth-ipam': [...all, '1.1.0'],
          portmap: all, // Debian 12's containernetworking-plugins 1.1.1
        },
      });
    expect(warnings(f('2.0.0'))).toEqual([
      expect.stringMatching(
        /gives its plugins cniVersion 1\.1\.0, which portmap does not speak.*drop 1\.1\.0 from cniVersions/,
      ),
    ]);
    // containerd 1.6 ignores cniVersions: 1.0.0, which portmap speaks
    expect(warnings(f('1.6.20'))).toEqual([]);
  });

  it('podman 5 beside another runtime: a note, not a warning', () => {
    const configs = [{ file: 'a.conflist', config: conflist('1.0.0') }];
    expect(
      warnings(
        facts({
          configs,
          runtimes: [
            { name: 'containerd', version: '1.6.20' },
            { name: 'podman', version: '5.0.1' },
          ],
        }),
      ),
    ).toEqual([]);
  });

  it('warns on a missing plugin type, an unreadable file, no config at all', () => {
    expect(
      warnings(
        facts({ plugins: ['loopback'], configs: [{ file: 'a.conflist', config: conflist('1.0.0') }] }),
      ),
    ).toEqual([
      expect.stringContaining('plugin type berth-bridge is not in /b'),
      expect.stringContaining('plugin type berth-ipam is not in /b'),
    ]);
    expect(warnings(facts({ configs: [{ file: 'x.conf', error: 'Unexpected token' }] }))[0]).toContain(
      'cannot be read',
    );
    expect(warnings(facts({}))[0]).toContain('no network config in /c');
  });
  it('marks the first config in lexical order as the one runtimes use', () => {
    const f = facts({
      runtimes: [{ name: 'containerd', version: '1.6.20' }],
      configs: [
        { file: '20-z.conflist', config: conflist('1.1.0') },
        { file: '10-a.conflist', config: conflist('1.1.0') },
      ],
    });
    const w = warnings(f);
    expect(w[0]).toContain('10-a.conflist (first');
    expect(w[1]).not.toContain('(first');
  });
});

describe('berth doctor on a conf dir', () => {
  let dir = '';
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  /** A plugin that answers VERSION with these versions. */
  const answer = (versions: string[]) =>
    `#!/bin/sh\ncat >/dev/null\necho '${JSON.stringify({ cniVersion: '1.0.0', supportedVersions: versions })}'\n`;
  const ALL = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

  it('reads the dirs it is given, exits 1 with a warning, 0 once the config is fixed', async () => {
    dir = mkdtempSync(join(tmpdir(), 'berth-doctor-'));
    mkdirSync(join(dir, 'net.d'));
    mkdirSync(join(dir, 'bin'));
    for (const p of ['loopback', 'berth-bridge', 'berth-ipam'])
      writeFileSync(join(dir, 'bin', p), answer(ALL), { mode: 0o755 });
    writeFileSync(join(dir, 'net.d', '10-berth.conflist'), JSON.stringify(conflist('1.1.0')));
    writeFileSync(join(dir, 'net.d', 'README'), 'not a config');
    let out = '';
    const io = { out: (s: string) => void (out += s), err: () => undefined };
    const o = { confDir: join(dir, 'net.d'), binDir: join(dir, 'bin'), runtime: ['containerd=1.6.20'] };
    expect(await runDoctor(o, io)).toBe(1);
    expect(out).toMatch(/^WARN .*10-berth\.conflist.*containerd 1\.6\.20 reads results up to 1\.0\.0/m);
    writeFileSync(join(dir, 'net.d', '10-berth.conflist'), JSON.stringify(conflist('1.0.0')));
    out = '';
    expect(await runDoctor(o, io)).toBe(0);
    expect(out).toContain('containerd 1.6.20 will use cniVersion 1.0.0');
  });

  it("asks each plugin of the chain for its versions (VERSION) and warns on the one below the runtime's pick", async () => {
    dir = mkdtempSync(join(tmpdir(), 'berth-doctor-'));
    mkdirSync(join(dir, 'net.d'));
    mkdirSync(join(dir, 'bin'));
    const upTo10 = ['0.3.1', '0.4.0', '1.0.0'];
    for (const [p, v] of [
      ['berth-bridge', [...upTo10, '1.1.0']],
      ['berth-ipam', [...upTo10, '1.1.0']],
      ['portmap', upTo10],
    ] as const)
      writeFileSync(join(dir, 'bin', p), answer([...v]), { mode: 0o755 });
    const chain = conflist('1.0.0', { cniVersions: ['1.0.0', '1.1.0'] });
    (chain.plugins as unknown[]).push({ type: 'portmap' });
    writeFileSync(join(dir, 'net.d', '10-berth.conflist'), JSON.stringify(chain));
    let out = '';
    const io = { out: (s: string) => void (out += s), err: () => undefined };
    const o = { confDir: join(dir, 'net.d'), binDir: join(dir, 'bin'), runtime: ['cri-o=1.31.0'] };
    expect(await runDoctor(o, io)).toBe(1);
    expect(out).toMatch(
      /^WARN .*cri-o 1\.31\.0 gives its plugins cniVersion 1\.1\.0, which portmap does not speak/m,
    );
  });

  it('warns when the shims have no `berth` beside them: every call fails once no berthd takes it', async () => {
    dir = mkdtempSync(join(tmpdir(), 'berth-doctor-'));
    mkdirSync(join(dir, 'net.d'));
    mkdirSync(join(dir, 'bin'));
    const shim = join(__dirname, '../../native/shim/build/bin/berth-bridge');
    for (const p of ['berth-bridge', 'berth-ipam']) copyFileSync(shim, join(dir, 'bin', p));
    writeFileSync(join(dir, 'bin', 'loopback'), answer(ALL), { mode: 0o755 });
    writeFileSync(join(dir, 'net.d', '10-berth.conflist'), JSON.stringify(conflist('1.0.0')));
    let out = '';
    const io = { out: (s: string) => void (out += s), err: () => undefined };
    const o = { confDir: join(dir, 'net.d'), binDir: join(dir, 'bin'), runtime: ['containerd=1.7.13'] };
    expect(await runDoctor(o, io)).toBe(1);
    for (const p of ['berth-bridge', 'berth-ipam'])
      expect(out).toContain(`: ${join(dir, 'bin', p)} fails VERSION when no berthd takes the call (`);
    expect(out).toMatch(/standalone program .*\/berth cannot be run/);
    // With the standalone program beside them (here the development tree's launcher), all is well.
    symlinkSync(join(__dirname, '../../bin/berth'), join(dir, 'bin', 'berth'));
    out = '';
    expect(await runDoctor(o, io), out).toBe(0);
  });
});
