// berthd's start and stop as a DaemonSet lives them: the previous pod's berthd still draining while the
// next one starts on the same socket, a metrics port still taken, kubelet's health probe. Real berthd
// processes (dist/) in this test's network namespace (its loopback ports are private).
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { holdFlock } from '../netlink/flock-holder';
import { REPO } from './warm-client';

const started: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(() => {
  for (const c of started.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(tag: string): string {
  const d = mkdtempSync(join(tmpdir(), `bt${process.pid}-lc${tag}-`));
  dirs.push(d);
  return d;
}

interface Berthd {
  child: ChildProcess;
  log: () => string;
  exited: Promise<number | null>;
}

function berthd(args: string[]): Berthd {
  const child = spawn(process.execPath, [join(REPO, 'bin', 'berth'), 'daemon', '--no-plugins', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  started.push(child);
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, log: () => log, exited };
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function get(
  url: { socketPath: string } | { port: number },
  path: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ ...url, ...('port' in url ? { host: '127.0.0.1' } : {}), path }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

describe('berthd start and stop', () => {
  it("a draining berthd leaves the socket of the one started after it; health says when the socket is not berthd's", async () => {
    const d = tempDir('s');
    const socket = join(d, 'berthd.sock');
    const data = join(d, 'data');
    mkdirSync(join(data, 'net1'), { recursive: true });
    const a = berthd(['--socket', socket, '--data-dir', data, '--state-dir', join(d, 'a')]);
    await until('berthd A listening', () => /listening/.test(a.log()));
    // A request A keeps in flight: an ADD waiting for the network's lock, held by another process.
    const holder = await holdFlock(join(data, 'net1', 'lock'));
    const conf = JSON.stringify({
      cniVersion: '1.0.0',
      name: 'net1',
      type: 'bridge',
      ipam: {
        type: 'berth-ipam',
        dataDir: data,
        daemonSocket: socket,
        ranges: [[{ subnet: '198.18.156.0/24' }]],
      },
    });
    const ipam = spawn(join(REPO, 'bin', 'berth-ipam'), [], {
      env: {
        PATH: process.env.PATH ?? '',
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: 'c1',
        CNI_NETNS: '/x',
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/usr/lib/cni',
      },
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    started.push(ipam);
    ipam.stdin.end(conf);
    // berthd has the request once it made the network's index directory (before it waits for the lock).
    await until('the ADD in flight', () => existsSync(join(data, 'net1', '.berth')));
    await new Promise((r) => setTimeout(r, 200));
    a.child.kill('SIGTERM');
    await until('A no longer listening', () => !existsSync(socket));
    const b = berthd([
      '--socket',
      socket,
      '--data-dir',
      join(d, 'data-b'),
      '--state-dir',
      join(d, 'b'),
      '--metrics-address',
      '127.0.0.1:19377',
    ]);
    await until('berthd B listening', () => /INFO listening/.test(b.log()));
    const ino = statSync(socket).ino;
    await holder.release();
    expect(await a.exited).toBe(0);
    expect(existsSync(socket) && statSync(socket).ino === ino).toBe(true);
    expect((await get({ socketPath: socket }, '/v1/health')).status).toBe(200);
    expect((await get({ port: 19377 }, '/v1/health')).status).toBe(200);
    // The socket removed by someone else: the probe fails, so kubelet restarts berthd and the socket is back.
    rmSync(socket);
    const h = await get({ port: 19377 }, '/v1/health');
    expect(h.status).toBe(503);
    expect(h.body).toMatch(/no longer this berthd's/);
    b.child.kill('SIGTERM');
    expect(await b.exited).toBe(0);
  });

  it('the metrics port holds at most 64 connections, each briefly, and closes after anything but a GET', async () => {
    const d = tempDir('m');
    const socket = join(d, 'berthd.sock');
    const b = berthd([
      '--socket',
      socket,
      '--data-dir',
      join(d, 'data'),
      '--metrics-address',
      '127.0.0.1:19379',
    ]);
    await until('berthd listening', () => /INFO listening/.test(b.log()));
    // 100 connections that say nothing.
    const closedAt: number[] = [];
    const t0 = Date.now();
    const idle = Array.from({ length: 100 }, () => {
      const c = net.connect(19379, '127.0.0.1');
      c.on('error', () => undefined);
      c.on('close', () => closedAt.push(Date.now() - t0));
      return c;
    });
    try {
      await until('the connections over the cap dropped', () => closedAt.length >= 36, 3_000);
      expect(closedAt.length).toBeLessThan(100);
      await until('the idle ones timed out', () => closedAt.length === 100, 10_000);
      expect(Math.max(...closedAt)).toBeLessThan(9_000);
      expect((await get({ port: 19379 }, '/v1/health')).status).toBe(200);
      // A POST announcing a gigabyte: answered 404 at once and the connection closed, its body never read.
      const post = await new Promise<string>((resolve, reject) => {
        const c = net.connect(19379, '127.0.0.1', () =>
          c.write('POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n'),
        );
        let got = '';
        c.setEncoding('utf8').on('data', (x: string) => (got += x));
        c.on('close', () => resolve(got));
        c.on('error', reject);
        setTimeout(() => reject(new Error(`still open: ${got}`)), 3_000);
      });
      expect(post).toMatch(/^HTTP\/1\.1 404/);
      expect(post.toLowerCase()).toMatch(/connection: close/);
    } finally {
      for (const c of idle) c.destroy();
      b.child.kill('SIGTERM');
      expect(await b.exited).toBe(0);
    }
  });

  it('a metrics port still taken stops berthd at once (exit 1), without leaving its socket', async () => {
    const d = tempDir('p');
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(19378, '127.0.0.1', () => r()));
    try {
      const c = berthd([
        '--socket',
        join(d, 'berthd.sock'),
        '--data-dir',
        join(d, 'data'),
        '--metrics-address',
        '127.0.0.1:19378',
      ]);
      const code = await Promise.race([
        c.exited,
        new Promise((r) => setTimeout(() => r('still running'), 10_000)),
      ]);
      expect(code, c.log()).toBe(1);
      expect(c.log()).toMatch(/EADDRINUSE/);
      expect(existsSync(join(d, 'berthd.sock'))).toBe(false);
    } finally {
      busy.close();
    }
  });

  it('a malformed --metrics-address is refused before the start (exit 2)', async () => {
    const d = tempDir('m');
    const c = berthd(['--socket', join(d, 'berthd.sock'), '--metrics-address', '9377']);
    expect(await c.exited).toBe(2);
    expect(c.log()).toMatch(/--metrics-address wants HOST:PORT/);
  });
});
