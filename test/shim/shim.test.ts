// berth-shim (native/shim) against the standalone programs: for the same environment and stdin it must print
// the same stdout and stderr bytes and exit with the same code, whether berthd is absent (fallback: the shim
// execs the standalone program itself) or answers (here a fake berthd that runs the standalone program;
// test/shim/warm.root.test.ts does it against the real one). After the request is sent, a lost, garbled or
// late reply must be a CNI error with code 11, quickly.
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { type Socket, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { isDeepStrictEqual } from 'node:util';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeBerthd, type ProgramRun, runProgram } from './fake-berthd';

const repo = join(__dirname, '../..');
const shimDir = join(repo, 'native/shim/build/bin');
const golden = join(repo, 'test/fixtures/golden');
const VERSIONS = readdirSync(golden)
  .map((f) => /^result-(.+)\.json$/.exec(f)?.[1])
  .filter((v): v is string => v !== undefined)
  .sort();
const PLUGINS = ['berth-bridge', 'berth-ipam'] as const;

const work = mkdtempSync(join(tmpdir(), 'berth-shim-test-'));
const dataDir = join(work, 'ipam');
const PATH = `${dirname(process.execPath)}:/usr/sbin:/usr/bin:/sbin:/bin`;

interface Case {
  name: string;
  plugin: (typeof PLUGINS)[number];
  env: Record<string, string>;
  stdin: string | Buffer;
}

function cniEnv(command: string, containerId = 'shimctr'): Record<string, string> {
  return {
    PATH,
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: '/run/netns/berth-shim-test-none',
    CNI_IFNAME: 'eth0',
    CNI_PATH: shimDir,
  };
}

function ipamConf(cniVersion: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    cniVersion,
    name: 'shimnet',
    type: 'berth-bridge',
    ipam: {
      type: 'berth-ipam',
      dataDir,
      daemonSocket: false,
      ranges: [[{ subnet: '198.18.7.0/24' }], [{ subnet: 'fd00:7::/64' }]],
    },
    ...extra,
  });
}

/** berth-ipam ADD, CHECK (prevResult: the golden result) and DEL in every spec version, in this order. */
function goldenCases(): Case[] {
  return VERSIONS.flatMap((v) => {
    const prevResult = JSON.parse(readFileSync(join(golden, `result-${v}.json`), 'utf8')) as unknown;
    const id = `ctr-${v}`;
    return [
      { name: `ipam ADD ${v}`, plugin: 'berth-ipam', env: cniEnv('ADD', id), stdin: ipamConf(v) },
      {
        name: `ipam CHECK ${v} (golden prevResult)`,
        plugin: 'berth-ipam',
        env: cniEnv('CHECK', id),
        stdin: ipamConf(v, { prevResult }),
      },
      {
        name: `bridge CHECK ${v} (golden prevResult, no such netns)`,
        plugin: 'berth-bridge',
        env: cniEnv('CHECK', id),
        stdin: ipamConf(v, { prevResult }),
      },
      { name: `ipam DEL ${v}`, plugin: 'berth-ipam', env: cniEnv('DEL', id), stdin: ipamConf(v) },
    ] satisfies Case[];
  });
}

function errorCases(): Case[] {
  return PLUGINS.flatMap((plugin) => {
    const { CNI_CONTAINERID: _, ...noContainer } = cniEnv('ADD');
    return [
      { name: 'VERSION', plugin, env: cniEnv('VERSION'), stdin: ipamConf('1.0.0') },
      { name: 'no CNI_COMMAND', plugin, env: { PATH }, stdin: '' },
      { name: 'unknown CNI_COMMAND', plugin, env: cniEnv('BOGUS'), stdin: ipamConf('1.0.0') },
      { name: 'ADD without CNI_CONTAINERID', plugin, env: noContainer, stdin: ipamConf('1.0.0') },
      {
        name: 'ADD with a bad CNI_ARGS',
        plugin,
        env: { ...cniEnv('ADD'), CNI_ARGS: 'IgnoreUnknown=1;K' },
        stdin: ipamConf('1.0.0'),
      },
      { name: 'ADD with bad JSON', plugin, env: cniEnv('ADD'), stdin: '{"cniVersion": "1.0.0", "name": ' },
      { name: 'ADD with an empty stdin', plugin, env: cniEnv('ADD'), stdin: '' },
      { name: 'ADD of unsupported version 9.9.9', plugin, env: cniEnv('ADD'), stdin: ipamConf('9.9.9') },
      { name: 'ADD without cniVersion', plugin, env: cniEnv('ADD'), stdin: '{"name":"x","type":"y"}' },
      {
        name: 'bytes to escape: quotes, backslashes, control characters, non-ASCII, invalid UTF-8',
        plugin,
        env: { ...cniEnv('ADD'), CNI_ARGS: 'K8S_POD_NAME="a\\b"\tc\u0001ü€😀', WEIRD: '\n\r"\\' },
        stdin: Buffer.concat([
          Buffer.from('{"cniVersion":"1.0.0","name":"n\u0002\\"\\\\ü😀","type":"t\u001f\n'),
          Buffer.from([0xff, 0xc3, 0x28, 0xe2, 0x82]),
          Buffer.from('"}'),
        ]),
      },
      {
        name: 'a 300 KiB stdin',
        plugin,
        env: cniEnv('ADD'),
        stdin: ipamConf('1.0.0', { padding: 'x'.repeat(300 * 1024) }).replace('"shimnet"', '"shim net"'),
      },
    ] satisfies Case[];
  });
}

