// The runtime's command order and caching, checked through real (fake) plugin executables.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { containerIdFor, runExec, type ExecOptions, type ExecVerb } from '../../src/cli/exec';
import { makeFakePlugins, type FakePlugins } from './fake-plugins';

let fake: FakePlugins;
let cacheDir: string;

beforeEach(() => {
  fake = makeFakePlugins(['a', 'b', 'c']);
  cacheDir = join(fake.root, 'cache');
});
afterEach(() => fake.cleanup());

function list(extra: Record<string, unknown> = {}, plugins = ['a', 'b', 'c']): Record<string, unknown> {
  return { cniVersion: '1.1.0', name: 'net1', plugins: plugins.map((type) => ({ type })), ...extra };
}

async function exec(
  verb: ExecVerb,
  netns: string,
  opts: Omit<ExecOptions, 'verb' | 'network' | 'netns'> = {},
  env: Record<string, string> = {},
) {
  let stdout = '';
  let stderr = '';
  const code = await runExec(
    { verb, network: 'net1', netns, cacheDir, ...opts },
    {
      env: {
        PATH: process.env.PATH,
        NETCONFPATH: fake.confDir,
        CNI_PATH: fake.binDir,
        FAKE_DIR: fake.dir,
        ...env,
      },
      stdout: (s) => (stdout += s),
      stderr: (s) => (stderr += s),
    },
  );
  return { code, stdout, stderr };
}

const order = () => fake.calls().map((c) => `${c.plugin}:${c.command}`);
const cacheFiles = () =>
  existsSync(join(cacheDir, 'results')) ? readdirSync(join(cacheDir, 'results')) : [];

