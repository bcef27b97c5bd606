// A tiny client of berthd's /v1/cni for tests, doing what the C shim does: forward the whole environment
// and stdin, write back stdout/stderr/exit code from the reply, or run the standalone program when the
// daemon is absent or says it does not serve the call.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';

export const REPO = resolve(__dirname, '..', '..');

export interface WarmReply {
  /** HTTP status; 200 means the daemon ran the call. */
  status: number;
  code: number;
  stdout: string;
  stderr: string;
}

/** POST /v1/cni; resolves with the HTTP status and, for 200, the call's output. */
export function postCni(
  socket: string,
  call: { plugin: string; env: Record<string, string>; stdin: string },
  opts: { onRequestSent?: (req: http.ClientRequest) => void } = {},
): Promise<WarmReply> {
  const body = JSON.stringify({ v: 1, ...call });
  return new Promise((resolvePromise, reject) => {
    const req = http.request(
      {
        socketPath: socket,
        method: 'POST',
        path: '/v1/cni',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const all = Buffer.concat(chunks);
          const n = Number(res.headers['berth-stdout-length'] ?? all.length);
          resolvePromise({
            status: res.statusCode ?? 0,
            code: Number(res.headers['berth-exit-code'] ?? -1),
            stdout: all.subarray(0, n).toString('utf8'),
            stderr: all.subarray(n).toString('utf8'),
          });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
    opts.onRequestSent?.(req);
  });
}

/** Runs a plugin executable standalone. */
export function runStandalone(
  path: string,
  env: Record<string, string>,
  stdin: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(path, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code: code ?? -1, stdout, stderr }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin);
  });
}

/**
 * The shim's behaviour: warm when served, standalone otherwise (any non-200, or no daemon). `fallback` says
 * why a berth plugin's call ran standalone: berthd's status, or `unreachable` (no connection, or no reply).
 */
export async function runLikeShim(
  socket: string,
  path: string,
  env: Record<string, string>,
  stdin: string,
): Promise<{ code: number; stdout: string; stderr: string; warm: boolean; fallback?: string }> {
  const plugin = basename(path);
  let fallback: string | undefined;
  if (plugin === 'berth-bridge' || plugin === 'berth-ipam') {
    try {
      const r = await postCni(socket, { plugin, env, stdin });
      if (r.status === 200) return { code: r.code, stdout: r.stdout, stderr: r.stderr, warm: true };
      fallback = String(r.status);
    } catch {
      fallback = 'unreachable';
    }
  }
  return { ...(await runStandalone(path, env, stdin)), warm: false, ...(fallback ? { fallback } : {}) };
}

export interface TestDaemon {
  socket: string;
  dir: string;
  pid: number;
  child: ChildProcess;
  /** Log lines so far. */
  log(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** A real berthd (dist/) on a socket in a temp dir, serving plugin calls with the given run dir and table. */
export async function startDaemon(opts: {
  tag: string;
  runDir: string;
  nftTable: string;
  dataDir?: string;
  extraArgs?: string[];
  /** A command berthd runs under (it gets node and berthd's arguments after these), e.g. an unshare. */
  wrap?: string[];
}): Promise<TestDaemon> {
  const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-${opts.tag}-d-`));
  const socket = join(dir, 'berthd.sock');
  const args = [
    join(REPO, 'bin', 'berth'),
    'daemon',
    '--socket',
    socket,
    '--run-dir',
    opts.runDir,
    '--nft-table',
    opts.nftTable,
    '--log-level',
    'debug',
    // Its own data dir when the test names none: berthd reads its --data-dir at start (and keeps an index
    // there), which must never be the host's /var/lib/cni/networks.
    '--data-dir',
    opts.dataDir ?? join(dir, 'data'),
    ...(opts.extraArgs ?? []),
  ];
  const env = { ...process.env };
  delete env.BERTH_RUN_DIR;
  delete env.BERTH_NFT_TABLE;
  const [cmd, ...cmdArgs] = [...(opts.wrap ?? []), process.execPath, ...args];
  const child = spawn(cmd!, cmdArgs, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (let i = 0; !/listening/.test(log); i++) {
    if (i > 300 || child.exitCode !== null) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`berthd did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    socket,
    dir,
    pid: child.pid!,
    child,
    log: () => log,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
    },
  };
}
