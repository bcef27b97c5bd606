import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { delegate, execPlugin, findPlugin } from '../../src/cni-spec/invoke';
import { parseRequest } from '../../src/cni-spec/request';
import { expectCniError } from './helpers';

// Real subprocesses: small shell scripts standing in for plugins, written to a private temp dir.
let root: string;
let dirA: string;
let dirB: string;

function plugin(dir: string, name: string, body: string, mode = 0o755): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, mode);
  return path;
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), `bt${process.pid}-invoke-`));
  dirA = join(root, 'a');
  dirB = join(root, 'b');
  mkdirSync(dirA);
  mkdirSync(dirB);
  plugin(dirA, 'both', 'echo a');
  plugin(dirB, 'both', 'echo b');
  plugin(dirA, 'not-exec', 'echo a', 0o644);
  plugin(dirB, 'not-exec', 'echo b');
  mkdirSync(join(dirA, 'a-dir'));
  plugin(dirB, 'a-dir', 'echo b');
  plugin(
    dirA,
    'echo-env',
    'printf "%s|%s|%s|" "$CNI_COMMAND" "$FOO" "${GONE-unset}"; cat; echo "to stderr" >&2',
  );
  plugin(dirA, 'cni-error', 'echo \'{"code":11,"msg":"try later","details":"store locked"}\'; exit 1');
  plugin(dirA, 'stderr-only', 'echo "disk on fire" >&2; exit 3');
  plugin(dirA, 'silent-fail', 'exit 1');
  plugin(dirA, 'garbage-fail', 'echo "panic: oops"; exit 2');
  plugin(dirA, 'self-kill', 'kill -KILL $$');
  plugin(dirA, 'no-read', 'exit 0');
  // An IPAM stand-in: prints a result in whatever shape the test asks via RESULT, and records its input.
  plugin(
    dirA,
    'fake-ipam',
    `cat > "${root}/ipam-stdin.$CNI_COMMAND"; env > "${root}/ipam-env.$CNI_COMMAND"; printf '%s' "$RESULT"`,
  );
  plugin(dirA, 'empty-ipam', 'exit 0');
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

afterEach(() => {
  vi.restoreAllMocks();
});

describe('findPlugin', () => {
  it('takes the first match in CNI_PATH order', () => {
    expect(findPlugin('both', [dirA, dirB])).toBe(join(dirA, 'both'));
    expect(findPlugin('both', [dirB, dirA])).toBe(join(dirB, 'both'));
  });

  it('skips files that are not executable and directories', () => {
    expect(findPlugin('not-exec', [dirA, dirB])).toBe(join(dirB, 'not-exec'));
    expect(findPlugin('a-dir', [dirA, dirB])).toBe(join(dirB, 'a-dir'));
  });

  it('names the searched directories when nothing matches', () => {
    const err = expectCniError(
      () => findPlugin('missing', [dirA, '/nonexistent']),
      ErrorCode.InvalidNetworkConfig,
    );
    expect(err.message).toBe(`failed to find plugin "missing" in path [${dirA} /nonexistent]`);
    expect(err.details).toBe(`searched ${join(dirA, 'missing')}, /nonexistent/missing`);
  });

  it('a relative directory gives a path the spawn runs as is, not a name it looks up in PATH', () => {
    const cwd = process.cwd();
    try {
      process.chdir(dirA);
      expect(findPlugin('both', ['.'])).toBe('./both');
      expect(findPlugin('both', [dirB, '.'])).toBe(join(dirB, 'both'));
    } finally {
      process.chdir(cwd);
    }
  });

  it('says so when CNI_PATH is empty', () => {
    expect(expectCniError(() => findPlugin('both', []), ErrorCode.InvalidNetworkConfig).details).toBe(
      'CNI_PATH is empty',
    );
  });

  it.each(['', '../a/both', 'a/both', '..'])('refuses the type %j, which is a path', (type) => {
    expectCniError(() => findPlugin(type, [dirA]), ErrorCode.InvalidNetworkConfig, /invalid plugin type/);
  });
});

