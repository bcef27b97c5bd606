// The warm path as berthd runs it: berth-bridge's and berth-ipam's handlers in this process through the
// daemon's dispatcher (PluginHost), many calls at once, then a real berthd on /v1/cni: its refusals, the
// bytes it answers, and a caller that leaves in the middle of an ADD.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import type { CallOutput } from '../../src/cni-spec/dispatch';
import { networkLockFile } from '../../src/bridge/lock';
import { attachmentTag } from '../../src/bridge/nft';
import { registerAttachment } from '../../src/bridge/registry';
import { holdFlock } from '../netlink/flock-holder';
import type * as LogModule from '../../src/daemon/log';
import type * as MetricsModule from '../../src/daemon/metrics';
import type * as HostModule from '../../src/daemon/plugin-host';
import type * as ServerModule from '../../src/daemon/server';
import type * as ServiceModule from '../../src/ipam/daemon/service';
import { CNI_PATH, Fixture, REPO, ipJson, nsExec, trySh } from '../bridge/harness';
import { type TestDaemon, type WarmReply, postCni, runStandalone, startDaemon } from './warm-client';

// The built code (dist/), as berthd runs it: the handler tables load their modules with require().
const dist = (m: string): unknown => require(join(REPO, 'dist', m));
const { createLogger } = dist('daemon/log.js') as typeof LogModule;
const { Metrics } = dist('daemon/metrics.js') as typeof MetricsModule;
const { PluginHost } = dist('daemon/plugin-host.js') as typeof HostModule;
const { Service } = dist('ipam/daemon/service.js') as typeof ServiceModule;
const { BerthServer } = dist('daemon/server.js') as typeof ServerModule;
type Service = ServiceModule.Service;
type PluginHost = HostModule.PluginHost;
type Metrics = MetricsModule.Metrics;

const fx = new Fixture('w');
const ipamDir = mkdtempSync(join(tmpdir(), `${fx.prefix}-lease-`));
const logLines: string[] = [];
let service: Service;
let host: PluginHost;
let metrics: Metrics;

beforeAll(() => {
  const log = createLogger({ format: 'text', level: 'info', write: (l) => void logLines.push(l) });
  metrics = new Metrics();
  service = new Service({ bootId: 'boot-test', log, metrics, dataDir: ipamDir });
  host = new PluginHost({
    service,
    log,
    metrics,
    runDir: fx.runDir,
    nftTable: fx.nftTable,
    bootIdFile: '/proc/sys/kernel/random/boot_id',
    deadlineMs: 60_000,
  });
});

afterAll(async () => {
  await service.drain();
  service.close();
  fx.dispose();
  rmSync(ipamDir, { recursive: true, force: true });
});

function conf(subnet: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return fx.conf({
    isGateway: true,
    ipMasq: true,
    ipam: { type: 'berth-ipam', dataDir: ipamDir, ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }] },
    ...extra,
  });
}

function callEnv(command: string, containerId: string, netns: string): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: netns,
    CNI_IFNAME: 'eth0',
    ...fx.env(),
  };
}

const never = new AbortController().signal;

