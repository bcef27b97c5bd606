// The plugin's client against scripted servers on a temp socket: what it accepts as a reply, and that
// every transport failure is "no daemon" (the plugin then works on the files), never a CNI failure.
import { chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { parseRequest } from '../../src/cni-spec/request';
import { DaemonUnavailable, callDaemon, daemonSocketOf, forwardToDaemon } from '../../src/ipam/daemon-client';

let dir: string;
let socket: string;
let server: net.Server | undefined;
let received: string[];

/** A server that reads one request and answers with `reply` (raw bytes), or does `behave` instead. */
async function scripted(reply: string | ((c: net.Socket) => void)): Promise<void> {
  server = net.createServer((c) => {
    let buf = '';
    c.on('data', (d: Buffer) => {
      buf += d.toString();
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      const len = Number(/content-length: (\d+)/i.exec(buf.slice(0, end))?.[1] ?? '0');
      if (buf.length < end + 4 + len) return;
      received.push(buf);
      if (typeof reply === 'string') c.end(reply);
      else reply(c);
    });
  });
  await new Promise<void>((resolve) => server!.listen(socket, resolve));
}

function request(command: 'ADD' | 'DEL', daemonSocket: unknown): ReturnType<typeof parseRequest> {
  return parseRequest({
    env: {
      CNI_COMMAND: command,
      CNI_CONTAINERID: 'c1',
      CNI_NETNS: '/run/netns/x',
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      CNI_ARGS: 'K8S_POD_NAME=p',
    },
    stdin: JSON.stringify({
      cniVersion: '1.0.0',
      name: 'n1',
      type: 'berth-ipam',
      ipam: { type: 'berth-ipam', daemonSocket, ranges: [[{ subnet: '198.18.201.0/24' }]] },
    }),
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `btc${process.pid}-`));
  socket = join(dir, 's.sock');
  received = [];
});