describe('ADD', () => {
  test('runs the plugins in list order, chaining each result into the next as prevResult', async () => {
    fake.writeConf('10-net1.conflist', list());
    const r = await exec('add', '/run/netns/p1');
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(order()).toEqual(['a:ADD', 'b:ADD', 'c:ADD']);
    const [a, b, c] = fake.calls();
    expect(a?.stdin).not.toHaveProperty('prevResult');
    // The fakes print no cniVersion: the runtime takes the config's, as libcni's fixupResultVersion does.
    expect(b?.stdin.prevResult).toEqual({
      cniVersion: '1.1.0',
      interfaces: [{ name: 'a' }],
      ips: [{ address: '198.18.7.1/24', interface: 0 }],
    });
    expect((c?.stdin.prevResult as { interfaces: unknown }).interfaces).toEqual([{ name: 'b' }]);
    // The printed result is the last plugin's, indented like cnitool's.
    expect(JSON.parse(r.stdout)).toMatchObject({ cniVersion: '1.1.0', interfaces: [{ name: 'c' }] });
    expect(r.stdout).toContain('\n    "cniVersion"');
    expect(cacheFiles()).toEqual([`net1-${containerIdFor('/run/netns/p1')}-eth0`]);
  });

  test('stops at the first failing plugin, reports it by type with its code message, and caches nothing', async () => {
    fake.writeConf('10-net1.conflist', list());
    fake.failOn('b', 'ADD');
    const r = await exec('add', '/run/netns/p1');
    expect(r.code).toBe(1);
    expect(order()).toEqual(['a:ADD', 'b:ADD']);
    expect(r.stderr).toBe('plugin type="b" failed (add): b told to fail; ADD\n');
    expect(r.stdout).toBe('');
    expect(cacheFiles()).toEqual([]);
  });

  test('each plugin gets the environment libcni gives: the runtime env plus all six CNI_* variables', async () => {
    fake.writeConf('10-net1.conflist', list({}, ['a']));
    await exec(
      'add',
      '/run/netns/p1',
      { ifname: 'net7' },
      { CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=x', MY_VAR: 'kept' },
    );
    const env = fake.calls()[0]?.env ?? {};
    expect(env).toMatchObject({
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: containerIdFor('/run/netns/p1'),
      CNI_NETNS: '/run/netns/p1',
      CNI_IFNAME: 'net7',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=x',
      CNI_PATH: fake.binDir,
      MY_VAR: 'kept',
    });
  });

  test('runtimeConfig carries only the capabilities a plugin sets to true and CAP_ARGS has', async () => {
    fake.writeConf('10-net1.conflist', {
      cniVersion: '1.0.0',
      name: 'net1',
      plugins: [
        { type: 'a', capabilities: { portMappings: true, mac: false, ips: true } },
        { type: 'b' },
        { type: 'c', capabilities: { bandwidth: true }, runtimeConfig: { admin: 1 } },
      ],
    });
    const caps = {
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
      mac: 'c2:11:22:33:44:55',
    };
    expect((await exec('add', '/run/netns/p1', {}, { CAP_ARGS: JSON.stringify(caps) })).code).toBe(0);
    const [a, b, c] = fake.calls();
    expect(a?.stdin.runtimeConfig).toEqual({ portMappings: caps.portMappings });
    expect(b?.stdin).not.toHaveProperty('runtimeConfig');
    // Nothing to send: libcni leaves an admin-written runtimeConfig alone.
    expect(c?.stdin.runtimeConfig).toEqual({ admin: 1 });
    // name and cniVersion are inserted into every plugin's config; libcni passes capabilities through.
    expect(a?.stdin).toMatchObject({
      name: 'net1',
      cniVersion: '1.0.0',
      type: 'a',
      capabilities: { portMappings: true },
    });
  });

  test('rejects bad CNI_ARGS and CAP_ARGS before running anything', async () => {
    fake.writeConf('10-net1.conflist', list());
    expect((await exec('add', '/run/netns/p1', {}, { CNI_ARGS: 'A=1;B' })).stderr).toContain(
      'invalid CNI_ARGS pair "B"',
    );
    expect((await exec('add', '/run/netns/p1', {}, { CAP_ARGS: '[1]' })).code).toBe(1);
    expect((await exec('add', '/run/netns/p1', { ifname: 'a/b' })).stderr).toContain('interface name');
    expect(fake.calls()).toEqual([]);
  });
});

describe('results a runtime would refuse', () => {
  test.each([
    ['an unknown cniVersion', '{"cniVersion":"9.9.9"}', /9\.9\.9/],
    ['an interface index as a string', '{"ips":[{"address":"198.18.7.9/24","interface":"0"}]}', /interface/],
  ])('%s: the ADD fails at that plugin and nothing is cached', async (_what, out, message) => {
    fake.writeConf('10-net1.conflist', list());
    fake.answer('b', 'ADD', out);
    const r = await exec('add', '/run/netns/p1');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/plugin type="b" failed \(add\)/);
    expect(r.stderr).toMatch(message);
    expect(order()).toEqual(['a:ADD', 'b:ADD']);
    expect(cacheFiles()).toEqual([]);
  });
});

describe('a list without cniVersion (0.1.0, as libcni reads it)', () => {
  test('ADD, then DEL and GC of it work', async () => {
    const { cniVersion: _, ...noVersion } = list();
    fake.writeConf('10-net1.conflist', noVersion);
    expect((await exec('add', '/run/netns/p1')).code).toBe(0);
    const del = await exec('del', '/run/netns/p1');
    expect(del, del.stderr).toMatchObject({ code: 0 });
    expect(order().slice(-3)).toEqual(['c:DEL', 'b:DEL', 'a:DEL']);
    expect(cacheFiles()).toEqual([]);
    expect((await exec('gc', '/run/netns/p1')).code).toBe(0);
  });
});