describe('in-process: 24 concurrent ADDs through the daemon dispatcher, then 24 DELs', () => {
  test('each pod gets its address and routes, pods reach each other, and nothing is left', async () => {
    const c = conf('198.18.180.0/24');
    const stdin = JSON.stringify(c);
    const pods = Array.from({ length: 24 }, (_, i) => ({ id: `${fx.prefix}c${i}`, ns: fx.netns() }));
    const adds: CallOutput[] = await Promise.all(
      pods.map((p) =>
        host.serve({ v: 1, plugin: 'berth-bridge', env: callEnv('ADD', p.id, p.ns.path), stdin }, never),
      ),
    );
    const addresses: string[] = [];
    adds.forEach((r, i) => {
      expect(r.stderr, `pod ${i}`).toBe('');
      expect(r.code, r.stdout).toBe(0);
      const result = JSON.parse(r.stdout) as { ips: { address: string; gateway: string }[] };
      const ip = result.ips[0]!;
      expect(ip.gateway).toBe('198.18.180.1');
      const inNs = ipJson<{ addr_info: { local: string; prefixlen: number; family: string }[] }[]>([
        '-n',
        pods[i]!.ns.name,
        'addr',
        'show',
        'dev',
        'eth0',
      ]);
      const v4 = inNs[0]!.addr_info
        .filter((a) => a.family === 'inet')
        .map((a) => `${a.local}/${a.prefixlen}`);
      expect(v4).toEqual([ip.address]);
      const routes = ipJson<{ gateway: string }[]>(['-n', pods[i]!.ns.name, 'route', 'show', 'default']);
      expect(routes.map((x) => x.gateway)).toEqual(['198.18.180.1']);
      addresses.push(ip.address.split('/')[0]!);
    });
    expect(new Set(addresses).size).toBe(24);
    // Reachability across the bridge: every pod pings the next one.
    for (let i = 0; i < 24; i++) {
      const out = nsExec(pods[i]!.ns.name, ['ping', '-n', '-c', '1', '-W', '2', addresses[(i + 1) % 24]!]);
      expect(out).toMatch(/1 received/);
    }
    const bridge = c.bridge as string;
    expect(fx.ports(bridge)).toHaveLength(24);

    const dels = await Promise.all(
      pods.map((p) =>
        host.serve({ v: 1, plugin: 'berth-bridge', env: callEnv('DEL', p.id, p.ns.path), stdin }, never),
      ),
    );
    for (const d of dels) expect(d).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(fx.ports(bridge)).toHaveLength(0);
    expect(fx.leases(c.name as string).length + leaseFiles(c.name as string).length).toBe(0);
    expect(fx.runState()).toEqual([]);
    expect(fx.nftList('inet')).not.toMatch(/198\.18\.180\./);
    expect(metrics.render([])).toMatch(/berthd_plugin_calls_total\{plugin="berth-bridge",command="ADD"\} 24/);
  });
});

function leaseFiles(network: string): string[] {
  try {
    return readdirSync(join(ipamDir, network)).filter((f) => /^\d/.test(f));
  } catch {
    return [];
  }
}

describe('metrics of served calls', () => {
  test('a CNI_COMMAND no spec knows is counted as command="other", not as a series of its own', async () => {
    const stdin = JSON.stringify(conf('198.18.181.0/24'));
    for (const junk of ['JUNK1', 'JUNK2', 'add']) {
      const out = await host.serve(
        { v: 1, plugin: 'berth-bridge', env: callEnv(junk, `${fx.prefix}-junk`, '/nonexistent'), stdin },
        never,
      );
      expect(out.code).not.toBe(0);
    }
    const text = metrics.render([]);
    expect(text).toMatch(/berthd_plugin_calls_total\{plugin="berth-bridge",command="other"\} 3/);
    expect(text).not.toMatch(/JUNK|command="add"/);
  });
});