const standaloneArgs = (plugin: string): [string, ...string[]] => [
  process.execPath,
  join(repo, 'bin', plugin),
];

async function runAll(cases: Case[], run: (c: Case) => Promise<ProgramRun>): Promise<ProgramRun[]> {
  rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  const runs: ProgramRun[] = [];
  for (const c of cases) runs.push(await run(c));
  return runs;
}

const standalone = (c: Case): Promise<ProgramRun> => {
  const [file, ...args] = standaloneArgs(c.plugin);
  return runProgram(file, args, c.env, c.stdin);
};
const throughShim =
  (socket: string, extraEnv: Record<string, string> = {}) =>
  (c: Case) =>
    runProgram(join(shimDir, c.plugin), [], { ...c.env, BERTH_SOCKET: socket, ...extraEnv }, c.stdin);

/** The comparable view of a run: text for readable diffs, exact bytes still compared. */
const view = (r: ProgramRun) => ({
  code: r.code,
  stdout: r.stdout.toString('latin1'),
  stderr: r.stderr.toString('latin1'),
});

function expectSame(cases: Case[], got: ProgramRun[], want: ProgramRun[]): void {
  cases.forEach((c, i) => {
    expect(view(got[i] as ProgramRun), c.name).toEqual(view(want[i] as ProgramRun));
  });
}

const fake = new FakeBerthd(standaloneArgs);
const CASES = [...goldenCases(), ...errorCases()];
let reference: ProgramRun[];

beforeAll(async () => {
  if (!existsSync(join(shimDir, 'berth-bridge')))
    throw new Error(`${shimDir}/berth-bridge missing: run npm run build (build:shim)`);
  mkdirSync(work, { recursive: true });
  await fake.listen();
  reference = await runAll(CASES, standalone);
}, 120_000);

afterAll(async () => {
  await fake.close();
  rmSync(work, { recursive: true, force: true });
});

beforeEach(() => {
  fake.mode = { kind: 'standalone' };
  fake.calls.length = 0;
});

describe('the reference runs themselves', () => {
  it('cover successes and failures (the comparison below is not vacuous)', () => {
    const codes = reference.map((r) => r.code);
    expect(codes).toContain(0);
    expect(codes).toContain(1);
    const adds = reference.filter((_, i) => CASES[i]?.name.startsWith('ipam ADD'));
    expect(adds).toHaveLength(VERSIONS.length);
    for (const r of adds) expect(r.stdout.toString()).toMatch(/198\.18\.7\.\d+/);
  });
});

describe('fallback: no berthd', () => {
  it('no socket file: same bytes and exit codes as the standalone program', async () => {
    const runs = await runAll(CASES, throughShim(join(work, 'absent.sock')));
    expectSame(CASES, runs, reference);
  }, 180_000);

  it('a socket path nobody listens on (connection refused): falls back', async () => {
    const stale = join(work, 'stale.sock');
    writeFileSync(stale, ''); // connect(2) to a non-socket fails with ECONNREFUSED
    const cases = CASES.filter((c) => c.name.startsWith('ADD'));
    const runs = await runAll(cases, throughShim(stale));
    expectSame(
      cases,
      runs,
      cases.map((c) => reference[CASES.indexOf(c)] as ProgramRun),
    );
  }, 60_000);

  it.each([421, 503, 403, 400, 500])(
    'berthd answers %i (did nothing): falls back',
    async (status) => {
      fake.mode = { kind: 'status', status };
      const cases = CASES.filter((c) => c.name.startsWith('ipam ADD') || c.name === 'ADD with bad JSON');
      const runs = await runAll(cases, throughShim(fake.socket));
      expect(fake.calls.length).toBe(cases.length);
      expectSame(
        cases,
        runs,
        cases.map((c) => reference[CASES.indexOf(c)] as ProgramRun),
      );
    },
    60_000,
  );
});