describe('DEL', () => {
  test('runs in reverse order with the cached result as prevResult, then removes the cache file', async () => {
    fake.writeConf('10-net1.conflist', list());
    const added = JSON.parse((await exec('add', '/run/netns/p1')).stdout);
    fake.resetCalls();
    expect((await exec('del', '/run/netns/p1')).code).toBe(0);
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'a:DEL']);
    for (const call of fake.calls()) expect(call.stdin.prevResult).toEqual(added);
    expect(cacheFiles()).toEqual([]);
  });

  test('a failing plugin stops the DEL and keeps the cache file for the retry', async () => {
    fake.writeConf('10-net1.conflist', list());
    await exec('add', '/run/netns/p1');
    fake.resetCalls();
    fake.failOn('b', 'DEL');
    const r = await exec('del', '/run/netns/p1');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('plugin type="b" failed (delete)');
    expect(order()).toEqual(['c:DEL', 'b:DEL']);
    expect(cacheFiles()).toHaveLength(1);
  });

  test('without a cache file the DEL still runs every plugin, without prevResult; repeating it succeeds', async () => {
    fake.writeConf('10-net1.conflist', list());
    expect((await exec('del', '/run/netns/never-added')).code).toBe(0);
    expect((await exec('del', '/run/netns/never-added')).code).toBe(0);
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'a:DEL', 'c:DEL', 'b:DEL', 'a:DEL']);
    for (const call of fake.calls()) expect(call.stdin).not.toHaveProperty('prevResult');
  });

  test('a list whose version changed since the ADD gets the cached result converted to its version', async () => {
    fake.writeConf('10-net1.conflist', list({ cniVersion: '1.0.0' }));
    await exec('add', '/run/netns/p1');
    fake.writeConf('10-net1.conflist', list({ cniVersion: '0.4.0' }));
    fake.resetCalls();
    expect((await exec('del', '/run/netns/p1')).code).toBe(0);
    // 0.4.0 tags every IP with its family; 1.0.0 had dropped the field.
    expect(fake.calls()[0]?.stdin.prevResult).toMatchObject({
      cniVersion: '0.4.0',
      ips: [{ version: '4', address: '198.18.7.5/24', interface: 0 }],
    });
  });

  test('a cached result that cannot be converted is dropped and the DEL goes on without one (as libcni)', async () => {
    fake.writeConf('10-net1.conflist', list({ cniVersion: '1.0.0' }));
    await exec('add', '/run/netns/p1');
    const file = join(cacheDir, 'results', cacheFiles()[0]!);
    // A result of a version no converter knows (a newer runtime wrote the cache, say).
    const entry = JSON.parse(readFileSync(file, 'utf8')) as { result: { cniVersion: string } };
    entry.result.cniVersion = '9.9.9';
    writeFileSync(file, JSON.stringify(entry));
    fake.writeConf('10-net1.conflist', list({ cniVersion: '0.4.0' }));
    fake.resetCalls();
    const r = await exec('del', '/run/netns/p1');
    expect(r.code, r.stderr).toBe(0);
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'a:DEL']);
    for (const call of fake.calls()) expect(call.stdin).not.toHaveProperty('prevResult');
    expect(cacheFiles()).toEqual([]);
  });

  test('lists older than 0.4.0 get no prevResult on DEL', async () => {
    fake.writeConf('10-net1.conflist', list({ cniVersion: '0.3.1' }));
    await exec('add', '/run/netns/p1');
    fake.resetCalls();
    await exec('del', '/run/netns/p1');
    for (const call of fake.calls()) expect(call.stdin).not.toHaveProperty('prevResult');
    expect(cacheFiles()).toEqual([]);
  });
});

describe('CHECK', () => {
  test('runs in order with the cached result', async () => {
    fake.writeConf('10-net1.conflist', list());
    const added = JSON.parse((await exec('add', '/run/netns/p1')).stdout);
    fake.resetCalls();
    expect((await exec('check', '/run/netns/p1')).code).toBe(0);
    expect(order()).toEqual(['a:CHECK', 'b:CHECK', 'c:CHECK']);
    for (const call of fake.calls()) expect(call.stdin.prevResult).toEqual(added);
  });

  test('fails with the plugin message and stops there', async () => {
    fake.writeConf('10-net1.conflist', list());
    await exec('add', '/run/netns/p1');
    fake.resetCalls();
    fake.failOn('a', 'CHECK');
    const r = await exec('check', '/run/netns/p1');
    expect(r.code).toBe(1);
    expect(order()).toEqual(['a:CHECK']);
  });

  test('refuses lists older than 0.4.0 without running a plugin', async () => {
    fake.writeConf('10-net1.conflist', list({ cniVersion: '0.3.1' }));
    const r = await exec('check', '/run/netns/p1');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('does not support the CHECK command');
    expect(fake.calls()).toEqual([]);
  });

  test.each([[true], ['true']])(
    'disableCheck %j: succeeds without running a plugin',
    async (disableCheck) => {
      fake.writeConf('10-net1.conflist', list({ disableCheck }));
      fake.failOn('a', 'CHECK');
      expect((await exec('check', '/run/netns/p1')).code).toBe(0);
      expect(fake.calls()).toEqual([]);
    },
  );
});

