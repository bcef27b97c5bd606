// A real berthd for root tests: started from dist/ as a child process on a socket in a temp dir, the built
// berth-ipam run as a runtime would, and readers of the lease files that are the truth.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { callDaemon } from '../../src/ipam/daemon-client';

export const REPO = join(__dirname, '../..');

/** The built code is what runs: a dist/ older than the daemon's sources would test something else. */
export function assertDistFresh(): void {
  const pairs: [string, string][] = [
    ['src/ipam/daemon-client.ts', 'dist/ipam/daemon-client.js'],
    ['src/ipam/plugin.ts', 'dist/ipam/plugin.js'],
  ];
  for (const dir of ['ipam/daemon', 'daemon']) {
    for (const f of readdirSync(join(REPO, 'src', dir))) {
      if (f.endsWith('.ts')) pairs.push([`src/${dir}/${f}`, `dist/${dir}/${f.replace(/\.ts$/, '.js')}`]);
    }
  }
  const stale = pairs.filter(
    ([s, d]) =>
      !existsSync(join(REPO, d)) || statSync(join(REPO, d)).mtimeMs < statSync(join(REPO, s)).mtimeMs,
  );
  if (stale.length > 0)
    throw new Error(`dist/ is older than ${stale.map(([s]) => s).join(', ')}: run "npm run build:ts" first`);
}

export interface Sandbox {
  dir: string;
  dataDir: string;
  socket: string;
  network: string;
}

export function sandbox(tag: string): Sandbox {
  const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-${tag}-`));
  return {
    dir,
    dataDir: join(dir, 'data'),
    socket: join(dir, 'run', 'berthd.sock'),
    network: `bt${process.pid}${tag}`,
  };
}

export function removeSandbox(s: Sandbox): void {
  rmSync(s.dir, { recursive: true, force: true });
}

export interface Daemon {
  child: ChildProcess;
  stderr: string[];
  exited: Promise<number | null>;
}

/** Starts `berth daemon` and resolves once /v1/health answers. */
export async function startDaemon(
  s: Sandbox,
  opts: { wrap?: string[]; extraArgs?: string[] } = {},
): Promise<Daemon> {
  const args = [
    join(REPO, 'bin', 'berth'),
    'daemon',
    '--socket',
    s.socket,
    '--data-dir',
    s.dataDir,
    '--log-format',
    'json',
    ...(opts.extraArgs ?? []),
  ];
  const cmd =
    opts.wrap === undefined ? [process.execPath, ...args] : [...opts.wrap, process.execPath, ...args];
  const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  child.stderr.on('data', (d: Buffer) => stderr.push(d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`berthd exited with ${child.exitCode}: ${stderr.join('')}`);
    try {
      const r = await callDaemon({ socket: s.socket, method: 'GET', path: '/v1/health', timeoutMs: 2000 });
      if (r.status === 200) return { child, stderr, exited };
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`berthd did not answer on ${s.socket}: ${stderr.join('')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Kills by PID (the test started it); SIGKILL when it is still alive. */
export async function stopDaemon(
  d: Daemon | undefined,
  signal: NodeJS.Signals = 'SIGKILL',
): Promise<number | null> {
  if (d === undefined) return null;
  if (d.child.exitCode === null && d.child.signalCode === null) process.kill(d.child.pid!, signal);
  return d.exited;
}

export function netConf(
  s: Sandbox,
  opts: { daemon: boolean; subnet?: string; cniVersion?: string },
): Record<string, unknown> {
  return {
    cniVersion: opts.cniVersion ?? '1.0.0',
    name: s.network,
    type: 'berth-ipam',
    ipam: {
      type: 'berth-ipam',
      dataDir: s.dataDir,
      daemonSocket: opts.daemon ? s.socket : false,
      ranges: [[{ subnet: opts.subnet ?? '198.18.192.0/24' }]],
    },
  };
}

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runProgram(
  bin: string,
  args: string[],
  env: Record<string, string>,
  stdin: string,
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
    );
    child.stdin.end(stdin);
  });
}

/** berth-ipam as a runtime runs it. */
export function ipam(
  command: string,
  cid: string,
  conf: Record<string, unknown>,
  extraEnv: Record<string, string> = {},
): Promise<Run> {
  return runProgram(
    join(REPO, 'bin', 'berth-ipam'),
    [],
    {
      CNI_COMMAND: command,
      CNI_CONTAINERID: cid,
      CNI_NETNS: `/run/netns/${cid}`,
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      ...extraEnv,
    },
    JSON.stringify(conf),
  );
}

export function berth(args: string[], stdin = ''): Promise<Run> {
  return runProgram(join(REPO, 'bin', 'berth'), args, {}, stdin);
}

export function addressOf(stdout: string): string {
  const r = JSON.parse(stdout) as { ips: { address: string }[] };
  return r.ips[0]!.address.split('/')[0]!;
}

/** The truth: IP file → its content, for the network. */
export function leaseFiles(s: Sandbox): Map<string, string> {
  const dir = join(s.dataDir, s.network);
  const out = new Map<string, string>();
  if (!existsSync(dir)) return out;
  for (const f of readdirSync(dir)) {
    if (/^[0-9.]+$/.test(f) || f.includes(':')) out.set(f, readFileSync(join(dir, f), 'utf8'));
  }
  return out;
}

export function attRecords(s: Sandbox): string[] {
  const dir = join(s.dataDir, s.network, '.berth', 'att');
  return existsSync(dir) ? readdirSync(dir) : [];
}