describe('fallback: berthd cannot have run the call', () => {
  const adds = (): Case[] => CASES.filter((c) => c.name.startsWith('ipam ADD'));
  const want = (cases: Case[]): ProgramRun[] => cases.map((c) => reference[CASES.indexOf(c)] as ProgramRun);

  it('berthd closes the connection with the request unread (reset): falls back', async () => {
    fake.mode = { kind: 'reset-unread' };
    const cases = adds();
    const runs = await runAll(cases, throughShim(fake.socket));
    expect(fake.calls).toHaveLength(0);
    expectSame(cases, runs, want(cases));
  }, 60_000);

  it.runIf(process.getuid?.() === 0)(
    "a socket another user listens on (not root's, not ours): its forged answer is not taken, the call runs standalone",
    async () => {
      // A directory nobody may write into, and nobody's listener answering every call with a forged result.
      // Straight under /tmp: the test's own temp dirs are private, and nobody could not reach into them.
      const dir = mkdtempSync(`/tmp/bt${process.pid}-nobody-`);
      chmodSync(dir, 0o777);
      const sock = join(dir, 'berthd.sock');
      const forged = '{"cniVersion":"1.0.0","ips":[{"address":"198.19.9.9/24"}]}\n';
      const reply =
        `HTTP/1.1 200 OK\r\nContent-Length: ${forged.length}\r\nBerth-Exit-Code: 0\r\n` +
        `Berth-Stdout-Length: ${forged.length}\r\nConnection: close\r\n\r\n${forged}`;
      const listener = spawn(
        'setpriv',
        [
          '--reuid=nobody',
          '--regid=nogroup',
          '--clear-groups',
          process.execPath,
          '-e',
          `require('net').createServer((c) => { c.on('error', () => {}); c.on('data', () => {}); c.end(${JSON.stringify(reply)}); })` +
            `.listen(${JSON.stringify(sock)}, () => console.log('up'))`,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      try {
        await new Promise<void>((resolve) => listener.stdout.once('data', () => resolve()));
        const cases = adds().slice(0, 2);
        const runs = await runAll(cases, throughShim(sock));
        expectSame(cases, runs, want(cases));
        for (const r of runs) expect(r.stdout.toString()).not.toContain('198.19.9.9');
      } finally {
        listener.kill('SIGKILL');
        rmSync(dir, { recursive: true, force: true });
      }
    },
    60_000,
  );

  it("berthd's listen queue is full (it accepts nothing): falls back at once, no hang in connect(2)", async () => {
    // A listener with a queue of one that never accepts (its process is stopped), and the queue filled.
    const sock = join(work, 'stuck.sock');
    const listener = spawn(
      process.execPath,
      [
        '-e',
        `require('net').createServer().listen({ path: ${JSON.stringify(sock)}, backlog: 1 }, () => console.log('up'))`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const queued: Socket[] = [];
    try {
      await new Promise<void>((resolve) => listener.stdout.once('data', () => resolve()));
      process.kill(listener.pid!, 'SIGSTOP');
      for (let i = 0; i < 20; i++) {
        const c = connect(sock);
        const full = await new Promise<boolean>((resolve) => {
          c.once('connect', () => resolve(false));
          c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EAGAIN'));
        });
        if (full) break;
        queued.push(c);
      }
      expect(queued.length).toBeGreaterThan(0);
      expect(queued.length).toBeLessThan(20);
      const cases = adds().slice(0, 2);
      const runs = await Promise.race([
        runAll(cases, throughShim(sock, { BERTH_SHIM_TIMEOUT: '60' })),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('the shim hung in connect')), 20_000),
        ),
      ]);
      expectSame(cases, runs, want(cases));
    } finally {
      for (const c of queued) c.destroy();
      process.kill(listener.pid!, 'SIGKILL');
      rmSync(sock, { force: true });
    }
  }, 60_000);

  it('a non-blocking stdout (as some parents pass it) gets the whole reply, not a cut', async () => {
    const stdoutBytes = 300_000;
    fake.mode = { kind: 'big', stdoutBytes };
    const add = adds()[0] as Case;
    // perl (perl-base: always on Debian) sets O_NONBLOCK on the pipe, then execs the shim; the reader
    // starts late, so the pipe is full when the shim writes.
    const child = spawn(
      'perl',
      [
        '-MFcntl',
        '-e',
        'fcntl(STDOUT, F_SETFL, fcntl(STDOUT, F_GETFL, 0) | O_NONBLOCK) or die; exec @ARGV or die',
        join(shimDir, add.plugin),
      ],
      { env: { ...add.env, BERTH_SOCKET: fake.socket }, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    child.stdout.pause();
    child.stdin.end(add.stdin);
    const err: Buffer[] = [];
    child.stderr.on('data', (d: Buffer) => err.push(d));
    await new Promise((r) => setTimeout(r, 500));
    const out: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stdout.resume();
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(Buffer.concat(err).toString()).toBe('');
    expect(code).toBe(0);
    expect(Buffer.concat(out).length).toBe(stdoutBytes);
  });
});

describe('warm: berthd answers', () => {
  it('same bytes and exit codes as the standalone program; berthd got the whole environment', async () => {
    const runs = await runAll(CASES, throughShim(fake.socket));
    expectSame(CASES, runs, reference);
    // Each case's call, in order (berth-bridge's CHECK adds its own call of berth-ipam, found through
    // CNI_PATH: the shim again). VERSION and failed commands send no stdin: the program does not read it.
    let next = 0;
    for (const c of CASES) {
      const want = { ...c.env, BERTH_SOCKET: fake.socket };
      while (next < fake.calls.length && !isDeepStrictEqual(fake.calls[next]?.env, want)) next++;
      const call = fake.calls[next++];
      expect(call, `${c.name}: forwarded with the whole environment`).toBeDefined();
      expect(call?.v).toBe(1);
      expect(call?.plugin).toBe(c.plugin);
      const sent = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS'].includes(c.env.CNI_COMMAND ?? '');
      expect(call?.stdin).toBe(sent ? Buffer.from(c.stdin).toString('utf8') : '');
    }
  }, 180_000);
});

describe('after the request was sent, a bad reply is code 11 and never a second run', () => {
  const add: Case = { name: 'ADD', plugin: 'berth-bridge', env: cniEnv('ADD'), stdin: ipamConf('1.0.0') };
  it.each([
    ['close', /closed the connection without answering/],
    ['garbled', /is not HTTP/],
    ['cut-short', /was cut short: 7 of 100 bytes/],
    ['no-exit-code', /lacks a valid Content-Length, Berth-Exit-Code/],
  ] as const)('%s', async (kind, message) => {
    fake.mode = { kind };
    for (const plugin of PLUGINS) {
      const run = await throughShim(fake.socket)({ ...add, plugin });
      expect(run.code).toBe(1);
      const err = JSON.parse(run.stdout.toString()) as { code: number; msg: string };
      expect(err.code).toBe(11);
      expect(err.msg).toMatch(message);
      expect(err.msg).toContain(fake.socket);
      expect(run.stderr.toString()).toMatch(new RegExp(`^${plugin}: ADD failed: code 11: `));
    }
    expect(fake.calls).toHaveLength(2);
  });

  it('a reply announcing more than 64 MiB is not read (code 11)', async () => {
    fake.mode = {
      kind: 'raw',
      reply:
        'HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\nBerth-Exit-Code: 0\r\nBerth-Stdout-Length: 3\r\n\r\n{}\n',
    };
    const run = await throughShim(fake.socket)(add);
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout.toString())).toMatchObject({
      code: 11,
      msg: expect.stringMatching(/announces 1099511627776 bytes, more than the 67108864 a shim reads/),
    });
  });

  it('a status of four digits is not HTTP (not taken as 200)', async () => {
    fake.mode = {
      kind: 'raw',
      reply:
        'HTTP/1.1 2001 OK\r\nContent-Length: 3\r\nBerth-Exit-Code: 0\r\nBerth-Stdout-Length: 3\r\n\r\n{}\n',
    };
    const run = await throughShim(fake.socket)(add);
    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout.toString())).toMatchObject({
      code: 11,
      msg: expect.stringMatching(/is not HTTP/),
    });
  });

  it('a reply that never comes: code 11 once BERTH_SHIM_TIMEOUT (1 s here) has passed, no hang', async () => {
    fake.mode = { kind: 'silent' };
    const started = Date.now();
    const run = await throughShim(fake.socket, { BERTH_SHIM_TIMEOUT: '1' })(add);
    const took = Date.now() - started;
    expect(run.code).toBe(1);
    const err = JSON.parse(run.stdout.toString()) as { code: number; msg: string };
    expect(err).toMatchObject({ code: 11 });
    expect(err.msg).toMatch(/did not answer within 1 s/);
    expect(took).toBeGreaterThanOrEqual(1000);
    expect(took).toBeLessThan(10_000);
  });
});

