// berthd's acceptance (root): a real daemon process on a socket in a temp dir, the built berth-ipam and
// curl as clients, the lease files as the judge. Each test removes its daemon (by PID) and its temp dir.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { parseRequest } from '../../src/cni-spec/request';
import { callDaemon } from '../../src/ipam/daemon-client';
import { Allocate } from '../../src/ipam/daemon/protocol';
import { add as fileAdd } from '../../src/ipam/handlers';
import { openLeaseFileStore } from '../../src/ipam/lease-file-store';
import { HOST_LOCAL } from './harness';
import {
  type Daemon,
  type Run,
  type Sandbox,
  addressOf,
  assertDistFresh,
  attRecords,
  berth,
  ipam,
  leaseFiles,
  netConf,
  REPO,
  runProgram,
  removeSandbox,
  sandbox,
  startDaemon,
  stopDaemon,
} from './daemon-harness';

let daemons: Daemon[] = [];
let boxes: Sandbox[] = [];

function box(tag: string): Sandbox {
  const s = sandbox(tag);
  boxes.push(s);
  return s;
}

async function daemon(s: Sandbox, opts?: Parameters<typeof startDaemon>[1]): Promise<Daemon> {
  const d = await startDaemon(s, opts);
  daemons.push(d);
  return d;
}

beforeAll(() => {
  if (process.getuid?.() !== 0) throw new Error('root tests: run as root');
  assertDistFresh();
});

afterEach(async () => {
  for (const d of daemons) await stopDaemon(d);
  for (const s of boxes) removeSandbox(s);
  daemons = [];
  boxes = [];
});

