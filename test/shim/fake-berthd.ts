// A stand-in for berthd's `POST /v1/cni` (the wire contract of README "Warm path"), for testing the shim
// alone: in `standalone` mode it runs the standalone plugin program with the forwarded environment and
// stdin and replies with its output, so whatever the shim prints must equal the program's own output.
// The other modes misbehave on purpose: a status that means "did nothing", a connection closed after the
// request (read or, 'reset-unread', not), a reply that never comes, a garbled or cut-short one, a big one.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { type Server, type Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type FakeMode =
  | { kind: 'standalone' }
  | { kind: 'status'; status: number }
  | { kind: 'close' }
  | { kind: 'silent' }
  | { kind: 'garbled' }
  | { kind: 'cut-short' }
  | { kind: 'no-exit-code' }
  | { kind: 'reset-unread' }
  | { kind: 'big'; stdoutBytes: number }
  | { kind: 'raw'; reply: string };

export interface ForwardedCall {
  v: number;
  plugin: string;
  env: Record<string, string>;
  stdin: string;
}

export interface ProgramRun {
  stdout: Buffer;
  stderr: Buffer;
  code: number | null;
}

/** Runs `file` (with `args`) with exactly `env` and `stdin`, collecting its output. */
export function runProgram(
  file: string,
  args: readonly string[],
  env: Record<string, string>,
  stdin: string | Buffer,
): Promise<ProgramRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err), code: code }),
    );
    child.stdin.on('error', () => {}); // a program that does not read stdin may exit first
    child.stdin.end(stdin);
  });
}

export class FakeBerthd {
  readonly dir = mkdtempSync(join(tmpdir(), 'berth-fake-'));
  readonly socket = join(this.dir, 'berthd.sock');
  readonly calls: ForwardedCall[] = [];
  mode: FakeMode = { kind: 'standalone' };
  private readonly server: Server;
  private readonly open = new Set<Socket>();

  /** `standalone(plugin)`: the command line that runs the plugin program (e.g. node bin/berth-bridge). */
  constructor(private readonly standalone: (plugin: string) => [string, ...string[]]) {
    // Paused on connect, so that 'reset-unread' can close a connection whose request it never read.
    this.server = createServer({ pauseOnConnect: true }, (sock) => this.serve(sock));
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.socket, resolve));
  }

  async close(): Promise<void> {
    for (const s of this.open) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private serve(sock: Socket): void {
    this.open.add(sock);
    sock.on('close', () => this.open.delete(sock));
    sock.on('error', () => {});
    if (this.mode.kind === 'reset-unread') {
      // The request stays in the socket, unread, when it closes: the kernel resets the connection.
      setTimeout(() => sock.destroy(), 200);
      return;
    }
    let data = Buffer.alloc(0);
    sock.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = data.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
      if (data.length < end + 4 + length) return;
      sock.removeAllListeners('data');
      if (!head.startsWith('POST /v1/cni HTTP/1.1\r\n')) {
        sock.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      // As berthd decodes it: the body as UTF-8 as a whole, then JSON.
      const call = JSON.parse(data.subarray(end + 4, end + 4 + length).toString('utf8')) as ForwardedCall;
      this.calls.push(call);
      void this.answer(sock, call);
    });
    sock.resume();
  }

  private async answer(sock: Socket, call: ForwardedCall): Promise<void> {
    const mode = this.mode;
    switch (mode.kind) {
      case 'status':
        sock.end(`HTTP/1.1 ${mode.status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
        return;
      case 'close':
        sock.destroy();
        return;
      case 'silent':
        return;
      case 'garbled':
        sock.end('SMTP 220 hello\r\n\r\n');
        return;
      case 'cut-short':
        sock.end(
          'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nBerth-Exit-Code: 0\r\nBerth-Stdout-Length: 50\r\n\r\n{"cniVe',
        );
        return;
      case 'no-exit-code':
        sock.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nBerth-Stdout-Length: 3\r\n\r\n{}\n');
        return;
      case 'reset-unread':
        return;
      case 'raw':
        sock.end(mode.reply);
        return;
      case 'big': {
        const body = Buffer.alloc(mode.stdoutBytes, 'x');
        sock.end(
          Buffer.concat([
            Buffer.from(
              `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nBerth-Exit-Code: 0\r\n` +
                `Berth-Stdout-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
            ),
            body,
          ]),
        );
        return;
      }
      case 'standalone': {
        const [file, ...args] = this.standalone(call.plugin);
        const run = await runProgram(file, args, call.env, call.stdin);
        const body = Buffer.concat([run.stdout, run.stderr]);
        sock.write(
          `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nBerth-Exit-Code: ${run.code ?? 1}\r\n` +
            `Berth-Stdout-Length: ${run.stdout.length}\r\nConnection: close\r\n\r\n`,
        );
        sock.end(body);
        return;
      }
    }
  }
}