describe('the reply of an ADD', () => {
  /**
   * berthd's server and a PluginHost in this process, berth-ipam's handlers replaced by `handlers`,
   * listening on a socket of the test's run dir; `close` stops it.
   */
  async function stubServer(
    handlers: Record<string, unknown>,
    tag: string,
    extra: { replyDeadlineMs?: number } = {},
  ): Promise<{ sock: string; close: () => Promise<void> }> {
    const quiet = createLogger({ format: 'text', level: 'error', write: () => undefined });
    const stubHost = new PluginHost({
      service,
      log: quiet,
      metrics: new Metrics(),
      runDir: fx.runDir,
      nftTable: fx.nftTable,
      bootIdFile: '/proc/sys/kernel/random/boot_id',
      deadlineMs: 60_000,
    });
    (stubHost as unknown as { tables: Record<string, { handlers: unknown }> }).tables[
      'berth-ipam'
    ]!.handlers = handlers;
    const server = new BerthServer({
      service,
      plugins: stubHost,
      log: quiet,
      metrics: new Metrics(),
      socketPath: 'test',
      ...extra,
    });
    const sock = join(fx.runDir, `${tag}.sock`);
    await new Promise<void>((r) => server.http.listen(sock, () => r()));
    return {
      sock,
      close: async () => {
        await new Promise((r) => server.http.close(r));
        rmSync(sock, { force: true });
      },
    };
  }

  test('an ADD whose reply cannot be written (the caller left as it ended) is deleted before the next call', async () => {
    // berthd's server and PluginHost in this process; berth-ipam's handlers are stubs. The ADD's last step
    // holds the event loop, and the caller leaves meanwhile: its close is seen only when the reply is written.
    const calls: string[] = [];
    const stub = await stubServer(
      {
        add: async (req: { madeNew?(): void }) => {
          calls.push('ADD');
          req.madeNew?.(); // a new attachment: only such an ADD is deleted again
          await new Promise((r) => setTimeout(r, 50));
          const until = Date.now() + 300;
          while (Date.now() < until); // the last, synchronous step
          return { cniVersion: '1.0.0', ips: [{ address: '198.18.183.2/24' }] };
        },
        del: () => {
          calls.push('DEL');
          return Promise.resolve();
        },
      },
      'reply-test',
    );
    const sock = stub.sock;
    try {
      const body = JSON.stringify({
        v: 1,
        plugin: 'berth-ipam',
        env: { ...callEnv('ADD', `${fx.prefix}-reply`, '/nonexistent'), CNI_PATH: '/nonexistent' },
        stdin: JSON.stringify({ cniVersion: '1.0.0', name: `${fx.prefix}-reply`, type: 'berth-ipam' }),
      });
      // The caller is another process (as the shim is): it sends the call and exits 150 ms later, while
      // this process is held by the ADD's last step.
      const request =
        `POST /v1/cni HTTP/1.1\r\nHost: berthd\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `Connection: close\r\n\r\n${body}`;
      const caller = spawn(
        process.execPath,
        [
          '-e',
          `const c = require('net').connect(${JSON.stringify(sock)}, () => { c.write(${JSON.stringify(request)}); setTimeout(() => process.exit(0), 150); });`,
        ],
        { stdio: 'ignore' },
      );
      const exited = new Promise((r) => caller.once('exit', r));
      await vi.waitFor(() => expect(calls).toEqual(['ADD', 'DEL']), { timeout: 5000, interval: 20 });
      await exited;
    } finally {
      await stub.close();
    }
  });
  test("a caller that stops reading its reply holds its pod's queue only until the reply deadline", async () => {
    const calls: string[] = [];
    const stub = await stubServer(
      {
        // A reply far larger than the socket's buffers (2 MB of DNS servers).
        add: (req: { madeNew?(): void }) => {
          calls.push('ADD');
          req.madeNew?.();
          const nameservers = Array.from({ length: 150_000 }, () => '198.18.0.1');
          return Promise.resolve({
            cniVersion: '1.0.0',
            ips: [{ address: '198.18.186.2/24' }],
            dns: { nameservers },
          });
        },
        del: () => {
          calls.push('DEL');
          return Promise.resolve();
        },
      },
      'unread-test',
      { replyDeadlineMs: 500 },
    );
    const sock = stub.sock;
    const env = { ...callEnv('ADD', `${fx.prefix}-unread`, '/nonexistent'), CNI_PATH: '/nonexistent' };
    const stdin = JSON.stringify({ cniVersion: '1.0.0', name: `${fx.prefix}-unread`, type: 'berth-ipam' });
    const body = JSON.stringify({ v: 1, plugin: 'berth-ipam', env, stdin });
    const reader = net.connect(sock, () =>
      reader.write(
        `POST /v1/cni HTTP/1.1\r\nHost: berthd\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      ),
    );
    reader.pause(); // never reads
    reader.on('error', () => undefined);
    try {
      await vi.waitFor(() => expect(calls).toEqual(['ADD']), { timeout: 5000, interval: 20 });
      // The pod's DEL, queued behind the ADD, is served once the ADD's reply is given up (and the ADD undone).
      const del = await postCni(sock, { plugin: 'berth-ipam', env: { ...env, CNI_COMMAND: 'DEL' }, stdin });
      expect(del.code, del.stdout).toBe(0);
      expect(calls).toEqual(['ADD', 'DEL', 'DEL']);
    } finally {
      reader.destroy();
      await stub.close();
    }
  });
});