describe('names', () => {
  it('refuses to run under another name', async () => {
    const other = join(work, 'other-name');
    copyFileSync(join(repo, 'native/shim/build/berth-shim'), other);
    chmodSync(other, 0o755);
    const run = await runProgram(other, [], cniEnv('VERSION'), '');
    expect(run.code).toBe(1);
    expect(run.stderr.toString()).toMatch(
      /started as "other-name"; install it as berth-bridge or berth-ipam/,
    );
    // The runtime reads stdout: a CNI error there, not nothing.
    expect(JSON.parse(run.stdout.toString())).toEqual({
      code: 999,
      msg: 'started as "other-name"; install it as berth-bridge or berth-ipam beside berth',
    });
  });

  it("an error naming a path that is not UTF-8 is still UTF-8 JSON (the path's other bytes as '?')", async () => {
    // Installed in a directory whose name is not UTF-8, without berth beside it and without berthd: the
    // fallback cannot exec and says so, naming the path.
    const dir = Buffer.concat([Buffer.from(join(work, 'bin-')), Buffer.from([0xff, 0xfe]), Buffer.from('x')]);
    mkdirSync(dir);
    const shim = Buffer.concat([dir, Buffer.from('/berth-ipam')]);
    copyFileSync(join(repo, 'native/shim/build/berth-shim'), shim);
    chmodSync(shim, 0o755);
    // Run through a link of a UTF-8 name (Node spawns only those); the shim finds its place in /proc/self/exe.
    mkdirSync(join(work, 'link'));
    symlinkSync(shim, join(work, 'link', 'berth-ipam'));
    const run = await runProgram(
      join(work, 'link', 'berth-ipam'),
      [],
      { ...cniEnv('VERSION'), BERTH_SOCKET: join(work, 'no-berthd.sock') },
      '',
    );
    expect(run.code).toBe(1);
    const text = new TextDecoder('utf-8', { fatal: true }).decode(run.stdout);
    const err = JSON.parse(text) as { code: number; msg: string };
    expect(err.code).toBe(999);
    expect(err.msg).toContain(`${join(work, 'bin-')}??x/berth `);
  });
});