describe('GC', () => {
  async function addThree(): Promise<void> {
    fake.writeConf('10-net1.conflist', list());
    fake.writeConf('20-other.conflist', { ...list(), name: 'other' });
    for (const p of ['/run/netns/p1', '/run/netns/p2']) expect((await exec('add', p)).code).toBe(0);
    // An attachment of another network on the same cache dir: GC of net1 must not touch it.
    const other = await runExec(
      { verb: 'add', network: 'other', netns: '/run/netns/p3', cacheDir },
      {
        env: { PATH: process.env.PATH, NETCONFPATH: fake.confDir, CNI_PATH: fake.binDir, FAKE_DIR: fake.dir },
        stdout: () => undefined,
        stderr: () => undefined,
      },
    );
    expect(other).toBe(0);
    fake.resetCalls();
  }

  test('a --valid id that is only the start of a cached one is refused, and nothing is DELed', async () => {
    await addThree();
    const keep = containerIdFor('/run/netns/p1');
    const r = await exec('gc', '/run/netns/ignored', { valid: [`${keep.slice(0, 12)}/eth0`] });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `--valid ${keep.slice(0, 12)}/eth0 is only the start of ${keep}: give whole ids`,
    );
    expect(fake.calls()).toEqual([]);
    // Nothing is checked with disableGC (GC does nothing, as libcni's), and a whole id, of another interface
    // than cached, is not a short one.
    fake.writeConf('10-net1.conflist', list({ disableGC: true }));
    expect((await exec('gc', '/run/netns/ignored', { valid: [`${keep.slice(0, 12)}/eth0`] })).code).toBe(0);
    fake.writeConf('10-net1.conflist', list());
    expect((await exec('gc', '/run/netns/ignored', { valid: [`${keep}/net9`] })).code).toBe(0);
  });

  test('phase 1 DELs every stale attachment with its cached netns and args, phase 2 sends GC to each plugin', async () => {
    await addThree();
    const keep = containerIdFor('/run/netns/p1');
    const r = await exec('gc', '/run/netns/ignored', { valid: [`${keep}/eth0`] });
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'a:DEL', 'a:GC', 'b:GC', 'c:GC']);
    const del = fake.calls()[0];
    expect(del?.env.CNI_CONTAINERID).toBe(containerIdFor('/run/netns/p2'));
    expect(del?.env.CNI_NETNS).toBe('/run/netns/p2');
    const gc = fake.calls()[3];
    expect(gc?.stdin['cni.dev/valid-attachments']).toEqual([{ containerID: keep, ifname: 'eth0' }]);
    expect(gc?.stdin['cni.dev/attachments']).toEqual([{ containerID: keep, ifname: 'eth0' }]);
    expect(gc?.stdin).not.toHaveProperty('prevResult');
    // GC concerns the network, not an attachment: libcni leaves the per-attachment variables empty.
    expect(gc?.env).toMatchObject({
      CNI_COMMAND: 'GC',
      CNI_CONTAINERID: '',
      CNI_NETNS: '',
      CNI_IFNAME: '',
      CNI_ARGS: '',
    });
    expect(cacheFiles().sort()).toEqual(
      [`net1-${keep}-eth0`, `other-${containerIdFor('/run/netns/p3')}-eth0`].sort(),
    );
  });

  test('with no valid list (cnitool) every cached attachment is stale and no attachments key is sent', async () => {
    await addThree();
    expect((await exec('gc', '/run/netns/ignored')).code).toBe(0);
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'a:DEL', 'c:DEL', 'b:DEL', 'a:DEL', 'a:GC', 'b:GC', 'c:GC']);
    const gc = fake.calls()[6];
    expect(gc?.stdin).not.toHaveProperty('cni.dev/valid-attachments');
    expect(gc?.stdin).not.toHaveProperty('cni.dev/attachments');
    expect(cacheFiles()).toEqual([`other-${containerIdFor('/run/netns/p3')}-eth0`]);
  });

  test('continues past failures in both phases and reports them all', async () => {
    await addThree();
    fake.failOn('b', 'DEL');
    fake.failOn('a', 'GC');
    const r = await exec('gc', '/run/netns/ignored');
    expect(r.code).toBe(1);
    // Each stale DEL stops at b (a chain DEL stops at its first failure), the next attachment still gets its DEL.
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'c:DEL', 'b:DEL', 'a:GC', 'b:GC', 'c:GC']);
    expect(r.stderr).toContain(`failed to delete stale attachment ${containerIdFor('/run/netns/p1')} eth0`);
    expect(r.stderr).toContain(`failed to delete stale attachment ${containerIdFor('/run/netns/p2')} eth0`);
    expect(r.stderr).toContain('plugin type="a" failed (gc)');
    // Each once (they were logged, then printed again in the error).
    expect(r.stderr.split('plugin type="a" failed (gc)')).toHaveLength(2);
    expect(cacheFiles()).toHaveLength(3);
  });

  test('lists older than 1.1.0 get the DEL phase only', async () => {
    fake.writeConf('10-net1.conflist', list({ cniVersion: '1.0.0' }));
    await exec('add', '/run/netns/p1');
    fake.resetCalls();
    expect((await exec('gc', '/run/netns/ignored')).code).toBe(0);
    expect(order()).toEqual(['c:DEL', 'b:DEL', 'a:DEL']);
  });

  test.each([[true], ['true']])('disableGC %j: nothing runs, nothing is removed', async (disableGC) => {
    fake.writeConf('10-net1.conflist', list({ disableGC }));
    await exec('add', '/run/netns/p1');
    fake.resetCalls();
    expect((await exec('gc', '/run/netns/ignored')).code).toBe(0);
    expect(fake.calls()).toEqual([]);
    expect(cacheFiles()).toHaveLength(1);
  });
});