describe('a real berthd on /v1/cni', () => {
  let d: TestDaemon;
  beforeAll(async () => {
    d = await startDaemon({ tag: 'w', runDir: fx.runDir, nftTable: fx.nftTable, dataDir: ipamDir });
  });
  afterAll(async () => {
    await d.stop();
  });

  test('refuses, having done nothing, what it must not serve: 421, 400', async () => {
    const base = { env: callEnv('ADD', 'x', '/run/netns/none'), stdin: '{}' };
    expect((await postCni(d.socket, { ...base, plugin: 'bridge' })).status).toBe(421);
    for (const env of [
      { BERTH_RUN_DIR: '/tmp/elsewhere' },
      { BERTH_NFT_TABLE: 'other' },
      { BERTH_TEST_FAULT: 'after-veth' },
      { BERTH_BOOT_ID_FILE: '/tmp/boot' },
    ]) {
      const r = await postCni(d.socket, { ...base, plugin: 'berth-bridge', env: { ...base.env, ...env } });
      expect(r.status, JSON.stringify(env)).toBe(421);
    }
    const noRunDir = { ...base.env } as Record<string, string>;
    delete noRunDir.BERTH_RUN_DIR; // the default /run/berth is not this daemon's run dir either
    expect((await postCni(d.socket, { ...base, plugin: 'berth-bridge', env: noRunDir })).status).toBe(421);
    const bad = await postCni(d.socket, { plugin: 'berth-bridge', env: { A: 1 } as never, stdin: '' });
    expect(bad.status).toBe(400);
  });

  test('answers byte for byte what the standalone program prints, errors included', async () => {
    const bridge = join(REPO, 'bin', 'berth-bridge');
    // A namespace that exists (berthd leaves one it cannot see to the standalone program: 421, below).
    const ns = fx.netns();
    const cases: { env: Record<string, string>; stdin: string }[] = [
      { env: { ...fx.env(), CNI_COMMAND: 'VERSION' }, stdin: '' },
      { env: { ...fx.env(), CNI_COMMAND: 'BOGUS' }, stdin: '{}' },
      { env: { ...fx.env() }, stdin: '{}' },
      { env: callEnv('ADD', 'c1', ns.path), stdin: '{not json' },
      {
        env: callEnv('ADD', 'c1', ns.path),
        stdin: JSON.stringify({ ...conf('198.18.181.0/24'), cniVersion: '9.9.9' }),
      },
      { env: { ...callEnv('ADD', '', ''), CNI_PATH }, stdin: JSON.stringify(conf('198.18.181.0/24')) },
      { env: callEnv('DEL', 'c-none', ''), stdin: JSON.stringify(conf('198.18.181.0/24')) },
    ];
    for (const c of cases) {
      const warm = await postCni(d.socket, { plugin: 'berth-bridge', ...c });
      expect(warm.status).toBe(200);
      const cold = await runStandalone(bridge, c.env, c.stdin);
      expect({ code: warm.code, stdout: warm.stdout, stderr: warm.stderr }).toEqual(cold);
    }
    const unseen = await postCni(d.socket, {
      plugin: 'berth-bridge',
      env: callEnv('ADD', 'c1', '/run/netns/none'),
      stdin: JSON.stringify(conf('198.18.181.0/24')),
    });
    expect(unseen.status).toBe(421);
  });

  test("a full pool: berth-ipam's in-process error reaches the caller as the executable's does", async () => {
    const full = JSON.stringify(conf('198.18.182.0/30')); // the gateway and one pod
    const first = { plugin: 'berth-bridge', env: callEnv('ADD', 'c-full1', fx.netns().path), stdin: full };
    expect((await postCni(d.socket, first)).code).toBe(0);
    const env = callEnv('ADD', 'c-full2', fx.netns().path);
    const warm = await postCni(d.socket, { plugin: 'berth-bridge', env, stdin: full });
    const cold = await runStandalone(join(REPO, 'bin', 'berth-bridge'), env, full);
    expect(warm.stdout).toMatch(/no IP addresses available/);
    expect({ code: warm.code, stdout: warm.stdout }).toEqual({ code: cold.code, stdout: cold.stdout });
    // berth-ipam's report (with its cause's stack) once, then berth-bridge's line: frames differ by mode.
    const lines = (stderr: string): string[] => stderr.split('\n').filter((l) => !l.startsWith('    at '));
    expect(lines(warm.stderr)).toEqual(lines(cold.stderr));
    const del = await postCni(d.socket, { ...first, env: { ...first.env, CNI_COMMAND: 'DEL' } });
    expect(del.code, del.stdout).toBe(0);
  });

  /**
   * Posts `call` while another process holds `lockFile`: berthd reads the whole call, then waits in it, and
   * the caller leaves 300 ms later (in its middle, not before berthd has it); the lock goes `holdMs` after.
   */
  async function leaveDuring(
    lockFile: string,
    call: { plugin: string; env: Record<string, string>; stdin: string },
    holdMs = 0,
  ): Promise<void> {
    const holder = await holdFlock(lockFile);
    try {
      const reply = postCni(d.socket, call, {
        onRequestSent: (req) => setTimeout(() => req.destroy(), 300),
      }).catch((e: unknown) => e);
      expect(await reply).toBeInstanceOf(Error);
      if (holdMs > 0) await new Promise((r) => setTimeout(r, holdMs));
    } finally {
      await holder.release();
    }
  }

  test('a caller that disconnects in the middle of an ADD leaves nothing behind once berthd is done', async () => {
    const c = conf('198.18.182.0/24');
    const ns = fx.netns();
    const id = `${fx.prefix}gone`;
    // The network's lock held by another process: berthd reads the whole call, then waits in the ADD, so the
    // caller surely leaves in its middle (not before berthd has the request).
    mkdirSync(join(fx.runDir, 'bridge'), { recursive: true });
    await leaveDuring(networkLockFile(fx.runDir, c.name as string), {
      plugin: 'berth-bridge',
      env: callEnv('ADD', id, ns.path),
      stdin: JSON.stringify(c),
    });
    // berthd finishes the ADD, then deletes it, in the attachment's order.
    const deadline = Date.now() + 20_000;
    while (!/caller left before the ADD reply/.test(d.log()) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    expect(d.log()).toMatch(/caller left before the ADD reply/);
    // A CHECK-free way to wait until the attachment's queue is empty: a DEL queued after it.
    await postCni(d.socket, {
      plugin: 'berth-bridge',
      env: callEnv('DEL', `${id}x`, ''),
      stdin: JSON.stringify(c),
    });
    await new Promise((r) => setTimeout(r, 300));
    expect(fx.ports(c.bridge as string)).toHaveLength(0);
    expect(trySh('ip', ['-n', ns.name, 'link', 'show', 'eth0'])).toBeUndefined();
    expect(leaseFiles(c.name as string)).toEqual([]);
    expect(fx.runState()).toEqual([]);
    expect(fx.nftList('inet')).not.toMatch(/198\.18\.182\./);
  });

  test('an ADD over a stale attachment record (its veth gone) whose caller leaves is deleted again too', async () => {
    const c = conf('198.18.187.0/24');
    const ns = fx.netns();
    const id = `${fx.prefix}stale`;
    // What a DEL cut short (or berthd killed after the record) leaves: the record, no veth, no lease.
    registerAttachment(fx.runDir, c.name as string, attachmentTag(id, 'eth0'), {
      masquerade: true,
      spoofCheck: false,
    });
    const logFrom = d.log().length;
    await leaveDuring(networkLockFile(fx.runDir, c.name as string), {
      plugin: 'berth-bridge',
      env: callEnv('ADD', id, ns.path),
      stdin: JSON.stringify(c),
    });
    await settled(c, id);
    expect(d.log().slice(logFrom)).toMatch(/caller left before the ADD reply/);
    expect(trySh('ip', ['-n', ns.name, 'link', 'show', 'eth0'])).toBeUndefined();
    expect(leaseFiles(c.name as string)).toEqual([]);
    expect(fx.ports(c.bridge as string)).toHaveLength(0);
  });

  /**
   * Waits until every call of this attachment queued so far (and an undo it may have run) is done: a call
   * of the same attachment queues behind them. berth-ipam's CHECK changes nothing, whatever it answers.
   */
  async function settled(c: Record<string, unknown>, id: string): Promise<void> {
    await postCni(d.socket, {
      plugin: 'berth-ipam',
      env: callEnv('CHECK', id, '/run/netns/none'),
      stdin: JSON.stringify(c),
    });
  }

  test('a repeated ADD whose caller leaves does not take down the pod the first ADD made', async () => {
    const c = conf('198.18.184.0/24');
    const ns = fx.netns();
    const id = `${fx.prefix}rep`;
    const call = { plugin: 'berth-bridge', env: callEnv('ADD', id, ns.path), stdin: JSON.stringify(c) };
    const first = await postCni(d.socket, call);
    expect(first.code, first.stdout).toBe(0);
    const logFrom = d.log().length;
    const ip = (JSON.parse(first.stdout) as { ips: { address: string }[] }).ips[0]!.address;
    // The pod's IPAM ADD repeated (its answer is the lease the pod has), held on the lease dir's flock while
    // its caller gives up: the lease must stay the pod's.
    await leaveDuring(join(ipamDir, c.name as string, 'lock'), { ...call, plugin: 'berth-ipam' }, 300);
    await settled(c, id);
    expect(d.log().slice(logFrom)).not.toMatch(/caller left before the ADD reply/);
    expect(leaseFiles(c.name as string)).toEqual([ip.split('/')[0]]);
    expect(
      ipJson<{ addr_info: { local: string; prefixlen: number }[] }[]>([
        '-n',
        ns.name,
        'addr',
        'show',
        'dev',
        'eth0',
      ]).flatMap((l) => l.addr_info.map((a) => `${a.local}/${a.prefixlen}`)),
    ).toContain(ip);
    const del = await postCni(d.socket, { ...call, env: callEnv('DEL', id, ns.path) });
    expect(del.code, del.stdout).toBe(0);
    expect(leaseFiles(c.name as string)).toEqual([]);
  });

  test("an ADD whose caller left while it waited behind the same attachment's ADD is not run", async () => {
    const c = conf('198.18.185.0/24');
    const id = `${fx.prefix}dup`;
    // berth-ipam never enters the namespace: any path will do.
    const call = {
      plugin: 'berth-ipam',
      env: callEnv('ADD', id, '/run/netns/none'),
      stdin: JSON.stringify(c),
    };
    mkdirSync(join(ipamDir, c.name as string), { recursive: true });
    const holder = await holdFlock(join(ipamDir, c.name as string, 'lock'));
    let first: Promise<WarmReply>;
    try {
      first = postCni(d.socket, call); // waits for the lock, its caller stays
      await new Promise((r) => setTimeout(r, 100));
      const second = postCni(d.socket, call, {
        onRequestSent: (req) => setTimeout(() => req.destroy(), 300),
      });
      const got = await second.catch((e: unknown) => e);
      expect(got, JSON.stringify(got)).toBeInstanceOf(Error);
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      await holder.release();
    }
    const r = await first;
    expect(r.code, r.stdout).toBe(0);
    const ip = (JSON.parse(r.stdout) as { ips: { address: string }[] }).ips[0]!.address;
    await settled(c, id);
    expect(leaseFiles(c.name as string)).toEqual([ip.split('/')[0]]);
    expect(d.log()).toMatch(/caller left before its ADD could run; not run/);
    const del = await postCni(d.socket, { ...call, env: callEnv('DEL', id, '/run/netns/none') });
    expect(del.code, del.stdout).toBe(0);
    expect(leaseFiles(c.name as string)).toEqual([]);
  });
});