describe('a runtime that closed its end of stdout', () => {
  it('the shim exits with an error instead of dying of SIGPIPE', async () => {
    const child = spawn(join(shimDir, 'berth-bridge'), [], {
      env: { ...cniEnv('VERSION'), BERTH_SOCKET: fake.socket },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    // Closed before the shim can write: its reply comes from the fake berthd, which answers only once this
    // event loop turn is over.
    child.stdout.destroy();
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
      child.on('exit', (c, s) => resolve([c, s])),
    );
    expect(fake.calls.length).toBe(1);
    expect(signal).toBeNull();
    expect(code).toBe(1);
  });
});

describe('no memfd (a kernel before 3.17, or a seccomp profile that refuses memfd_create)', () => {
  // test/shim/no-memfd.c: the shim run under a seccomp filter that answers memfd_create with ENOSYS.
  const noMemfd = join(work, 'no-memfd');
  beforeAll(() => {
    execFileSync('gcc', ['-Wall', '-Wextra', '-Werror', '-o', noMemfd, join(__dirname, 'no-memfd.c')]);
  });

  it.each([
    ['a config a pipe holds', 2_000],
    ['a stdin larger than a pipe holds (2 MiB)', 2 << 20],
  ])(
    'the fallback gets %s whole: same bytes as the standalone program, no hang',
    async (_what, size) => {
      // Read to its end and parsed: the unsupported version comes after the padding.
      const stdin = JSON.stringify({
        pad: 'x'.repeat(size),
        cniVersion: '9.9.9',
        name: 'n',
        type: 'berth-bridge',
      });
      const c: Case = { name: 'no memfd', plugin: 'berth-bridge', env: cniEnv('ADD'), stdin };
      const want = await standalone(c);
      expect(want.code).toBe(1);
      expect(want.stdout.toString()).toContain('9.9.9');
      const shim = join(shimDir, c.plugin);
      const env = { ...c.env, BERTH_SOCKET: join(work, 'absent.sock') };
      // Killed after 30 s: a hang shows as exit code null, not as a test that never ends.
      const got = await runProgram('timeout', ['-s', 'KILL', '30', noMemfd, shim], env, stdin);
      expect(view(got)).toEqual(view(want));
    },
    60_000,
  );
});