function curl(s: Sandbox, args: string[], stdin?: string): { code: number | null; out: string; err: string } {
  const r = spawnSync('curl', ['-sS', '--unix-socket', s.socket, ...args], {
    input: stdin,
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function envelope(cid: string, conf: Record<string, unknown>): string {
  return JSON.stringify({
    env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0' },
    config: conf,
  });
}

async function metric(s: Sandbox, name: string): Promise<number> {
  const r = await callDaemon({ socket: s.socket, method: 'GET', path: '/metrics' });
  const line = String(r.body)
    .split('\n')
    .find((l) => l.startsWith(name));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

async function daemonLeases(s: Sandbox): Promise<Map<string, string>> {
  const r = await callDaemon({
    socket: s.socket,
    method: 'GET',
    path: `/v1/leases?network=${s.network}&dataDir=${encodeURIComponent(s.dataDir)}`,
  });
  return new Map(
    (r.body as { leases: { ip: string; containerId: string }[] }).leases.map((l) => [l.ip, l.containerId]),
  );
}

describe('berthd serves berth-ipam and curl', () => {
  test('allocate/check/release through the plugin and through curl --unix-socket', async () => {
    const s = box('basic');
    await daemon(s);
    const conf = netConf(s, { daemon: true });

    const a = await ipam('ADD', 'ctr-plugin', conf);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stderr).toBe('');
    const ipA = addressOf(a.stdout);
    expect(JSON.parse(a.stdout).cniVersion).toBe('1.0.0');
    // Served by the daemon (it counted the allocation), not by the fallback.
    expect(await metric(s, 'berthd_allocations_total')).toBe(1);

    const c = curl(
      s,
      [
        '-X',
        'POST',
        '-H',
        'content-type: application/json',
        '--data-binary',
        '@-',
        'http://berthd/v1/allocate',
      ],
      envelope('ctr-curl', conf),
    );
    expect(c.code, c.err).toBe(0);
    const ipC = addressOf(c.out);
    expect(ipC).not.toBe(ipA);
    expect(leaseFiles(s)).toEqual(
      new Map([
        [ipA, 'ctr-plugin\r\neth0'],
        [ipC, 'ctr-curl\r\neth0'],
      ]),
    );

    const prev = { ...conf, prevResult: JSON.parse(a.stdout) };
    const chk = await ipam('CHECK', 'ctr-plugin', prev);
    expect(chk.code, chk.stdout).toBe(0);

    // A CNI error from the daemon reaches the runtime as the plugin's own error object.
    const wrong = await ipam('CHECK', 'ctr-none', prev);
    expect(wrong.code).toBe(1);
    expect(JSON.parse(wrong.stdout)).toMatchObject({ code: 3 });
    // Without prevResult (a direct call), as host-local: a lease of the attachment is enough.
    const direct = await ipam('CHECK', 'ctr-plugin', conf);
    expect(direct.code, direct.stdout).toBe(0);
    const directNone = await ipam('CHECK', 'ctr-none', conf);
    expect(directNone.code).toBe(1);
    expect(JSON.parse(directNone.stdout)).toMatchObject({ code: 3 });
    // All four CHECKs were answered by the daemon (two with a CNI error), not by the files fallback.
    expect(await metric(s, 'berthd_requests_total{route="POST /v1/check",status="200"}')).toBe(2);
    expect(await metric(s, 'berthd_errors_total{route="POST /v1/check",code="3"}')).toBe(2);

    const d1 = curl(
      s,
      ['-X', 'POST', '--data-binary', '@-', 'http://berthd/v1/release'],
      envelope('ctr-plugin', conf),
    );
    expect(d1.out).toBe('{"ok":true}');
    const d2 = await ipam('DEL', 'ctr-curl', conf);
    expect(d2.code, d2.stdout).toBe(0);
    expect(leaseFiles(s).size).toBe(0);
    expect(await daemonLeases(s)).toEqual(new Map());
    expect(await metric(s, 'berthd_releases_total')).toBe(2);
  });

  test('the socket is root-only: nobody cannot connect, root can', async () => {
    const s = box('perm');
    await daemon(s);
    expect(statSync(s.socket).mode & 0o777).toBe(0o600);
    expect(statSync(dirname(s.socket)).mode & 0o777).toBe(0o700);
    // The temp dir above must be passable for the attempt to reach the socket itself.
    spawnSync('chmod', ['0755', s.dir]);
    const asNobody = spawnSync(
      'setpriv',
      [
        '--reuid=nobody',
        '--regid=nogroup',
        '--clear-groups',
        'curl',
        '-sS',
        '--unix-socket',
        s.socket,
        'http://berthd/v1/health',
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    expect(asNobody.status).toBe(7); // curl: couldn't connect
    expect(asNobody.stderr).toMatch(/Permission denied|Could not connect|Couldn't connect/i);
    // Even with the 0700 directory opened up, the socket's own 0600 keeps nobody out.
    spawnSync('chmod', ['0755', dirname(s.socket)]);
    const throughOpenDir = spawnSync(
      'setpriv',
      [
        '--reuid=nobody',
        '--regid=nogroup',
        '--clear-groups',
        'curl',
        '-sS',
        '--unix-socket',
        s.socket,
        'http://berthd/v1/health',
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    expect(throughOpenDir.status).toBe(7);
    // berth's admin commands as nobody: told it needs root, not "berthd is not answering" and then a failure
    // on the lease files.
    const berthAsNobody = (args: string[]) =>
      spawnSync(
        'setpriv',
        [
          '--reuid=nobody',
          '--regid=nogroup',
          '--clear-groups',
          process.execPath,
          join(REPO, 'bin', 'berth'),
        ].concat(args),
        { encoding: 'utf8', timeout: 20_000 },
      );
    const leases = berthAsNobody(['leases', '--socket', s.socket, '--data-dir', s.dataDir]);
    expect(leases.status).toBe(1);
    expect(leases.stderr).toContain(`permission denied on ${s.socket}: berth's admin commands need root`);
    // With no berthd to ask (no socket there): the same, not an empty node with exit 0.
    for (const command of [['leases'], ['status'], ['leases', '--data-dir', s.dataDir]]) {
      const files = berthAsNobody([...command, '--socket', '/nonexistent-berth-test/berthd.sock']);
      expect(files.status, command.join(' ')).toBe(1);
      expect(files.stderr).toContain("the lease files are root's: berth's admin commands need root");
    }
    // berthd itself as nobody: the failed mkdir says berthd runs as root.
    const berthd = berthAsNobody([
      'daemon',
      '--socket',
      '/nonexistent-berth-test/berthd.sock',
      '--state-dir',
      '/nonexistent-berth-test',
    ]);
    expect(berthd.status).toBe(1);
    expect(berthd.stderr).toMatch(
      /^berth daemon: EACCES: permission denied, mkdir .*\(berthd runs as root\)\n$/m,
    );
    spawnSync('chmod', ['0700', dirname(s.socket)]);
    expect(curl(s, ['http://berthd/v1/health']).out).toBe('{"ok":true,"draining":false}');
  });

  test('bad input over the real socket: JSON errors with HTTP status and CNI code; the daemon lives on', async () => {
    const s = box('bad');
    const d = await daemon(s);
    const cases: [string[], string | undefined, number, number][] = [
      [['-X', 'POST', '--data-binary', '@-', 'http://berthd/v1/allocate'], '{"env": {', 400, 6],
      [['http://berthd/v1/nope'], undefined, 404, 2],
      [['http://berthd/v1/leases?network=missing'], undefined, 404, 7],
      [['-X', 'POST', '--data-binary', '@-', 'http://berthd/v1/allocate'], 'x'.repeat(2 << 20), 413, 6],
    ];
    for (const [args, body, status, code] of cases) {
      const r = curl(s, ['-o', '-', '-w', '\n%{http_code}', ...args], body);
      const [json, http] = [
        r.out.slice(0, r.out.lastIndexOf('\n')),
        r.out.slice(r.out.lastIndexOf('\n') + 1),
      ];
      expect(Number(http), args.join(' ')).toBe(status);
      expect(JSON.parse(json)).toMatchObject({ code });
    }
    expect(d.child.exitCode).toBe(null);
    expect(curl(s, ['http://berthd/v1/health']).code).toBe(0);
  });
});

describe('a FIFO where berthd reads or writes a file', () => {
  test('never stalls berthd: a resolvConf FIFO fails its ADD (code 5); FIFOs as a spare and a cursor are passed over', async () => {
    const s = box('fifo');
    await daemon(s);
    const fifo = (path: string): void => {
      mkdirSync(dirname(path), { recursive: true });
      expect(spawnSync('mkfifo', [path]).status).toBe(0);
    };
    // Opened without a writer (or a reader), a FIFO holds the opening thread in open(2): berthd's main thread,
    // every call of every network.
    const resolv = join(s.dir, 'resolv.fifo');
    fifo(resolv);
    const withResolv = netConf(s, { daemon: true });
    (withResolv.ipam as Record<string, unknown>).resolvConf = resolv;
    const r = await ipam('ADD', 'ctr-resolv', withResolv);
    expect(r.code).not.toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      code: 5,
      msg: `cannot read resolvConf ${resolv}: ${resolv} is not a regular file`,
    });
    const netDir = join(s.dataDir, s.network);
    fifo(join(netDir, '.berth', 'spare', 's-fifo'));
    fifo(join(netDir, 'last_reserved_ip.0'));
    const conf = netConf(s, { daemon: true });
    for (const cid of ['ctr-a', 'ctr-b']) {
      const a = await ipam('ADD', cid, conf);
      expect(a.code, a.stdout + a.stderr).toBe(0);
    }
    expect([...leaseFiles(s).values()].sort()).toEqual(['ctr-a\r\neth0', 'ctr-b\r\neth0']);
    expect(await metric(s, 'berthd_allocations_total')).toBe(2);
    const health = await callDaemon({ socket: s.socket, method: 'GET', path: '/v1/health', timeoutMs: 2000 });
    expect(health.status).toBe(200);
  });
});

describe('lifecycle', () => {
  test("berth's own /run/berth made 0755 by someone else (a kubelet hostPath) is made 0700 again", () => {
    // In a private mount namespace over a tmpfs /run: the host's /run/berth is never touched.
    const s = box('mode');
    const script = `
      mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/berth && mkdir -p "$2" || exit 90
      "$0" "$1" daemon --data-dir "$2" --no-plugins 2>"$2/berthd.err" & pid=$!
      for i in $(seq 1 100); do [ -S /run/berth/berthd.sock ] && break; sleep 0.1; done
      echo $(stat -c %a /run/berth /run/berth/berthd.sock)
      kill $pid; wait $pid`;
    const r = spawnSync(
      'unshare',
      [
        '--mount',
        '--propagation',
        'private',
        'sh',
        '-c',
        script,
        process.execPath,
        join(REPO, 'bin', 'berth'),
        s.dataDir,
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(r.stdout.trim(), `${r.stderr}${readFileSync(join(s.dataDir, 'berthd.err'), 'utf8')}`).toBe(
      '700 600',
    );
    expect(readFileSync(join(s.dataDir, 'berthd.err'), 'utf8')).toMatch(/socket directory made private/);
  });

  test('plugin falls back to the files when the daemon is stopped; the restarted daemon sees those leases', async () => {
    const s = box('fallback');
    const conf = netConf(s, { daemon: true });
    const d = await daemon(s);
    const a = await ipam('ADD', 'ctr-1', conf);
    expect(a.code, a.stderr).toBe(0);

    // SIGTERM: clean exit, socket removed.
    expect(await stopDaemon(d, 'SIGTERM')).toBe(0);
    expect(existsSync(s.socket)).toBe(false);
    const b = await ipam('ADD', 'ctr-2', conf);
    expect(b.code, b.stdout + b.stderr).toBe(0);
    const ipB = addressOf(b.stdout);
    const del1 = await ipam('DEL', 'ctr-1', conf);
    expect(del1.code, del1.stdout).toBe(0);
    expect(leaseFiles(s)).toEqual(new Map([[ipB, 'ctr-2\r\neth0']]));

    // kill -9 leaves a stale socket file: the plugin still falls back (with a warning), DEL included.
    const d2 = await daemon(s);
    expect(await daemonLeases(s)).toEqual(new Map([[ipB, 'ctr-2']]));
    await stopDaemon(d2, 'SIGKILL');
    expect(existsSync(s.socket)).toBe(true);
    const c = await ipam('ADD', 'ctr-3', conf);
    expect(c.code, c.stdout).toBe(0);
    expect(c.stderr).toMatch(/working on the lease files directly/);
    const ipC = addressOf(c.stdout);

    // A new daemon clears the stale socket and sees everything written meanwhile.
    await daemon(s);
    expect(await daemonLeases(s)).toEqual(
      new Map([
        [ipB, 'ctr-2'],
        [ipC, 'ctr-3'],
      ]),
    );
    const e = await ipam('ADD', 'ctr-4', conf);
    expect([ipB, ipC]).not.toContain(addressOf(e.stdout));
    expect(await metric(s, 'berthd_allocations_total')).toBe(1);
  });

  test('a restarted daemon still lists the networks of every data dir it served (leases, berth leases, metrics)', async () => {
    const s = box('dirs');
    // A second data dir, named only by the plugin config (not --data-dir).
    const other: Sandbox = { ...s, dataDir: join(s.dir, 'other-data'), network: `${s.network}o` };
    const d = await daemon(s);
    const a = await ipam('ADD', 'ctr-other', netConf(other, { daemon: true, subnet: '198.18.197.0/24' }));
    expect(a.code, a.stderr).toBe(0);
    const ip = addressOf(a.stdout);
    expect(await stopDaemon(d, 'SIGTERM')).toBe(0);

    await daemon(s);
    const listed = await callDaemon({ socket: s.socket, method: 'GET', path: '/v1/leases' });
    expect(
      (listed.body as { leases: { network: string; dataDir: string; ip: string }[] }).leases.map((l) => [
        l.network,
        l.dataDir,
        l.ip,
      ]),
    ).toEqual([[other.network, other.dataDir, ip]]);
    const cli = await berth(['leases', '--json', '--socket', s.socket]);
    expect(cli.code, cli.stderr).toBe(0);
    expect(
      (JSON.parse(cli.stdout) as { containerId: string; ip: string }[]).map((l) => [l.containerId, l.ip]),
    ).toEqual([['ctr-other', ip]]);
    const metrics = String((await callDaemon({ socket: s.socket, method: 'GET', path: '/metrics' })).body);
    expect(metrics).toContain(`berthd_leases{network="${other.network}",data_dir="${other.dataDir}"} 1\n`);
    // The list lives in the state dir (by default the socket's directory), root only.
    const stateFile = join(dirname(s.socket), 'berthd-data-dirs.json');
    expect(JSON.parse(readFileSync(stateFile, 'utf8'))).toEqual({ version: 1, dataDirs: [other.dataDir] });
    expect(statSync(stateFile).mode & 0o777).toBe(0o600);
  });

  test('with berthd down, berth leases on the files finds the data dirs a berthd with --state-dir served', async () => {
    const s = box('sdir');
    const other: Sandbox = { ...s, dataDir: join(s.dir, 'other-data'), network: `${s.network}o` };
    const stateDir = join(s.dir, 'state');
    const d = await daemon(s, { extraArgs: ['--state-dir', stateDir] });
    const a = await ipam('ADD', 'ctr-other', netConf(other, { daemon: true, subnet: '198.18.198.0/24' }));
    expect(a.code, a.stderr).toBe(0);
    expect(await stopDaemon(d, 'SIGTERM')).toBe(0);
    const listed = async (extra: string[]): Promise<string[]> => {
      const r = await berth(['leases', '--json', '--socket', s.socket, ...extra]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { containerId: string }[]).map((l) => l.containerId);
    };
    // The list is not beside the socket: found through --state-dir (berthd's own flag, given again).
    expect(await listed([])).not.toContain('ctr-other');
    expect(await listed(['--state-dir', stateDir])).toContain('ctr-other');
  });

  test('kill -9 in the middle of 200 concurrent ADDs loses no acknowledged lease and duplicates none', async () => {
    const s = box('kill');
    const conf = netConf(s, { daemon: true, subnet: '198.18.193.0/24' });
    const d = await daemon(s);
    const acked = new Map<string, string>();
    let failed = 0;
    let killed = false;
    const ids = Array.from({ length: 200 }, (_, i) => `ctr-${i}`);
    // Requests start 2 ms apart (all 200 are under way for ~0.4 s) so that the kill lands mid-storm
    // however fast the daemon answers: some acknowledged, some in flight, some not yet sent.
    await Promise.all(
      ids.map(async (cid, i) => {
        await new Promise((r) => setTimeout(r, i * 2));
        try {
          const r = await callDaemon({
            socket: s.socket,
            method: 'POST',
            path: Allocate.path,
            body: JSON.parse(envelope(cid, conf)),
          });
          if (r.status === 200)
            acked.set(cid, (r.body as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]!);
        } catch {
          failed++;
        }
        if (!killed && acked.size >= 30) {
          killed = true;
          process.kill(d.child.pid!, 'SIGKILL');
        }
      }),
    );
    expect(killed).toBe(true);
    expect(acked.size).toBeGreaterThanOrEqual(30);
    expect(failed).toBeGreaterThan(0); // the kill really came mid-storm
    await d.exited;

    // Every acknowledged lease is on disk, for its container.
    const files = leaseFiles(s);
    for (const [cid, ip] of acked) expect(files.get(ip), `${cid} was told ${ip}`).toBe(`${cid}\r\neth0`);

    // The runtime retries the rest (here on the files, as the plugin does with the daemon gone): each gets
    // one address, the acknowledged ones theirs again, and no address is held twice.
    const warnings: string[] = [];
    const store = openLeaseFileStore({
      dataDir: s.dataDir,
      network: s.network,
      bootId: 'unused',
      warn: (m) => warnings.push(m),
    });
    const got = new Map<string, string>();
    for (const cid of ids) {
      const req = parseRequest({
        env: {
          CNI_COMMAND: 'ADD',
          CNI_CONTAINERID: cid,
          CNI_NETNS: `/run/netns/${cid}`,
          CNI_IFNAME: 'eth0',
          CNI_PATH: '/x',
        },
        stdin: JSON.stringify(conf),
      });
      const r = await fileAdd(req, {
        bootId: undefined,
        warn: (m) => warnings.push(m),
        now: () => new Date(),
        openStore: () => store,
      });
      got.set(cid, r.ips![0]!.address.split('/')[0]!);
    }
    for (const [cid, ip] of acked) expect(got.get(cid)).toBe(ip);
    expect(new Set(got.values()).size).toBe(200);
    const after = leaseFiles(s);
    expect(after.size).toBe(200);
    expect(new Set(after.values()).size).toBe(200);

    // The restarted daemon agrees with the files.
    await daemon(s);
    const seen = await daemonLeases(s);
    expect(seen.size).toBe(200);
    for (const [cid, ip] of got) expect(seen.get(ip)).toBe(cid);
  });

  test('SIGTERM finishes the requests in flight, then exits 0', async () => {
    const s = box('term');
    const conf = netConf(s, { daemon: true, subnet: '198.18.194.0/24' });
    const d = await daemon(s);
    let signalled = false;
    let answeredAfterSignal = 0;
    const outcomes = await Promise.all(
      Array.from({ length: 80 }, async (_, i) => {
        try {
          const r = await callDaemon({
            socket: s.socket,
            method: 'POST',
            path: Allocate.path,
            body: JSON.parse(envelope(`ctr-${i}`, conf)),
          });
          if (signalled) answeredAfterSignal++;
          if (!signalled) {
            signalled = true;
            process.kill(d.child.pid!, 'SIGTERM');
          }
          return { cid: `ctr-${i}`, status: r.status, body: r.body };
        } catch (err) {
          return { cid: `ctr-${i}`, status: 0, err: String(err) };
        }
      }),
    );
    expect(await d.exited).toBe(0);
    const ok = outcomes.filter((o) => o.status === 200);
    // Requests already taken in were answered after the signal, not dropped.
    expect(answeredAfterSignal).toBeGreaterThan(0);
    // Whoever got an answer got a lease that is on disk; nobody got a 5xx.
    const files = leaseFiles(s);
    for (const o of ok) expect(files.get(addressOf(JSON.stringify(o.body)))).toBe(`${o.cid}\r\neth0`);
    expect(outcomes.filter((o) => o.status >= 500)).toEqual([]);
    expect(files.size).toBe(ok.length);
  });

  test('socket activation: systemd passes the listening socket (LISTEN_FDS)', async (ctx) => {
    if (spawnSync('sh', ['-c', 'command -v systemd-socket-activate']).status !== 0) ctx.skip();
    const s = box('sdact');
    spawnSync('mkdir', ['-m', '0700', '-p', dirname(s.socket)]);
    const d = await daemon(s, { wrap: ['systemd-socket-activate', '-l', s.socket] });
    const a = await ipam('ADD', 'ctr-1', netConf(s, { daemon: true }));
    expect(a.code, a.stderr).toBe(0);
    expect(await metric(s, 'berthd_allocations_total')).toBe(1);
    expect(d.stderr.join('')).toMatch(/listening on the socket passed by systemd/);
  });
});

describe('mixed storm on one /24: 100 ADDs through the daemon and 100 straight on the files at once', () => {
  // Shared by the two steps: the ADD storm leaves the store the DEL storm empties. Made in beforeAll, not
  // at collection: a run filtered to other tests skips this block's hooks and would leave the directory.
  let s: Sandbox;
  let d: Daemon | undefined;
  const ids = Array.from({ length: 200 }, (_, i) => `storm-${i}`);
  const viaDaemon = (i: number): boolean => i % 2 === 0;

  beforeAll(() => {
    s = sandbox('storm');
  });

  afterAll(async () => {
    await stopDaemon(d);
    removeSandbox(s);
  });

  test('200 ADDs → 200 distinct addresses, one per container, and a consistent store', async () => {
    d = await startDaemon(s);
    const runs = await Promise.all(
      ids.map((cid, i) => ipam('ADD', cid, netConf(s, { daemon: viaDaemon(i), subnet: '198.18.195.0/24' }))),
    );
    runs.forEach((r, i) => expect(r.code, `${ids[i]}: ${r.stdout} ${r.stderr}`).toBe(0));
    const ips = runs.map((r) => addressOf(r.stdout));
    expect(new Set(ips).size).toBe(200);
    // The files: one per address, each naming the container that was told it.
    const files = leaseFiles(s);
    expect(files.size).toBe(200);
    ids.forEach((cid, i) => expect(files.get(ips[i]!)).toBe(`${cid}\r\neth0`));
    // The plugin's index and the daemon's memory agree with them.
    const store = openLeaseFileStore({ dataDir: s.dataDir, network: s.network, bootId: 'unused' });
    const all = await store.transact(async (x) => x.all(), { readOnly: true });
    expect(new Map(all.map((l) => [l.ip.value.toString(), l.containerId])).size).toBe(200);
    expect(attRecords(s).length).toBe(200);
    const seen = await daemonLeases(s);
    ids.forEach((cid, i) => expect(seen.get(ips[i]!)).toBe(cid));
    // Half really went through the daemon.
    expect(await metric(s, 'berthd_allocations_total')).toBe(100);
  }, 90_000);

  test('then 200 DELs, mixed the same way → an empty store', async () => {
    expect(d).toBeDefined();
    const runs = await Promise.all(
      ids.map((cid, i) => ipam('DEL', cid, netConf(s, { daemon: !viaDaemon(i), subnet: '198.18.195.0/24' }))),
    );
    runs.forEach((r, i) => expect(r.code, `${ids[i]}: ${r.stdout} ${r.stderr}`).toBe(0));
    expect(leaseFiles(s).size).toBe(0);
    // The daemon writes the records (index) when it lets go of the lock: take it, as a plugin would.
    await openLeaseFileStore({ dataDir: s.dataDir, network: s.network, bootId: 'unused' }).transact(
      async () => undefined,
      { readOnly: true },
    );
    expect(attRecords(s)).toEqual([]);
    expect(await daemonLeases(s)).toEqual(new Map());
    expect(await metric(s, 'berthd_releases_total')).toBe(100);
  }, 90_000);
});

describe("Debian's host-local on the data dir berthd recycles inodes in", () => {
  test("host-local's content scans never take a spare for a lease; both sides keep distinct addresses", async () => {
    const s = box('hl');
    await daemon(s);
    const subnet = '198.18.196.0/24';
    const viaDaemon = (cmd: 'ADD' | 'DEL', cid: string): Promise<Run> =>
      ipam(cmd, cid, netConf(s, { daemon: true, subnet }));
    const hlConf = {
      ...netConf(s, { daemon: false, subnet }),
      type: 'host-local',
      ipam: { type: 'host-local', dataDir: s.dataDir, ranges: [[{ subnet }]] },
    };
    const hostLocal = (cmd: string, cid: string): Promise<Run> =>
      runProgram(
        HOST_LOCAL,
        [],
        {
          CNI_COMMAND: cmd,
          CNI_CONTAINERID: cid,
          CNI_NETNS: `/run/netns/${cid}`,
          CNI_IFNAME: 'eth0',
          CNI_PATH: '/usr/lib/cni',
        },
        JSON.stringify(hlConf),
      );
    const ok = (r: Run): Run => {
      expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
      return r;
    };
    const spareDir = join(s.dataDir, s.network, '.berth', 'spare');

    const a = addressOf(ok(await viaDaemon('ADD', 'gone-a')).stdout);
    const b = addressOf(ok(await viaDaemon('ADD', 'kept-b')).stdout);
    ok(await viaDaemon('DEL', 'gone-a'));
    const spares = readdirSync(spareDir).sort();
    expect(spares.length).toBeGreaterThan(0);
    // host-local's DEL of the released container walks every file, spares included, matching contents.
    ok(await hostLocal('DEL', 'gone-a'));
    expect(readdirSync(spareDir).sort()).toEqual(spares);
    // host-local and berthd take turns on the same directory: all distinct, each file naming its container.
    const c = addressOf(ok(await hostLocal('ADD', 'hl-c')).stdout);
    const d = addressOf(ok(await viaDaemon('ADD', 'berth-d')).stdout);
    expect(new Set([b, c, d]).size).toBe(3);
    expect(leaseFiles(s)).toEqual(
      new Map([
        [b, 'kept-b\r\neth0'],
        [c, 'hl-c\r\neth0'],
        [d, 'berth-d\r\neth0'],
      ]),
    );
    expect(a).not.toBe(b);
    // Each releases the other's lease.
    ok(await hostLocal('DEL', 'berth-d'));
    ok(await viaDaemon('DEL', 'hl-c'));
    ok(await viaDaemon('DEL', 'kept-b'));
    expect(leaseFiles(s)).toEqual(new Map());
    for (const f of readdirSync(spareDir))
      expect(readFileSync(join(spareDir, f), 'latin1').startsWith('{')).toBe(true);
  }, 60_000);
});

describe('admin CLI', () => {
  for (const withDaemon of [true, false]) {
    test(`leases, show, release, gc, status ${withDaemon ? 'against the daemon' : 'straight on the files'}`, async () => {
      const s = box(withDaemon ? 'clid' : 'clif');
      if (withDaemon) await daemon(s);
      const conf = netConf(s, { daemon: withDaemon, subnet: '198.18.196.0/24' });
      const added = new Map<string, string>();
      for (const cid of ['aaaa1111', 'bbbb2222', 'cccc3333']) {
        const r = await ipam('ADD', cid, conf, {
          CNI_ARGS: `K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-${cid.slice(0, 1)}`,
        });
        expect(r.code, r.stdout).toBe(0);
        added.set(cid, addressOf(r.stdout));
      }
      const where = ['--socket', s.socket, '--data-dir', s.dataDir];

      const table = await berth(['leases', '--network', s.network, ...where]);
      expect(table.code, table.stderr).toBe(0);
      expect(table.stderr).toBe(
        withDaemon ? '' : `berth: berthd is not answering; working on the lease files under ${s.dataDir}\n`,
      );
      const lines = table.stdout.trim().split('\n');
      expect(lines[0]).toMatch(/^NETWORK\s+IP\s+CONTAINER\s+IFNAME\s+POD\s+AGE$/);
      expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 5))).toEqual(
        [...added].map(([cid, ip]) => [s.network, ip, cid, 'eth0', `ns/pod-${cid.slice(0, 1)}`]),
      );

      const json = JSON.parse((await berth(['leases', '--json', ...where])).stdout) as {
        ip: string;
        containerId: string;
      }[];
      expect(json.map((l) => [l.containerId, l.ip])).toEqual([...added]);
      // `leases list`, as operators look for it beside show and release: the same answer.
      expect((await berth(['leases', 'list', '--json', ...where])).stdout).toBe(
        (await berth(['leases', '--json', ...where])).stdout,
      );

      const show = await berth(['leases', 'show', 'bbbb2222', ...where]);
      expect(show.stdout).toMatch(new RegExp(`ip:\\s+${added.get('bbbb2222')!.replace(/\./g, '\\.')}\\n`));
      expect(show.stdout).toMatch(/pod:\s+ns\/pod-b/);
      expect((await berth(['leases', 'show', added.get('cccc3333')!, '--json', ...where])).stdout).toMatch(
        /"containerId": "cccc3333"/,
      );

      // No terminal and no --yes: refused, nothing released.
      const refused = await berth(['leases', 'release', added.get('aaaa1111')!, ...where]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/refusing to release without --yes/);
      expect(leaseFiles(s).has(added.get('aaaa1111')!)).toBe(true);
      const released = await berth(['leases', 'release', added.get('aaaa1111')!, '--yes', ...where]);
      expect(released.code, released.stderr).toBe(0);
      expect(leaseFiles(s).has(added.get('aaaa1111')!)).toBe(false);

      // GC keeps the listed attachment; --dry-run only reports.
      const valid = JSON.stringify([{ containerID: 'bbbb2222', ifname: 'eth0' }]);
      const dry = await berth(['gc', '--network', s.network, '--valid', '-', '--dry-run', ...where], valid);
      expect(dry.stdout).toMatch(/would release .*cccc3333/);
      expect(leaseFiles(s).size).toBe(2);
      const gc = await berth(['gc', '--network', s.network, '--valid', '-', ...where], 'bbbb2222 eth0\n');
      expect(gc.code, gc.stderr).toBe(0);
      expect([...leaseFiles(s).values()]).toEqual(['bbbb2222\r\neth0']);

      const st = await berth(['status', ...where]);
      expect(st.code).toBe(0);
      expect(st.stdout).toMatch(withDaemon ? /^berthd: running \(pid \d+/ : /^berthd: not answering/);
      expect(st.stdout).toContain(`network ${s.network} (${s.dataDir}/${s.network}): 1 lease(s)`);
      if (withDaemon)
        expect(st.stdout).toMatch(/range set 0 198\.18\.196\.1-198\.18\.196\.254: 1 used, 252 free of 253/);
    });
  }
});
