// Running berth-ipam (the built executable) and Debian's host-local the way a runtime does: CNI_* env, the
// config on stdin, the result or error object on stdout. Temp data dirs carry a unique prefix and go away.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const REPO = join(__dirname, '../..');
export const BERTH_IPAM = join(REPO, 'bin', 'berth-ipam');
export const HOST_LOCAL = '/usr/lib/cni/host-local';

/** Throws when dist/ is missing or older than src/ipam: the black-box tests would run stale code. */
export function assertBuilt(): void {
  const srcDir = join(REPO, 'src/ipam');
  const stale = readdirSync(srcDir)
    .filter((f) => f.endsWith('.ts'))
    .filter((f) => {
      const js = join(REPO, 'dist/ipam', f.replace(/\.ts$/, '.js'));
      return !existsSync(js) || statSync(js).mtimeMs < statSync(join(srcDir, f)).mtimeMs;
    });
  if (!existsSync(join(REPO, 'dist/main.js')) || stale.length > 0) {
    throw new Error(
      `dist/ is missing or older than src/ipam (${stale.join(', ')}): run "npm run build:ts" first`,
    );
  }
}

export function tempDataDir(label: string): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-ipam-${label}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Invocation {
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS';
  config: Record<string, unknown>;
  containerId?: string;
  ifname?: string;
  netns?: string;
  cniArgs?: string;
  env?: Record<string, string>;
}

export interface Outcome {
  status: number | null;
  stdout: string;
  stderr: string;
  /** Parsed stdout (result or error object), when any. */
  json: Record<string, any> | undefined;
}

function envOf(inv: Invocation): Record<string, string> {
  const attachment = inv.command === 'ADD' || inv.command === 'DEL' || inv.command === 'CHECK';
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    CNI_COMMAND: inv.command,
    CNI_CONTAINERID: attachment ? (inv.containerId ?? 'ctr1') : '',
    CNI_NETNS: attachment ? (inv.netns ?? '/run/netns/bt-ipam') : '',
    CNI_IFNAME: attachment ? (inv.ifname ?? 'eth0') : '',
    CNI_ARGS: inv.cniArgs ?? '',
    CNI_PATH: '/usr/lib/cni',
    ...inv.env,
  };
}

function outcome(status: number | null, stdout: string, stderr: string): Outcome {
  let json: Record<string, any> | undefined;
  try {
    json = stdout.trim() === '' ? undefined : (JSON.parse(stdout) as Record<string, any>);
  } catch {
    json = undefined;
  }
  return { status, stdout, stderr, json };
}

export function run(bin: string, inv: Invocation): Outcome {
  const r = spawnSync(bin, [], {
    env: envOf(inv),
    input: JSON.stringify(inv.config),
    encoding: 'utf8',
    timeout: 30_000,
  });
  return outcome(r.status, r.stdout, r.stderr);
}

export function runAsync(bin: string, inv: Invocation): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [], { env: envOf(inv), stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve(outcome(code, out, err)));
    child.stdin.end(JSON.stringify(inv.config));
  });
}

export const ipam = (inv: Invocation): Outcome => run(BERTH_IPAM, inv);
export const hostLocal = (inv: Invocation): Outcome => run(HOST_LOCAL, inv);

/** A network config with an `ipam` section of the given type. */
export function netConf(opts: {
  name: string;
  type: 'berth-ipam' | 'host-local';
  ipam: Record<string, unknown>;
  cniVersion?: string;
  top?: Record<string, unknown>;
}): Record<string, unknown> {
  return {
    cniVersion: opts.cniVersion ?? '1.1.0',
    name: opts.name,
    type: 'bridge',
    // berth-ipam would forward to a berthd listening on the default socket: these tests are about the files.
    ipam: { type: opts.type, ...(opts.type === 'berth-ipam' ? { daemonSocket: false } : {}), ...opts.ipam },
    ...opts.top,
  };
}

/** The lease files of a network as host-local sees them: IP file name → content. */
export function leaseFiles(dataDir: string, network: string): Map<string, string> {
  const dir = join(dataDir, network);
  const out = new Map<string, string>();
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isFile() || e.name === 'lock' || e.name.startsWith('last_reserved_ip.') || e.name.startsWith('.'))
      continue;
    out.set(e.name, readFileSync(join(dir, e.name), 'utf8'));
  }
  return out;
}

/** The addresses of a result's ips, without prefixes. */
export function addressesOf(o: Outcome): string[] {
  return ((o.json?.ips ?? []) as { address: string }[]).map((i) => i.address.split('/')[0]!);
}