afterEach(async () => {
  if (server !== undefined) await new Promise((r) => server!.close(r));
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe('callDaemon', () => {
  test('sends one HTTP/1.1 request with the JSON body and reads a Content-Length reply', async () => {
    await scripted(
      'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}',
    );
    const r = await callDaemon({ socket, method: 'POST', path: '/v1/release', body: { a: 1 } });
    expect(r).toEqual({ status: 200, body: { ok: true } });
    expect(received[0]).toMatch(/^POST \/v1\/release HTTP\/1\.1\r\n/);
    expect(received[0]).toMatch(/\r\nContent-Length: 7\r\n\r\n\{"a":1\}$/);
  });

  test('reads a chunked reply', async () => {
    await scripted(
      'HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n6\r\n{"code\r\n10\r\n":3,"msg":"gone"\r\n1\r\n}\r\n0\r\n\r\n',
    );
    expect(await callDaemon({ socket, method: 'GET', path: '/v1/leases/x' })).toEqual({
      status: 404,
      body: { code: 3, msg: 'gone' },
    });
  });

  const failures: [string, string | ((c: net.Socket) => void)][] = [
    [
      'a reply cut short',
      'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n{"ok"',
    ],
    ['not HTTP', 'SSH-2.0-OpenSSH\r\n\r\n'],
    [
      'JSON promised, not delivered',
      'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\n\r\nabc',
    ],
    [
      'a daemon dying mid-reply',
      (c) => {
        c.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n');
        c.destroy();
      },
    ],
    ['a close without a byte', (c) => c.end()],
  ];
  for (const [name, behave] of failures) {
    test(`${name} → DaemonUnavailable`, async () => {
      await scripted(behave);
      await expect(callDaemon({ socket, method: 'GET', path: '/v1/health' })).rejects.toBeInstanceOf(
        DaemonUnavailable,
      );
    });
  }

  test('no socket, or a socket nobody listens on → DaemonUnavailable', async () => {
    await expect(callDaemon({ socket, method: 'GET', path: '/v1/health' })).rejects.toBeInstanceOf(
      DaemonUnavailable,
    );
  });

  test('a reply of more than 64 MiB → DaemonUnavailable, not read into memory', async () => {
    await scripted((c) => {
      c.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1099511627776\r\n\r\n');
      const chunk = Buffer.alloc(1 << 20, 0x20);
      const more = (): void => {
        while (!c.destroyed && c.write(chunk));
        if (!c.destroyed) c.once('drain', more);
      };
      c.on('error', () => undefined);
      more();
    });
    await expect(callDaemon({ socket, method: 'GET', path: '/v1/health' })).rejects.toThrow(
      /a reply of more than 67108864 bytes/,
    );
  });

  test.runIf(process.getuid?.() === 0)(
    "a socket file another user owns is not berthd's: DaemonUnavailable before anything is sent",
    async () => {
      await scripted('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}');
      chownSync(socket, 65534, 65534);
      const err = await callDaemon({ socket, method: 'GET', path: '/v1/health' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DaemonUnavailable);
      expect((err as DaemonUnavailable).maybeRan).toBe(false);
      expect((err as Error).message).toMatch(/the socket is not root's \(uid 65534\)/);
      expect(received).toEqual([]);
    },
  );

  test('a daemon that never answers → DaemonUnavailable after the timeout', async () => {
    await scripted(() => undefined);
    await expect(callDaemon({ socket, method: 'GET', path: '/v1/health', timeoutMs: 200 })).rejects.toThrow(
      /no reply in time/,
    );
  });
});

describe('forwardToDaemon (the plugin side)', () => {
  test('daemonSocket: explicit path, off with false or "", the standard path when absent, else code 7', () => {
    expect(daemonSocketOf({ ipam: { daemonSocket: '/x/y.sock' } })).toBe('/x/y.sock');
    expect(daemonSocketOf({ ipam: { daemonSocket: false } })).toBeUndefined();
    expect(daemonSocketOf({ ipam: { daemonSocket: '' } })).toBeUndefined();
    expect(daemonSocketOf({ ipam: {} })).toBe('/run/berth/berthd.sock');
    expect(() => daemonSocketOf({ ipam: { daemonSocket: 'relative.sock' } })).toThrow(CniError);
  });

  test('a config nested deeper than berthd parses is not sent: the plugin works on the files', async () => {
    await scripted('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}');
    const deep = request('ADD', socket);
    deep.stdin = deep.stdin.replace(/}$/, `,"x":${'['.repeat(65)}${']'.repeat(65)}}`);
    expect(await forwardToDaemon(deep, () => undefined)).toBeUndefined();
    expect(received).toEqual([]);
  });

  test('forwards {env, config} and returns the result of an ADD', async () => {
    const result = '{"cniVersion":"1.1.0","ips":[{"address":"198.18.201.2/24","gateway":"198.18.201.1"}]}';
    await scripted(
      `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${result.length}\r\n\r\n${result}`,
    );
    const warnings: string[] = [];
    const r = await forwardToDaemon(request('ADD', socket), (m) => warnings.push(m));
    expect(r).toEqual({ result: JSON.parse(result) });
    expect(warnings).toEqual([]);
    const body = JSON.parse(received[0]!.slice(received[0]!.indexOf('\r\n\r\n') + 4)) as {
      env: Record<string, string>;
      config: { name: string };
    };
    expect(received[0]).toMatch(/^POST \/v1\/allocate /);
    expect(body.env).toEqual({
      CNI_CONTAINERID: 'c1',
      CNI_NETNS: '/run/netns/x',
      CNI_IFNAME: 'eth0',
      CNI_ARGS: 'K8S_POD_NAME=p',
      CNI_PATH: '/opt/cni/bin',
    });
    expect(body.config.name).toBe('n1');
  });

  test("the daemon's CNI error is raised as is", async () => {
    const err = '{"code":11,"msg":"busy","details":"try later"}';
    await scripted(
      `HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: ${err.length}\r\n\r\n${err}`,
    );
    const e = await forwardToDaemon(request('DEL', socket), () => undefined).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CniError);
    expect((e as CniError).toJSON()).toEqual({ code: 11, msg: 'busy', details: 'try later' });
  });

  test('an ADD the daemon read and never answered: code 11, never run again on the files', async () => {
    // berthd may have run it: seeing its caller gone it undoes it, freeing the address the files' ADD would
    // hand out as well (one address, two pods).
    await scripted((c) => c.destroy());
    const warnings: string[] = [];
    const err = await forwardToDaemon(request('ADD', socket), (m) => warnings.push(m)).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(ErrorCode.TryAgainLater);
    expect((err as CniError).message).toMatch(/after the ADD was sent: it may have run there/);
    expect(warnings).toEqual([]);
    expect(received).toHaveLength(1);
  });

  test('an ADD the daemon refused unread (reset): the files', async () => {
    server = net.createServer({ pauseOnConnect: true }, (c) => {
      c.on('error', () => undefined);
      setTimeout(() => c.destroy(), 100); // the request stays unread in the socket
    });
    await new Promise<void>((resolve) => server!.listen(socket, resolve));
    const warnings: string[] = [];
    expect(await forwardToDaemon(request('ADD', socket), (m) => warnings.push(m))).toBeUndefined();
    expect(warnings[0]).toMatch(/ECONNRESET; working on the lease files directly/);
  });

  test('no daemon: undefined (files), with a warning only when a socket was there but failed', async () => {
    const warnings: string[] = [];
    expect(await forwardToDaemon(request('DEL', socket), (m) => warnings.push(m))).toBeUndefined();
    expect(warnings).toEqual([]);
    writeFileSync(join(dir, 'plain-file'), '');
    expect(
      await forwardToDaemon(request('DEL', join(dir, 'plain-file')), (m) => warnings.push(m)),
    ).toBeUndefined();
    await scripted((c) => c.destroy());
    expect(await forwardToDaemon(request('DEL', socket), (m) => warnings.push(m))).toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/working on the lease files directly/);
    expect(await forwardToDaemon(request('DEL', false), (m) => warnings.push(m))).toBeUndefined();
  });
});
