import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkNetworkConfig, installOnNode, type InstallPlan, runNodeAgent } from '../../src/cli/node-agent';

let dir: string;
let plan: InstallPlan;
const conflist = { cniVersion: '1.0.0', name: 'pods', plugins: [{ type: 'berth-bridge' }] };

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'berth-node-agent-'));
  for (const d of ['image', 'bin', 'net.d', 'config']) mkdirSync(join(dir, d));
  writeFileSync(join(dir, 'image/berth'), 'the single executable v1');
  writeFileSync(join(dir, 'image/berth-shim'), 'the shim v1');
  writeFileSync(join(dir, 'config/10-pods.conflist'), JSON.stringify(conflist));
  plan = {
    pluginsFrom: join(dir, 'image'),
    cniBinDir: join(dir, 'bin'),
    cniConfDir: join(dir, 'net.d'),
    conflist: join(dir, 'config/10-pods.conflist'),
  };
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('berth node-agent: install on the node', () => {
  it('installs berth and the shim under both plugin names (0755), then the config; no temp file left', async () => {
    const lines = await installOnNode(plan);
    expect(lines).toEqual([
      `installed ${dir}/bin/berth`,
      `installed ${dir}/bin/berth-bridge`,
      `installed ${dir}/bin/berth-ipam`,
      `installed ${dir}/net.d/10-pods.conflist`,
    ]);
    expect(readFileSync(join(dir, 'bin/berth'), 'utf8')).toBe('the single executable v1');
    for (const p of ['berth-bridge', 'berth-ipam']) {
      expect(readFileSync(join(dir, 'bin', p), 'utf8')).toBe('the shim v1');
      expect(statSync(join(dir, 'bin', p)).mode & 0o7777).toBe(0o755);
    }
    expect(JSON.parse(readFileSync(join(dir, 'net.d/10-pods.conflist'), 'utf8'))).toEqual(conflist);
    expect(readdirSync(join(dir, 'bin')).sort()).toEqual(['berth', 'berth-bridge', 'berth-ipam']);
    expect(readdirSync(join(dir, 'net.d'))).toEqual(['10-pods.conflist']);
  });

  it('a second start changes nothing; a new image replaces the files by rename (new inode)', async () => {
    await installOnNode(plan);
    const inode = statSync(join(dir, 'bin/berth-bridge')).ino;
    expect(await installOnNode(plan)).toEqual([
      `unchanged ${dir}/bin/berth`,
      `unchanged ${dir}/bin/berth-bridge`,
      `unchanged ${dir}/bin/berth-ipam`,
      `unchanged ${dir}/net.d/10-pods.conflist`,
    ]);
    expect(statSync(join(dir, 'bin/berth-bridge')).ino).toBe(inode);

    writeFileSync(join(dir, 'image/berth-shim'), 'the shim v2');
    const lines = await installOnNode(plan);
    expect(lines[0]).toBe(`unchanged ${dir}/bin/berth`);
    expect(lines[1]).toBe(`installed ${dir}/bin/berth-bridge`);
    expect(readFileSync(join(dir, 'bin/berth-bridge'), 'utf8')).toBe('the shim v2');
    // Renamed over, not written in place: a process executing the old file keeps its own inode.
    expect(statSync(join(dir, 'bin/berth-bridge')).ino).not.toBe(inode);
  });

  it('a file with the right bytes but the wrong mode is replaced', async () => {
    await installOnNode(plan);
    chmodSync(join(dir, 'bin/berth-ipam'), 0o644);
    expect(await installOnNode(plan)).toContain(`installed ${dir}/bin/berth-ipam`);
    expect(statSync(join(dir, 'bin/berth-ipam')).mode & 0o7777).toBe(0o755);
  });

  it('a broken config stops before anything is installed', async () => {
    writeFileSync(join(dir, 'config/10-pods.conflist'), '{"name": "pods", ');
    await expect(installOnNode(plan)).rejects.toThrow(/is not JSON/);
    expect(readdirSync(join(dir, 'bin'))).toEqual([]);
    expect(readdirSync(join(dir, 'net.d'))).toEqual([]);
  });

  it('a missing plugin fails the install and writes no config', async () => {
    rmSync(join(dir, 'image/berth-shim'));
    await expect(installOnNode(plan)).rejects.toThrow(/berth-shim/);
    expect(existsSync(join(dir, 'net.d/10-pods.conflist'))).toBe(false);
    expect(readdirSync(join(dir, 'bin'))).toEqual(['berth']);
  });

  it('a config running a plugin the bin dir lacks is installed with a warning naming it', async () => {
    const withPortmap = { ...conflist, plugins: [...conflist.plugins, { type: 'portmap' }] };
    writeFileSync(join(dir, 'config/10-pods.conflist'), JSON.stringify(withPortmap));
    const lines = await installOnNode(plan);
    expect(lines).toContainEqual(expect.stringMatching(/^warning: .* runs portmap, which .* does not hold/));
    expect(existsSync(join(dir, 'net.d/10-pods.conflist'))).toBe(true);
    // a symlink into the host's tree (dangling as seen from the container) counts as there
    symlinkSync('/usr/libexec/cni/portmap', join(dir, 'bin/portmap'));
    expect((await installOnNode(plan)).some((l) => l.startsWith('warning:'))).toBe(false);
  });

  it("a network config sorting before berth's is named: runtimes would use it", async () => {
    writeFileSync(join(dir, 'net.d/05-cilium.conflist'), '{}');
    const lines = await installOnNode(plan);
    expect(lines).toContainEqual(expect.stringMatching(/05-cilium\.conflist sorts before 10-pods\.conflist/));
    writeFileSync(join(dir, 'net.d/99-other.conf'), '{}');
    rmSync(join(dir, 'net.d/05-cilium.conflist'));
    expect((await installOnNode(plan)).some((l) => l.includes('sorts before'))).toBe(false);
  });

  it("berthd's flags are checked before anything is installed (exit 2, node untouched)", async () => {
    const errs: string[] = [];
    const code = await runNodeAgent(
      {
        pluginsFrom: plan.pluginsFrom,
        cniBinDir: plan.cniBinDir,
        cniConfDir: plan.cniConfDir,
        conflist: plan.conflist!,
        etcdEndpoints: 'etcd-0:2379',
      },
      (l) => void errs.push(l),
    );
    expect(code).toBe(2);
    expect(errs.join('')).toMatch(/is not http\(s\):\/\/host:port/);
    expect(readdirSync(join(dir, 'bin'))).toEqual([]);
    expect(readdirSync(join(dir, 'net.d'))).toEqual([]);
  });

  it('with --log-format json its own lines are JSON lines too', async () => {
    writeFileSync(join(dir, 'config/10-pods.conflist'), '{"name": "pods", ');
    const errs: string[] = [];
    const code = await runNodeAgent(
      { ...plan, conflist: plan.conflist!, logFormat: 'json' },
      (l) => void errs.push(l),
    );
    expect(code).toBe(1);
    expect(errs).toHaveLength(1);
    expect(JSON.parse(errs[0]!)).toMatchObject({
      level: 'error',
      component: 'node-agent',
      msg: expect.stringMatching(/is not JSON/),
    });
  });

  it('without --conflist only the plugins are installed', async () => {
    const { conflist: _, ...noConfig } = plan;
    expect(await installOnNode(noConfig)).toHaveLength(3);
    expect(readdirSync(join(dir, 'net.d'))).toEqual([]);
  });

  it('checks what a runtime needs of a network config', () => {
    expect(() => checkNetworkConfig('a.conflist', JSON.stringify(conflist))).not.toThrow();
    expect(() => checkNetworkConfig('a.conflist', '[]')).toThrow(/not a JSON object/);
    expect(() => checkNetworkConfig('a.conflist', '{"cniVersion":"1.0.0","plugins":[]}')).toThrow(/"name"/);
    expect(() => checkNetworkConfig('a.conflist', '{"name":"n","plugins":[]}')).toThrow(/"cniVersion"/);
    expect(() => checkNetworkConfig('a.conflist', '{"name":"n","cniVersion":"1.0.0"}')).toThrow(/plugins/);
    expect(() =>
      checkNetworkConfig('a.conf', '{"name":"n","cniVersion":"1.0.0","type":"berth-bridge"}'),
    ).not.toThrow();
    expect(() => checkNetworkConfig('a.conf', '{"name":"n","cniVersion":"1.0.0"}')).toThrow(/"type"/);
  });
});