describe('STATUS', () => {
  test('1.1.0: every plugin in order, stops at the first failure keeping its code in the message', async () => {
    fake.writeConf('10-net1.conflist', list());
    expect((await exec('status', '/run/netns/ignored')).code).toBe(0);
    expect(order()).toEqual(['a:STATUS', 'b:STATUS', 'c:STATUS']);
    expect(fake.calls()[0]?.stdin).toEqual({ cniVersion: '1.1.0', name: 'net1', type: 'a' });
    fake.resetCalls();
    fake.failOn('b', 'STATUS');
    const r = await exec('status', '/run/netns/ignored');
    expect(r.code).toBe(1);
    expect(order()).toEqual(['a:STATUS', 'b:STATUS']);
  });

  test('older lists have no STATUS: nothing runs and the network counts as ready', async () => {
    fake.writeConf('10-net1.conflist', list({ cniVersion: '1.0.0' }));
    expect((await exec('status', '/run/netns/ignored')).code).toBe(0);
    expect(fake.calls()).toEqual([]);
  });
});

test('cniVersions: every request carries the highest listed version this runtime implements (<= 1.1.0)', async () => {
  fake.writeConf(
    '10-net1.conflist',
    list({ cniVersion: '0.4.0', cniVersions: ['1.0.0', '1.1.0', '2.0.0', '0.3.1'] }),
  );
  await exec('add', '/run/netns/p1');
  for (const call of fake.calls()) expect(call.stdin.cniVersion).toBe('1.1.0');
  const cached = JSON.parse(readFileSync(join(cacheDir, 'results', cacheFiles()[0] as string), 'utf8'));
  expect(cached.result.cniVersion).toBe('1.1.0');
});

test('a missing plugin is reported with the directories searched', async () => {
  fake.writeConf('10-net1.conflist', list({}, ['a', 'nope']));
  const r = await exec('add', '/run/netns/p1');
  expect(r.code).toBe(1);
  expect(r.stderr).toContain(`failed to find plugin "nope" in path [${fake.binDir}]`);
});
