// Socket activation as systemd does it (deploy/systemd/berthd.socket): the listening socket is created by
// someone else and handed to berthd as fd 3 with LISTEN_FDS=1 and LISTEN_PID=<berthd's pid>. berthd must
// serve on it (the warm path included) and must not create a socket of its own.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { REPO } from '../bridge/harness';
import { holdFlock } from '../netlink/flock-holder';
import { postCni } from './warm-client';

const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-act-`));
let child: ChildProcess | undefined;
// berthd's pid when it is not `child` itself (a "systemd" that forks it): it must be gone before the
// directory is removed, or it writes its leases and state into a recreated one.
let forkedBerthd: number | undefined;

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

afterEach(async () => {
  if (forkedBerthd !== undefined && alive(forkedBerthd)) {
    process.kill(forkedBerthd, 'SIGKILL');
    // Not our child: poll until the kernel has reaped it (its parent, `child`, waits for it).
    for (let i = 0; i < 500 && alive(forkedBerthd); i++) await new Promise((r) => setTimeout(r, 10));
  }
  forkedBerthd = undefined;
  if (child !== undefined && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((r) => child!.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  }
  rmSync(dir, { recursive: true, force: true });
});

test('berthd serves on the socket passed as fd 3 (LISTEN_FDS=1, LISTEN_PID) and creates none itself', async () => {
  const activated = join(dir, 'activated.sock');
  const own = join(dir, 'own.sock');
  // The systemd side, as systemd does it: bind and listen (0600), put the socket on fd 3, set LISTEN_PID to
  // the pid that will run berthd, exec it. python3 stands in for systemd (systemd-socket-activate may be
  // absent on a CI machine).
  const systemd = [
    'import os, socket, sys',
    'os.umask(0o177)',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
    's.bind(sys.argv[1]); s.listen(128)',
    // s may already be fd 3, and dup2 onto itself would keep its close-on-exec flag: clear it explicitly.
    'if s.fileno() != 3: os.dup2(s.fileno(), 3)',
    'os.set_inheritable(3, True)',
    'os.environ["LISTEN_FDS"] = "1"; os.environ["LISTEN_PID"] = str(os.getpid())',
    'os.execv(sys.argv[2], sys.argv[2:])',
  ].join('\n');
  const table = `bt${process.pid}act`;
  const args = ['daemon', '--socket', own, '--run-dir', join(dir, 'run'), '--nft-table', table];
  child = spawn(
    'python3',
    ['-c', systemd, activated, process.execPath, join(REPO, 'bin', 'berth'), ...args],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  for (let i = 0; !/listening/.test(log); i++) {
    if (i > 500 || child.exitCode !== null) throw new Error(`berthd did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(log).toMatch(/listening on the socket passed by systemd/);
  // A plugin call through the activated socket is served by berthd (the warm path), not refused.
  const r = await postCni(activated, {
    plugin: 'berth-bridge',
    env: { CNI_COMMAND: 'VERSION', BERTH_RUN_DIR: join(dir, 'run'), BERTH_NFT_TABLE: table },
    stdin: '',
  });
  expect(r.status).toBe(200);
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({ supportedVersions: expect.arrayContaining(['1.1.0']) });
  // It did not make a socket at --socket: the activated one is the only one.
  expect(existsSync(own)).toBe(false);
});

test('stopping with a call in flight, berthd answers new calls 503 on the socket systemd keeps listening on', async () => {
  mkdirSync(dir, { recursive: true }); // the previous test's afterEach removed it
  const activated = join(dir, 'kept.sock');
  // This "systemd" keeps its copy of the listening socket while berthd runs (fork, not exec), as systemd
  // does: a connection berthd does not take waits in the socket's queue.
  const systemd = [
    'import os, socket, sys',
    'os.umask(0o177)',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
    's.bind(sys.argv[1]); s.listen(128)',
    'pid = os.fork()',
    'if pid == 0:',
    '    if s.fileno() != 3: os.dup2(s.fileno(), 3)',
    '    os.set_inheritable(3, True)',
    '    os.environ["LISTEN_FDS"] = "1"; os.environ["LISTEN_PID"] = str(os.getpid())',
    '    os.execv(sys.argv[2], sys.argv[2:])',
    'print(pid, flush=True)',
    'os.waitpid(pid, 0)',
  ].join('\n');
  const table = `bt${process.pid}ac2`;
  const runDir = join(dir, 'run2');
  const dataDir = join(dir, 'leases');
  const args = ['daemon', '--socket', join(dir, 'own2.sock'), '--run-dir', runDir, '--nft-table', table];
  args.push('--data-dir', dataDir);
  child = spawn(
    'python3',
    ['-c', systemd, activated, process.execPath, join(REPO, 'bin', 'berth'), ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let log = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  for (let i = 0; !/listening/.test(log); i++) {
    if (i > 500 || child.exitCode !== null) throw new Error(`berthd did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const berthd = Number(out.trim());
  forkedBerthd = berthd;
  // A call in flight: its network's lock is held by another process until the test lets go.
  const net = `bt${process.pid}dr`;
  mkdirSync(join(dataDir, net), { recursive: true });
  const holder = await holdFlock(join(dataDir, net, 'lock'));
  try {
    const env = { BERTH_RUN_DIR: runDir, BERTH_NFT_TABLE: table, CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0' };
    const inFlight = postCni(activated, {
      plugin: 'berth-ipam',
      env: { ...env, CNI_COMMAND: 'ADD', CNI_NETNS: '/proc/self/ns/net', CNI_PATH: '/nonexistent' },
      stdin: JSON.stringify({
        cniVersion: '1.0.0',
        name: net,
        type: 'berth-ipam',
        ipam: { type: 'berth-ipam', dataDir, ranges: [[{ subnet: '198.18.184.0/24' }]] },
      }),
    });
    await new Promise((r) => setTimeout(r, 300));
    process.kill(berthd, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    // A new call meanwhile: answered "did nothing" (the shim runs it standalone) while the call in flight
    // still waits for its lock, not queued behind it.
    const late = await Promise.race([
      postCni(activated, { plugin: 'berth-bridge', env: { ...env, CNI_COMMAND: 'VERSION' }, stdin: '' }),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('queued: no answer')), 2000)),
    ]);
    expect(late.status).toBe(503);
    // The call in flight still finishes once the lock is free.
    await holder.release();
    const first = await inFlight;
    expect(first.status).toBe(200);
    expect(first.code, first.stdout).toBe(0);
  } finally {
    await holder.release();
  }
}, 30_000);
