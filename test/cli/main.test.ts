// The `berth` command line as people run it: the built bin/berth in a subprocess (run `npm run build:ts`
// first), flags wired to the runtime, usage errors as exit codes.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { containerIdFor } from '../../src/cli/exec';
import { makeFakePlugins, type FakePlugins } from './fake-plugins';

const BERTH = resolve(__dirname, '../../bin/berth');
let fake: FakePlugins;

beforeEach(() => {
  fake = makeFakePlugins(['a']);
  fake.writeConf('10-n.conflist', { cniVersion: '1.1.0', name: 'n', plugins: [{ type: 'a' }] });
});
afterEach(() => fake.cleanup());

function berth(...args: string[]) {
  const r = spawnSync(process.execPath, [BERTH, ...args], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, NETCONFPATH: fake.confDir, CNI_PATH: fake.binDir, FAKE_DIR: fake.dir },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('exec add -i and --cache-dir reach the plugin and the cache; gc --valid reaches the GC request', () => {
  const cache = join(fake.root, 'cache');
  const add = berth('exec', 'add', 'n', '/run/netns/x', '-i', 'net3', '--cache-dir', cache);
  expect(add).toMatchObject({ code: 0, stderr: '' });
  expect(JSON.parse(add.stdout).interfaces).toEqual([{ name: 'a' }]);
  expect(fake.calls()[0]?.env.CNI_IFNAME).toBe('net3');
  const id = containerIdFor('/run/netns/x');
  expect(readdirSync(join(cache, 'results'))).toEqual([`n-${id}-net3`]);

  fake.resetCalls();
  const gc = berth(
    'exec',
    'gc',
    'n',
    '/run/netns/x',
    '--cache-dir',
    cache,
    '--valid',
    `${id}/net3`,
    '--valid',
    'other/eth0',
  );
  expect(gc.code).toBe(0);
  expect(fake.calls().map((c) => c.command)).toEqual(['GC']);
  expect(fake.calls()[0]?.stdin['cni.dev/valid-attachments']).toEqual([
    { containerID: id, ifname: 'net3' },
    { containerID: 'other', ifname: 'eth0' },
  ]);
  expect(existsSync(join(cache, 'results', `n-${id}-net3`))).toBe(true);
});

test.each([
  [['exec', 'frob', 'n', '/x'], /unknown command 'frob'/],
  [['exec', 'add', 'n'], /missing required argument 'netns'/],
  [['exec', 'gc', 'n', '/x', '--valid', 'no-slash'], /--valid wants <containerID>\/<ifname>/],
  [['exec', 'add', 'missing-net', '/x'], /no net configuration with name "missing-net"/],
])('berth %j fails with exit 1 and says why on stderr', (args, message) => {
  const r = berth(...args);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(message);
  expect(r.stdout).toBe('');
});

test('berth --help lists exec and demo and exits 0', () => {
  const r = berth('--help');
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/exec/);
  expect(r.stdout).toMatch(/demo/);
});

test('--json: a failure is JSON on stdout too (and the message on stderr, exit 1), for scripts that parse it', () => {
  const empty = join(fake.root, 'no-networks');
  const r = berth(
    'leases',
    '--json',
    '--network',
    'nope',
    '--data-dir',
    empty,
    '--socket',
    join(empty, 'no.sock'),
  );
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^berth: .+/);
  const out = JSON.parse(r.stdout) as { error: { code?: number; msg: string } };
  expect(out.error.msg).toBe(r.stderr.replace(/^berth: /, '').trim());
  // Without --json, stdout stays empty.
  expect(
    berth('leases', '--network', 'nope', '--data-dir', empty, '--socket', join(empty, 'no.sock')).stdout,
  ).toBe('');
});

test('output piped into a reader that stops early (`| head -1`): no EPIPE stack, a quiet end', () => {
  const empty = join(fake.root, 'no-networks');
  mkdirSync(empty);
  // `true` has exited before berth writes: every write meets a closed pipe.
  const r = spawnSync(
    'bash',
    [
      '-c',
      `"$0" "$1" status --data-dir "$2" --socket "$2/no.sock" 2>"$2.err" | true; cat "$2.err"`,
      process.execPath,
      BERTH,
      empty,
    ],
    { encoding: 'utf8' },
  );
  expect(r.stdout).toBe('');
});
