// The built executables as a runtime sees them: a subprocess per bad input, judged only by exit status and stdout.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

const REPO = join(__dirname, '../..');
const SUPPORTED = '["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]';

/** The test runs what `npm run build:ts` produced; a missing or stale dist/ would test the wrong code. */
beforeAll(() => {
  const srcDir = join(REPO, 'src/cni-spec');
  const stale = readdirSync(srcDir)
    .filter((f) => f.endsWith('.ts'))
    .filter((f) => {
      const js = join(REPO, 'dist/cni-spec', f.replace(/\.ts$/, '.js'));
      return !existsSync(js) || statSync(js).mtimeMs < statSync(join(srcDir, f)).mtimeMs;
    });
  if (!existsSync(join(REPO, 'dist/main.js')) || stale.length > 0) {
    throw new Error(
      `dist/ is missing or older than src/cni-spec (${stale.join(', ')}): run "npm run build:ts" first`,
    );
  }
});

interface Outcome {
  status: number | null;
  stdout: string;
  stderr: string;
}

function runPlugin(bin: string, env: Record<string, string | undefined>, stdin: string): Outcome {
  const clean: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
  for (const [k, v] of Object.entries(env)) if (v !== undefined) clean[k] = v;
  const r = spawnSync(join(REPO, 'bin', bin), [], {
    env: clean,
    input: stdin,
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const ENV = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'ctr1',
  CNI_NETNS: '/run/netns/bt-blackbox',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/nonexistent',
};
const CONF = { cniVersion: '1.1.0', name: 'net1', type: 'berth-bridge' };
const conf = (o: Record<string, unknown>): string => JSON.stringify({ ...CONF, ...o });
const GOOD = JSON.stringify(CONF);

describe('VERSION', () => {
  it.each([
    ['berth-bridge', ''],
    ['berth-ipam', ''],
    ['berth-bridge', 'not json at all'],
    ['berth-ipam', '{"cniVersion":"0.2.0"}'],
  ])('%s prints the version object and exits 0 (stdin %j)', (bin, stdin) => {
    const r = runPlugin(bin, { CNI_COMMAND: 'VERSION' }, stdin);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`{"cniVersion":"1.1.0","supportedVersions":${SUPPORTED}}\n`);
  });

  it.each(['berth-bridge', 'berth-ipam'])(
    '%s run by hand (no CNI_COMMAND) says what it is on stderr and exits 0, as the reference plugins do',
    (bin) => {
      const r = runPlugin(bin, { CNI_COMMAND: undefined }, GOOD);
      expect(r.status).toBe(0);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(
        new RegExp(`^${bin}: a CNI plugin; CNI spec versions 0\\.1\\.0, .*1\\.1\\.0\\n$`),
      );
    },
  );
});

// [label, environment changes, stdin, expected code]
const BAD_INPUTS: Array<[string, Record<string, string | undefined>, string, number]> = [
  ['unknown command', { CNI_COMMAND: 'FROB' }, GOOD, 4],
  ['ADD without CNI_CONTAINERID', { CNI_CONTAINERID: undefined }, GOOD, 4],
  ['ADD without CNI_NETNS', { CNI_NETNS: undefined }, GOOD, 4],
  ['ADD without CNI_IFNAME', { CNI_IFNAME: undefined }, GOOD, 4],
  ['ADD without CNI_PATH', { CNI_PATH: undefined }, GOOD, 4],
  ['CHECK without CNI_NETNS', { CNI_COMMAND: 'CHECK', CNI_NETNS: '' }, GOOD, 4],
  ['DEL without CNI_CONTAINERID', { CNI_COMMAND: 'DEL', CNI_CONTAINERID: undefined }, GOOD, 4],
  ['GC without CNI_PATH', { CNI_COMMAND: 'GC', CNI_PATH: undefined }, GOOD, 4],
  ['ifname longer than 15 bytes', { CNI_IFNAME: 'eth0123456789abc' }, GOOD, 4],
  ['ifname "."', { CNI_IFNAME: '.' }, GOOD, 4],
  ['ifname ".."', { CNI_IFNAME: '..' }, GOOD, 4],
  ['ifname with "/"', { CNI_IFNAME: 'a/b' }, GOOD, 4],
  ['ifname with ":"', { CNI_IFNAME: 'eth0:1' }, GOOD, 4],
  ['ifname with whitespace', { CNI_IFNAME: 'eth 0' }, GOOD, 4],
  ['container id with "/"', { CNI_CONTAINERID: '../ctr' }, GOOD, 4],
  ['container id with a space', { CNI_CONTAINERID: 'ctr 1' }, GOOD, 4],
  ['malformed CNI_ARGS', { CNI_ARGS: 'IgnoreUnknown' }, GOOD, 4],
  ['stdin not JSON', {}, '{"cniVersion":', 6],
  ['empty stdin', {}, '', 6],
  ['stdin a JSON array', {}, '[]', 6],
  ['name missing', {}, conf({ name: undefined }), 7],
  ['name empty', {}, conf({ name: '' }), 7],
  ['name "../x"', {}, conf({ name: '../x' }), 7],
  ['name "a/b"', {}, conf({ name: 'a/b' }), 7],
  [
    'CHECK with cniVersion missing (0.1.0, as skel reads it)',
    { CNI_COMMAND: 'CHECK' },
    conf({ cniVersion: undefined }),
    1,
  ],
  ['cniVersion not a version', {}, conf({ cniVersion: 'one' }), 7],
  ['cniVersion unsupported', {}, conf({ cniVersion: '9.0.0' }), 1],
  ['CHECK on 0.3.1', { CNI_COMMAND: 'CHECK' }, conf({ cniVersion: '0.3.1' }), 1],
  ['GC on 1.0.0', { CNI_COMMAND: 'GC' }, conf({ cniVersion: '1.0.0' }), 1],
  ['STATUS on 0.4.0', { CNI_COMMAND: 'STATUS' }, conf({ cniVersion: '0.4.0' }), 1],
  ['prevResult malformed', {}, conf({ prevResult: { ips: [{ address: 5 }] } }), 6],
];

describe('berth-bridge refuses bad input with exactly one error object', () => {
  it.each(BAD_INPUTS)('%s → code %i', (_label, env, stdin, code) => {
    const r = runPlugin('berth-bridge', { ...ENV, ...env }, stdin);
    expect(r.status).not.toBe(0);
    expect(r.status).not.toBeNull();
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    const err = JSON.parse(lines[0] ?? '') as Record<string, unknown>;
    expect(err).toMatchObject({ code, msg: expect.any(String) });
    expect(Object.keys(err).every((k) => ['cniVersion', 'code', 'msg', 'details'].includes(k))).toBe(true);
    expect(r.stdout).not.toMatch(/\n\s+at /);
  });

  it('an unsupported cniVersion carries the supported list in details', () => {
    const r = runPlugin('berth-bridge', ENV, conf({ cniVersion: '9.0.0' }));
    expect((JSON.parse(r.stdout) as { details: string }).details).toContain(SUPPORTED);
  });
});

describe('stdin', () => {
  it('a non-blocking stdin fed slower than it is read arrives whole', async () => {
    // perl (perl-base: always on Debian) makes fd 0 non-blocking and execs the plugin; the writer sends a
    // 200 kB config in pieces. readFileSync gave up at the first EAGAIN, dropping what it had read.
    const { spawn } = await import('node:child_process');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dataDir = mkdtempSync(join(tmpdir(), 'bt-stdin-'));
    try {
      const stdin = JSON.stringify({
        cniVersion: '1.1.0',
        name: 'net1',
        type: 'berth-ipam',
        padding: 'x'.repeat(200_000),
        ipam: { type: 'berth-ipam', dataDir, daemonSocket: false, ranges: [[{ subnet: '198.18.185.0/24' }]] },
      });
      const child = spawn(
        'perl',
        [
          '-MFcntl',
          '-e',
          'fcntl(STDIN, F_SETFL, fcntl(STDIN, F_GETFL, 0) | O_NONBLOCK) or die; exec @ARGV or die',
          join(REPO, 'bin', 'berth-ipam'),
        ],
        {
          env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...ENV, CNI_COMMAND: 'DEL' },
          stdio: ['pipe', 'pipe', 'pipe'],
        },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((r) => child.on('close', r));
      const bytes = Buffer.from(stdin);
      for (let off = 0; off < bytes.length; off += 16_384) {
        child.stdin.write(bytes.subarray(off, off + 16_384));
        await new Promise((r) => setTimeout(r, 5));
      }
      child.stdin.end();
      expect(await exited, out).toBe(0);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
