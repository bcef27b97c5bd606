// The warm path when things go wrong, through the real C shim (native/shim/build/bin) and a real berthd:
// berthd killed with SIGKILL in the middle of 50 concurrent ADDs, and callers that are not root.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync } from 'node:fs';
import * as http from 'node:http';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { Fixture, REPO, ipJson, trySh } from '../bridge/harness';
import { type TestDaemon, startDaemon } from './warm-client';

const SHIM_BIN = join(REPO, 'native', 'shim', 'build', 'bin');
const SHIM = join(SHIM_BIN, 'berth-bridge');

const fx = new Fixture('k');
const daemons: TestDaemon[] = [];

afterAll(async () => {
  for (const d of daemons) await d.stop('SIGKILL');
  fx.dispose();
});

interface ShimRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** When it exited (ms since the epoch). */
  ended: number;
}

/** Runs the shim as a runtime would (its own env and stdin), optionally through a wrapper (setpriv). */
function runShim(
  env: Record<string, string>,
  stdin: string,
  opts: { wrap?: string[]; plugin?: string; killAfterMs?: number } = {},
): { child: ChildProcess; done: Promise<ShimRun> } {
  const exe = opts.plugin ?? SHIM;
  const [cmd, ...args] = [...(opts.wrap ?? []), exe];
  const child = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.on('error', () => undefined);
  child.stdin.end(stdin);
  // A hung shim is a failure of the test, not of the run: it is killed, and shows as signal SIGKILL.
  const guard = setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs ?? 90_000);
  const done = new Promise<ShimRun>((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout, stderr, ended: Date.now() });
    }),
  );
  return { child, done };
}

