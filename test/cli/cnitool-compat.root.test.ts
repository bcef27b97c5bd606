// berth exec against the real cnitool (Debian's libcni): the same config and netns path must reach the
// plugins identically, and each tool must be able to CHECK/DEL what the other added (shared result cache).
// Root: cnitool's cache dir is fixed at /var/lib/cni. No namespace is touched (the plugins are fakes).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { containerIdFor } from '../../src/cli/exec';
import { makeFakePlugins, type Call, type FakePlugins } from './fake-plugins';

const CNITOOL = '/usr/local/bin/cnitool';
const BERTH = resolve(__dirname, '../../bin/berth');
const haveCnitool = existsSync(CNITOOL);
const net = `bt${process.pid}net`;
const systemCache = '/var/lib/cni/results';

let fake: FakePlugins;
let seq = 0;
let netns: string;

beforeEach(() => {
  fake = makeFakePlugins(['a', 'b']);
  netns = `/run/netns/bt${process.pid}-compat-${++seq}`;
});
afterEach(() => {
  rmSync(join(systemCache, `${net}-${containerIdFor(netns)}-eth0`), { force: true });
  fake.cleanup();
});

function run(tool: 'berth' | 'cnitool', verb: string, env: Record<string, string> = {}) {
  const [cmd, args] =
    tool === 'berth' ? [process.execPath, [BERTH, 'exec', verb, net, netns]] : [CNITOOL, [verb, net, netns]];
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH,
      NETCONFPATH: fake.confDir,
      CNI_PATH: fake.binDir,
      FAKE_DIR: fake.dir,
      ...env,
    },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// Go marshals an empty DNS struct as {} inside prevResult; berth passes the result as the plugin wrote it.
function normalise(calls: Call[]) {
  return calls.map((c) => {
    const stdin = structuredClone(c.stdin);
    const prev = stdin.prevResult as Record<string, unknown> | undefined;
    if (prev && typeof prev.dns === 'object' && prev.dns !== null && Object.keys(prev.dns).length === 0)
      delete prev.dns;
    const env = Object.fromEntries(Object.entries(c.env).filter(([k]) => k.startsWith('CNI_')));
    return { plugin: c.plugin, command: c.command, stdin, env };
  });
}

function cached(dir: string) {
  const raw = JSON.parse(readFileSync(join(dir, `${net}-${containerIdFor(netns)}-eth0`), 'utf8'));
  // Go re-marshals the result through its typed struct: an empty dns, and (0.4.0) an empty ip version.
  if (raw.result?.dns && Object.keys(raw.result.dns).length === 0) delete raw.result.dns;
  for (const ip of raw.result?.ips ?? []) if (ip.version === '') delete ip.version;
  return raw;
}

describe.skipIf(!haveCnitool)('berth exec vs cnitool', () => {
  const listConf = {
    cniVersion: '1.0.0',
    name: net,
    plugins: [
      {
        type: 'a',
        capabilities: { portMappings: true, mac: false },
        zeta: { y: [1, 2], x: 'z' },
        alpha: true,
      },
      { type: 'b', capabilities: { mac: true } },
    ],
  };
  const env = {
    CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=pod-a',
    CAP_ARGS: JSON.stringify({
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
      mac: 'c2:11:22:33:44:55',
    }),
  };

  test('ADD, CHECK, DEL: the plugins receive the same environment and the same config', async () => {
    fake.writeConf('10-net.conflist', listConf);
    const seen: Record<string, ReturnType<typeof normalise>> = {};
    for (const tool of ['cnitool', 'berth'] as const) {
      fake.resetCalls();
      for (const verb of ['add', 'check', 'del']) {
        const r = run(tool, verb, { ...env, BERTH_CACHE_DIR: join(fake.root, 'cache') });
        expect(r, `${tool} ${verb}`).toMatchObject({ code: 0 });
      }
      seen[tool] = normalise(fake.calls());
    }
    expect(seen.berth?.map((c) => `${c.plugin}:${c.command}`)).toEqual([
      'a:ADD',
      'b:ADD',
      'a:CHECK',
      'b:CHECK',
      'b:DEL',
      'a:DEL',
    ]);
    expect(seen.berth).toEqual(seen.cnitool);
  });

  test('the first plugin of an ADD receives byte-identical stdin (Go sorts map keys; so do we)', () => {
    fake.writeConf('10-net.conflist', listConf);
    const raw: string[] = [];
    for (const tool of ['cnitool', 'berth'] as const) {
      fake.resetCalls();
      expect(run(tool, 'add', { ...env, BERTH_CACHE_DIR: join(fake.root, 'cache') }).code).toBe(0);
      raw.push(fake.calls()[0]?.rawStdin ?? '');
      expect(run(tool, 'del', { BERTH_CACHE_DIR: join(fake.root, 'cache') }).code).toBe(0);
    }
    expect(raw[1]).toBe(raw[0]);
  });

  test('the cache files agree (berth adds libcni 1.2+ "netns"), also for an up-converted single .conf', () => {
    fake.writeConf('10-net.conf', {
      cniVersion: '0.4.0',
      name: net,
      type: 'a',
      z: 1,
      capabilities: { mac: true },
    });
    const berthCache = join(fake.root, 'cache');
    expect(run('cnitool', 'add', env).code).toBe(0);
    fake.resetCalls();
    expect(run('berth', 'add', { ...env, BERTH_CACHE_DIR: berthCache }).code).toBe(0);
    const theirs = cached(systemCache);
    const ours = cached(join(berthCache, 'results'));
    expect(ours.netns).toBe(netns);
    delete ours.netns;
    expect(ours).toEqual(theirs);
    expect(Buffer.from(ours.config, 'base64').toString()).toBe(
      Buffer.from(theirs.config, 'base64').toString(),
    );
  });

  test.each([
    ['cnitool', 'berth'],
    ['berth', 'cnitool'],
  ] as const)(
    '%s ADD, then %s CHECK and DEL use the cached result; the cache file is gone after',
    (adder, other) => {
      fake.writeConf('10-net.conflist', listConf);
      const add = run(adder, 'add', env);
      expect(add.code).toBe(0);
      const result = JSON.parse(add.stdout);
      fake.resetCalls();
      expect(run(other, 'check').code).toBe(0);
      expect(run(other, 'del').code).toBe(0);
      const calls = normalise(fake.calls());
      expect(calls.map((c) => `${c.plugin}:${c.command}`)).toEqual(['a:CHECK', 'b:CHECK', 'b:DEL', 'a:DEL']);
      for (const c of calls) {
        expect(c.stdin.prevResult).toMatchObject({
          cniVersion: '1.0.0',
          interfaces: result.interfaces,
          ips: result.ips,
        });
      }
      expect(existsSync(join(systemCache, `${net}-${containerIdFor(netns)}-eth0`))).toBe(false);
    },
  );

  test('a failing plugin: both exit 1 with the plugin message on stderr and leave no cache', () => {
    fake.writeConf('10-net.conflist', listConf);
    fake.failOn('b', 'ADD');
    const theirs = run('cnitool', 'add');
    const ours = run('berth', 'add');
    expect([theirs.code, ours.code]).toEqual([1, 1]);
    expect(ours.stderr).toBe(theirs.stderr);
    expect(existsSync(join(systemCache, `${net}-${containerIdFor(netns)}-eth0`))).toBe(false);
  });
});