describe('execPlugin', () => {
  it('passes stdin verbatim, the environment and CNI_COMMAND; returns stdout and stderr', async () => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const out = await execPlugin({
      path: join(dirA, 'echo-env'),
      command: 'ADD',
      env: { CNI_COMMAND: 'IGNORED', FOO: 'bar', GONE: undefined, PATH: process.env.PATH },
      stdin: '{"a": 1}\n',
    });
    expect(out).toEqual({ stdout: 'ADD|bar|unset|{"a": 1}\n', stderr: 'to stderr\n' });
  });

  it("hands the plugin's stderr to the caller's sink, never to the process's own stderr", async () => {
    // In berthd many calls share the process: a delegate's words belong to the call that ran it.
    const processWrites: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation(
      (chunk: string | Uint8Array) => (processWrites.push(String(chunk)), true),
    );
    const sink: string[] = [];
    const opts = { path: join(dirA, 'echo-env'), command: 'DEL', env: {}, stdin: '' };
    await execPlugin({ ...opts, stderr: (t) => void sink.push(t) });
    expect(sink.join('')).toBe('to stderr\n');
    await execPlugin(opts);
    expect(processWrites.join('')).toBe('');
  });

  /** Runs `path`, cancelling the call as soon as the plugin writes to stderr; the error and how long it took. */
  async function cancelledOnceStarted(
    path: string,
    ac: AbortController,
  ): Promise<{ err: unknown; ms: number }> {
    const t0 = Date.now();
    const err = await execPlugin({
      path,
      command: 'ADD',
      env: { PATH: process.env.PATH },
      stdin: '',
      stderr: () => ac.abort(),
      signal: ac.signal,
    }).catch((e: unknown) => e);
    return { err, ms: Date.now() - t0 };
  }

  it('kills the plugin when the call is cancelled, and does not start one for a cancelled call', async () => {
    const sleeper = plugin(dirA, 'sleeper', 'echo started >&2; exec sleep 30');
    const ac = new AbortController();
    const { err, ms } = await cancelledOnceStarted(sleeper, ac);
    expect(ms).toBeLessThan(10_000);
    expect(err).toBeInstanceOf(CniError);
    expect(err).toMatchObject({
      code: ErrorCode.TryAgainLater,
      message: expect.stringMatching(/was killed: the call was cancelled/),
      details: `${sleeper}: killed by SIGKILL`,
    });
    const again = await execPlugin({
      path: sleeper,
      command: 'ADD',
      env: {},
      stdin: '',
      signal: ac.signal,
    }).catch((e: unknown) => e);
    expect(again).toMatchObject({ code: ErrorCode.TryAgainLater });
  });

  it('a cancelled plugin whose own child holds its output open: done when the plugin is, not the child', async () => {
    // The shell is the plugin; its `sleep` keeps stdout and stderr open for 30 s after the shell is killed.
    const childPid = join(root, 'parent-child.pid');
    const parent = plugin(dirA, 'parent', `sleep 30 & echo $! > ${childPid}; echo started >&2; wait`);
    try {
      const { err, ms } = await cancelledOnceStarted(parent, new AbortController());
      expect(ms).toBeLessThan(5_000);
      expect(err).toMatchObject({ code: ErrorCode.TryAgainLater });
    } finally {
      try {
        process.kill(Number(readFileSync(childPid, 'utf8')), 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  it('a plugin that exited while its child still holds its output: the cancellation ends the call', async () => {
    // The plugin is done (exit 0) but its background `sleep` keeps stdout open: no 'close' for 30 s, and no
    // process left to kill when the deadline comes.
    const childPid = join(root, 'exited-child.pid');
    const parent = plugin(dirA, 'exited', `sleep 30 & echo $! > ${childPid}; echo '{}'; exit 0`);
    const ac = new AbortController();
    const t0 = Date.now();
    try {
      const run = execPlugin({
        path: parent,
        command: 'ADD',
        env: { PATH: process.env.PATH },
        stdin: '',
        signal: ac.signal,
      });
      // The deadline, once the plugin has exited.
      for (let i = 0; i < 100 && !existsSync(childPid); i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 200));
      ac.abort();
      const err = await run.catch((e: unknown) => e);
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(err).toBeInstanceOf(CniError);
      expect(err).toMatchObject({
        code: ErrorCode.TryAgainLater,
        details: `${parent}: exited (0), its output still held open by a child`,
      });
    } finally {
      try {
        process.kill(Number(readFileSync(childPid, 'utf8')), 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  it("throws the plugin's own error object, code, msg and details kept", async () => {
    const err = await execPlugin({ path: join(dirA, 'cni-error'), command: 'ADD', env: {}, stdin: '' }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CniError);
    expect(err).toMatchObject({ code: 11, message: 'try later', details: 'store locked' });
  });

  it.each([
    ['stderr-only', 'netplugin failed: "disk on fire"', 'exit status 3'],
    ['silent-fail', 'netplugin failed with no error message', 'exit status 1'],
    ['garbage-fail', 'netplugin failed: "panic: oops"', 'exit status 2'],
    ['self-kill', 'netplugin failed with no error message', 'killed by SIGKILL'],
  ])('%s → 999 quoting what the plugin said', async (name, msg, how) => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const path = join(dirA, name);
    const err = await execPlugin({ path, command: 'ADD', env: {}, stdin: '' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ErrorCode.Internal, message: msg, details: `${path}: ${how}` });
  });

  it('does not trip over a plugin that exits without reading a large stdin', async () => {
    const out = await execPlugin({
      path: join(dirA, 'no-read'),
      command: 'DEL',
      env: {},
      stdin: 'x'.repeat(4 << 20),
    });
    expect(out).toEqual({ stdout: '', stderr: '' });
  });

  it('reports a path that cannot be executed', async () => {
    const err = await execPlugin({ path: join(root, 'nope'), command: 'ADD', env: {}, stdin: '' }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: ErrorCode.Internal,
      message: expect.stringMatching(/^cannot run plugin .*nope: .*ENOENT/),
    });
  });
});

describe('delegate', () => {
  const conf = (cniVersion: string): string =>
    JSON.stringify({ cniVersion, name: 'net1', type: 'berth-bridge', ipam: { type: 'fake-ipam' } });

  function request(opts: { cniVersion: string; result?: string; command?: string }) {
    return parseRequest({
      env: {
        CNI_COMMAND: opts.command ?? 'ADD',
        CNI_CONTAINERID: 'ctr1',
        CNI_NETNS: '/run/netns/bt-x',
        CNI_IFNAME: 'eth0',
        CNI_PATH: `${dirB}:${dirA}`,
        PATH: process.env.PATH,
        RESULT: opts.result,
      },
      stdin: conf(opts.cniVersion),
    });
  }

  it('ADD: runs the delegate with our stdin and env and returns its result in the internal model', async () => {
    const result =
      '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"198.18.0.5/24","gateway":"198.18.0.1"}],"dns":{}}';
    const req = request({ cniVersion: '0.4.0', result });
    await expect(delegate({ pluginType: 'fake-ipam', command: 'ADD', request: req })).resolves.toEqual({
      cniVersion: '1.1.0',
      ips: [{ address: '198.18.0.5/24', gateway: '198.18.0.1' }],
    });
    expect(readFileSync(join(root, 'ipam-stdin.ADD'), 'utf8')).toBe(req.stdin);
    expect(readFileSync(join(root, 'ipam-env.ADD'), 'utf8')).toContain('CNI_CONTAINERID=ctr1\n');
  });

  it("reads a result without cniVersion in the config's version", async () => {
    const req = request({
      cniVersion: '0.2.0',
      result: '{"ip4":{"ip":"198.18.0.6/24"},"ip6":{"ip":"fd00::6/64"}}',
    });
    await expect(delegate({ pluginType: 'fake-ipam', command: 'ADD', request: req })).resolves.toEqual({
      cniVersion: '1.1.0',
      ips: [{ address: '198.18.0.6/24' }, { address: 'fd00::6/64' }],
    });
  });

  it('DEL: overrides env and stdin when asked, returns undefined', async () => {
    const req = request({ cniVersion: '1.1.0', command: 'DEL', result: 'ignored output' });
    const out = await delegate({
      pluginType: 'fake-ipam',
      command: 'DEL',
      request: req,
      env: { CNI_IFNAME: 'net9', RESULT: undefined },
      stdin: '{}',
    });
    expect(out).toBeUndefined();
    expect(readFileSync(join(root, 'ipam-stdin.DEL'), 'utf8')).toBe('{}');
    const env = readFileSync(join(root, 'ipam-env.DEL'), 'utf8');
    expect(env).toContain('CNI_IFNAME=net9\n');
    expect(env).toContain('CNI_COMMAND=DEL\n');
    expect(env).not.toContain('RESULT=');
  });

  it("throws the delegate's error as it printed it", async () => {
    const req = request({ cniVersion: '1.1.0' });
    await expect(delegate({ pluginType: 'cni-error', command: 'ADD', request: req })).rejects.toMatchObject({
      code: 11,
      message: 'try later',
    });
  });

  it('a delegate missing from CNI_PATH is an error naming the path', async () => {
    const req = request({ cniVersion: '1.1.0' });
    await expect(
      delegate({ pluginType: 'no-such-ipam', command: 'ADD', request: req }),
    ).rejects.toMatchObject({
      code: ErrorCode.InvalidNetworkConfig,
      message: `failed to find plugin "no-such-ipam" in path [${dirB} ${dirA}]`,
    });
  });

  it('an ADD delegate that prints nothing fails', async () => {
    const req = request({ cniVersion: '1.1.0' });
    await expect(delegate({ pluginType: 'empty-ipam', command: 'ADD', request: req })).rejects.toMatchObject({
      code: ErrorCode.Internal,
      message: 'plugin empty-ipam printed no result for ADD',
    });
  });

  it('a malformed ADD result is a decoding failure', async () => {
    const req = request({ cniVersion: '1.1.0', result: '{"ips":"198.18.0.5"}' });
    await expect(delegate({ pluginType: 'fake-ipam', command: 'ADD', request: req })).rejects.toMatchObject({
      code: ErrorCode.DecodingFailure,
    });
  });
});