function get(socket: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: socket, path }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/** The sum of a counter's samples whose labels contain every `key="value"` given. */
function counter(metrics: string, name: string, labels: string[] = []): number {
  let sum = 0;
  for (const line of metrics.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels.every((l) => line.includes(l))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

function shimEnv(socket: string, command: string, id: string, netns: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: command,
    CNI_CONTAINERID: id,
    CNI_NETNS: netns,
    CNI_IFNAME: 'eth0',
    // berth-bridge's own IPAM delegation finds the shim as berth-ipam too (standalone fallback runs).
    CNI_PATH: `${SHIM_BIN}:/usr/lib/cni`,
    BERTH_SOCKET: socket,
    BERTH_RUN_DIR: fx.runDir,
    BERTH_NFT_TABLE: fx.nftTable,
  };
}

describe('berthd killed with SIGKILL during 50 concurrent ADDs through the shim', () => {
  test('every ADD succeeds or fails with a CNI error (11 for a lost reply), no hang; the DELs leave nothing', async () => {
    const subnet = '198.18.190.0/24';
    const d1 = await startDaemon({ tag: 'k1', runDir: fx.runDir, nftTable: fx.nftTable });
    daemons.push(d1);
    const c = fx.conf({
      isGateway: true,
      ipMasq: true,
      ipam: {
        type: 'berth-ipam',
        dataDir: fx.dataDir,
        // as on a node: berth-ipam's own client talks to the same berthd (and falls back to the files)
        daemonSocket: d1.socket,
        ranges: [[{ subnet }]],
        routes: [{ dst: '0.0.0.0/0' }],
      },
    });
    const network = c.name as string;
    const bridge = c.bridge as string;
    const stdin = JSON.stringify(c);
    const pods = Array.from({ length: 50 }, (_, i) => ({ id: `${fx.prefix}p${i}`, ns: fx.netns() }));

    const runs = pods.map((p) => runShim(shimEnv(d1.socket, 'ADD', p.id, p.ns.path), stdin));
    // Kill berthd once the first ADDs came back: the rest are in flight in the daemon or still arriving.
    let finished = 0;
    for (const r of runs) void r.done.then(() => finished++);
    while (finished < 3) await new Promise((r) => setTimeout(r, 5));
    const servedBeforeKill = counter((await get(d1.socket, '/metrics')).body, 'berthd_plugin_calls_total', [
      'command="ADD"',
    ]);
    d1.child.kill('SIGKILL');
    const killedAt = Date.now();
    const results = await Promise.all(runs.map((r) => r.done));

    const ok: number[] = [];
    const lost: number[] = [];
    results.forEach((r, i) => {
      const what = `pod ${i}: ${JSON.stringify(r)}`;
      // No crash, no hang: the shim exited by itself with 0 or 1 and printed one JSON object.
      expect(r.signal, what).toBeNull();
      expect([0, 1], what).toContain(r.code);
      const out = JSON.parse(r.stdout) as { code?: number; msg?: string; ips?: { address: string }[] };
      if (r.code === 0) {
        expect(out.ips?.length, what).toBe(1);
        ok.push(i);
      } else {
        // A failure is a CNI error; the only cause here is the reply lost with berthd: code 11.
        expect(out.code, what).toBe(11);
        expect(out.msg, what).toMatch(/berthd/);
        lost.push(i);
      }
    });
    const slowest = Math.max(...results.map((r) => r.ended)) - killedAt;
    process.stderr.write(
      `kill -9 mid-ADD: ${ok.length} succeeded, ${lost.length} code 11; ${servedBeforeKill} ADDs served ` +
        `before the kill; last shim exited ${slowest} ms after it\n`,
    );
    expect(ok.length).toBeGreaterThanOrEqual(3);
    expect(lost.length).toBeGreaterThan(0); // the kill did land in the middle
    expect(slowest).toBeLessThan(30_000);
    // Every pod that got a result really has its address.
    for (const i of ok) {
      const addr = (JSON.parse(results[i]!.stdout) as { ips: { address: string }[] }).ips[0]!.address;
      const inNs = ipJson<{ addr_info: { local: string; prefixlen: number; family: string }[] }[]>([
        '-n',
        pods[i]!.ns.name,
        'addr',
        'show',
        'dev',
        'eth0',
      ]);
      expect(
        inNs[0]!.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
      ).toEqual([addr]);
    }

    // The runtime's cleanup: a DEL for every pod, through the shim, to a restarted berthd (same socket).
    // The killed daemon's socket file is still there: the new one finds nobody answering and takes it over.
    const d2 = await startDaemon({
      tag: 'k2',
      runDir: fx.runDir,
      nftTable: fx.nftTable,
      extraArgs: ['--socket', d1.socket],
    });
    daemons.push(d2);
    const dels = await Promise.all(
      pods.map((p) => runShim(shimEnv(d1.socket, 'DEL', p.id, p.ns.path), stdin).done),
    );
    dels.forEach((r, i) => expect({ i, code: r.code, stdout: r.stdout }).toEqual({ i, code: 0, stdout: '' }));
    const m2 = (await get(d1.socket, '/metrics')).body;
    expect(counter(m2, 'berthd_plugin_calls_total', ['command="DEL"', 'plugin="berth-bridge"'])).toBe(50);

    // Nothing left: no port on the bridge, no eth0 in a pod, no lease, no attachment record, no nft element.
    expect(fx.ports(bridge)).toEqual([]);
    for (const p of pods) expect(trySh('ip', ['-n', p.ns.name, 'link', 'show', 'eth0'])).toBeUndefined();
    expect(fx.leases(network)).toEqual([]);
    const leaseStatus = JSON.parse((await get(d1.socket, '/v1/status')).body) as {
      networks: { network: string; leases: number }[];
    };
    expect(leaseStatus.networks.filter((n) => n.network === network && n.leases > 0)).toEqual([]);
    expect(fx.runState()).toEqual([]);
    expect(fx.nftList('inet')).not.toMatch(/198\.18\.190\./);
    expect(fx.nftList('bridge')).not.toMatch(/198\.18\.190\./);
    // `berth status` tells the warm path's state and what the restarted daemon did: the 50 DELs.
    const st = berthStatus(d1.socket);
    expect(st).toMatch(/^warm path: up: berth-bridge, berth-ipam served in berthd/m);
    expect(st).toMatch(/calls served 50 \(0 ended with a CNI error\)/);
    await d2.stop();
    expect(berthStatus(d1.socket)).toMatch(/^warm path: down \(berthd not answering\)/m);
  });
});

function berthStatus(socket: string): string {
  return execFileSync(
    process.execPath,
    [join(REPO, 'bin', 'berth'), 'status', '--socket', socket, '--data-dir', fx.dataDir],
    {
      encoding: 'utf8',
      env: { ...process.env, BERTH_SOCKET: socket },
    },
  );
}

describe('a caller that is not root gets no service from berthd', () => {
  const nobody = ['setpriv', '--reuid', 'nobody', '--regid', 'nogroup', '--clear-groups'];

  /** An ADD as nobody, through the shim and straight through the standalone program, for comparison. */
  async function asNobody(socket: string): Promise<{ shim: ShimRun; standalone: ShimRun }> {
    const ns = fx.netns();
    const c = fx.conf({
      ipam: {
        type: 'berth-ipam',
        dataDir: fx.dataDir,
        daemonSocket: false,
        ranges: [[{ subnet: '198.18.191.0/24' }]],
      },
    });
    const env = shimEnv(socket, 'ADD', `${fx.prefix}nb`, ns.path);
    const shim = await runShim(env, JSON.stringify(c), { wrap: nobody }).done;
    const standalone = await runShim(env, JSON.stringify(c), {
      wrap: nobody,
      plugin: join(REPO, 'bin', 'berth-bridge'),
    }).done;
    return { shim, standalone };
  }

  function expectSameFailure(r: { shim: ShimRun; standalone: ShimRun }): void {
    // It failed as the standalone plugin fails for a non-root user: same exit code, same stdout bytes.
    expect(r.shim.signal).toBeNull();
    expect(r.shim.code).toBe(1);
    expect(r.shim.stdout).toBe(r.standalone.stdout);
    expect(r.shim.code).toBe(r.standalone.code);
    expect((JSON.parse(r.shim.stdout) as { code: number }).code).toBeGreaterThan(0);
  }

  test('the socket as berthd makes it (0600 in a 0700 dir): EACCES, the shim runs standalone and fails', async () => {
    const d = await startDaemon({ tag: 'k3', runDir: fx.runDir, nftTable: fx.nftTable });
    daemons.push(d);
    chmodSync(d.dir, 0o700);
    const r = await asNobody(d.socket);
    expectSameFailure(r);
    const m = (await get(d.socket, '/metrics')).body;
    expect(counter(m, 'berthd_requests_total', ['route="POST /v1/cni"'])).toBe(0);
    expect(counter(m, 'berthd_plugin_calls_total')).toBe(0);
    await d.stop();
  });

  test('a socket someone opened to all: berthd checks the peer (SO_PEERCRED) and answers 403, doing nothing', async () => {
    const d = await startDaemon({ tag: 'k4', runDir: fx.runDir, nftTable: fx.nftTable });
    daemons.push(d);
    chmodSync(d.dir, 0o755);
    chmodSync(d.socket, 0o666);
    const r = await asNobody(d.socket);
    expectSameFailure(r);
    const m = (await get(d.socket, '/metrics')).body;
    // The call reached berthd, which refused it without running anything.
    expect(counter(m, 'berthd_requests_total', ['route="POST /v1/cni"', 'status="403"'])).toBeGreaterThan(0);
    expect(counter(m, 'berthd_requests_total', ['route="POST /v1/cni"', 'status="200"'])).toBe(0);
    expect(counter(m, 'berthd_plugin_calls_total')).toBe(0);
    await d.stop();
  });
});
