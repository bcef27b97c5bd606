// Root-test fixtures for the bridge plugin: named namespaces, the built plugin run as a runtime would,
// host-local with a private dataDir, a private nftables table and run dir, and cleanup of all of it.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type TestDaemon, runLikeShim, startDaemon } from '../daemon/warm-client';

export const REPO = resolve(__dirname, '..', '..');
export const CNI_PATH = `${join(REPO, 'bin')}:/usr/lib/cni`;

/**
 * Debian's host-local speaks spec <= 1.0.0. For 1.1.0 requests the tests put this wrapper on CNI_PATH as
 * IPAM `bt-host-local`: it hands the config to the real host-local as 1.0.0 and relabels the answer, so the
 * allocation is still host-local's own. It has no GC or STATUS (host-local has none either).
 */
const HOST_LOCAL_11 = `#!/bin/sh
in=$(cat)
v=$(printf '%s' "$in" | jq -r .cniVersion)
case "$CNI_COMMAND" in GC|STATUS) exit 0;; esac
out=$(printf '%s' "$in" | jq -c 'if .cniVersion == "1.1.0" then .cniVersion = "1.0.0" else . end' | /usr/lib/cni/host-local)
rc=$?
if [ "$v" = 1.1.0 ]; then printf '%s' "$out" | jq -c 'if .cniVersion == "1.0.0" then .cniVersion = "1.1.0" else . end'; else printf '%s' "$out"; fi
exit $rc
`;
/**
 * BERTH_TEST_MODE=warm runs every plugin call as the shim would: forwarded to a real berthd serving this
 * fixture's run dir and nftables table (the daemon's own settings), standalone when it answers "not here".
 */
export const WARM = process.env.BERTH_TEST_MODE === 'warm';

export function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
export function trySh(cmd: string, args: string[]): string | undefined {
  try {
    return sh(cmd, args);
  } catch {
    return undefined;
  }
}
export function ipJson<T = any>(args: string[]): T {
  return JSON.parse(sh('ip', ['-j', ...args]) || '[]') as T;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  json: any;
}

export interface RunOptions {
  plugin?: string;
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS' | 'VERSION';
  conf: Record<string, unknown>;
  containerId?: string;
  netns?: string;
  ifname?: string;
  cniArgs?: string;
  env?: Record<string, string>;
}

/** A test fixture: everything it creates carries `prefix` and goes away in cleanup(). */
export class Fixture {
  readonly prefix: string;
  readonly dataDir: string;
  readonly runDir: string;
  readonly nftTable: string;
  /** A directory on CNI_PATH holding bt-host-local (see HOST_LOCAL_11). */
  readonly extraBin: string;
  readonly berthBridge = join(REPO, 'bin', 'berth-bridge');
  private readonly netnses = new Set<string>();
  private readonly bridges = new Set<string>();
  private readonly sysctls = new Map<string, string>();
  private seq = 0;
  private daemon: Promise<TestDaemon> | undefined;
  private daemonPid: number | undefined;
  /** Plugin calls berthd served (warm mode), and those it sent back to run standalone. */
  /** Warm mode: calls berthd served, calls it sent back (421, by design), and calls that found no berthd. */
  readonly warmCalls = { served: 0, fallback: 0, unexpected: [] as string[] };

  constructor(tag: string) {
    // bt<pid><tag>: unique on the machine, short enough for link names (<= 15 bytes with a suffix).
    this.prefix = `bt${process.pid}${tag}`;
    this.dataDir = mkdtempSync(join(tmpdir(), `${this.prefix}-ipam-`));
    this.runDir = mkdtempSync(join(tmpdir(), `${this.prefix}-run-`));
    this.nftTable = `${this.prefix}t`;
    this.extraBin = mkdtempSync(join(tmpdir(), `${this.prefix}-bin-`));
    writeFileSync(join(this.extraBin, 'bt-host-local'), HOST_LOCAL_11, { mode: 0o755 });
    for (const key of ['net.ipv4.ip_forward', 'net.ipv6.conf.all.forwarding']) {
      this.sysctls.set(key, sh('sysctl', ['-n', key]).trim());
    }
  }

  netns(): { name: string; path: string } {
    const name = `${this.prefix}-ns${this.seq++}`;
    sh('ip', ['netns', 'add', name]);
    this.netnses.add(name);
    return { name, path: `/run/netns/${name}` };
  }

  deleteNetns(name: string): void {
    trySh('ip', ['netns', 'del', name]);
    this.netnses.delete(name);
  }

  bridge(): string {
    const name = `${this.prefix}b${this.seq++}`;
    this.bridges.add(name);
    return name;
  }

  /** A berth-bridge network config (spec 1.0.0 unless `extra` says otherwise) on a fresh bridge of this fixture. */
  conf(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      cniVersion: '1.0.0',
      name: `${this.prefix}net`,
      type: 'berth-bridge',
      bridge: this.bridge(),
      ...extra,
    };
  }

  /** An IPAM section for host-local with this fixture's dataDir. */
  hostLocal(
    ranges: Array<Record<string, unknown>[]>,
    extra: Record<string, unknown> = {},
    version = '1.0.0',
  ): Record<string, unknown> {
    return {
      type: version === '1.1.0' ? 'bt-host-local' : 'host-local',
      dataDir: this.dataDir,
      ranges,
      ...extra,
    };
  }

  /** Lease files host-local holds for a network (not counting its lock and cursor files). */
  leases(network: string): string[] {
    const dir = join(this.dataDir, network);
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter(
      (f) => f !== 'lock' && !f.startsWith('last_reserved_ip') && !f.startsWith('.'),
    );
  }

  env(): Record<string, string> {
    return {
      BERTH_NFT_TABLE: this.nftTable,
      BERTH_RUN_DIR: this.runDir,
      CNI_PATH: `${CNI_PATH}:${this.extraBin}`,
    };
  }

  run(opts: RunOptions): Promise<RunResult> {
    const withEnv = { ...opts, env: { ...this.env(), ...(opts.env ?? {}) } };
    if (!WARM) return runPlugin(withEnv);
    return this.runWarm(withEnv);
  }

  /** An ADD of berth-bridge (or `plugin`) for one container's `ifname` (eth0) in a namespace. */
  add(
    conf: Record<string, unknown>,
    containerId: string,
    netns: string,
    ifname = 'eth0',
  ): Promise<RunResult> {
    return this.run({ command: 'ADD', conf, containerId, netns, ifname });
  }

  /** berth-bridge's CHECK of one attachment, with its ADD's result as prevResult. */
  check(
    conf: Record<string, unknown>,
    prevResult: unknown,
    containerId: string,
    netns: string,
    ifname = 'eth0',
  ): Promise<RunResult> {
    return this.run({ command: 'CHECK', conf: { ...conf, prevResult }, containerId, netns, ifname });
  }

  private async runWarm(opts: RunOptions): Promise<RunResult> {
    this.daemon ??= startDaemon({ tag: 'fx', runDir: this.runDir, nftTable: this.nftTable }).then((d) => {
      this.daemonPid = d.pid;
      return d;
    });
    const d = await this.daemon;
    const { path, env, stdin } = pluginCall(opts);
    const r = await runLikeShim(d.socket, path, env, stdin);
    if (r.warm) this.warmCalls.served++;
    else this.warmCalls.fallback++;
    // berthd sends back what it does not serve by design (421: fault injection, another run dir, a path
    // that is no namespace); anything else means the run was not on the warm path it claims to test.
    if (r.fallback !== undefined && r.fallback !== '421')
      this.warmCalls.unexpected.push(`${env.CNI_COMMAND ?? '?'}: ${r.fallback}`);
    return { code: r.code, stdout: r.stdout, stderr: r.stderr, json: parseJson(r.stdout) };
  }

  nftList(family: 'inet' | 'bridge'): string {
    return trySh('nft', ['list', 'table', family, this.nftTable]) ?? '';
  }

  /** This fixture's nftables tables that exist, as `<family> <name>` (from `nft -j list tables`). */
  tables(): string[] {
    const out = JSON.parse(sh('nft', ['-j', 'list', 'tables'])) as {
      nftables: Array<{ table?: { family: string; name: string } }>;
    };
    return out.nftables.flatMap((o) =>
      o.table !== undefined && o.table.name === this.nftTable ? [`${o.table.family} ${o.table.name}`] : [],
    );
  }

  /** What the plugin left under `<runDir>/bridge` besides its lock files. */
  runState(): string[] {
    const dir = join(this.runDir, 'bridge');
    return existsSync(dir) ? readdirSync(dir).filter((f) => !f.endsWith('.lock')) : [];
  }

  /** Host links whose master is `bridge`. */
  ports(bridge: string): any[] {
    if (trySh('ip', ['link', 'show', 'dev', bridge]) === undefined) return [];
    return ipJson(['link', 'show', 'master', bridge]);
  }

  cleanup(): void {
    for (const ns of this.netnses) trySh('ip', ['netns', 'del', ns]);
    this.netnses.clear();
    for (const br of this.bridges) {
      for (const port of trySh('ip', ['-j', 'link', 'show', 'master', br])
        ? ipJson(['link', 'show', 'master', br])
        : []) {
        trySh('ip', ['link', 'del', port.ifname]);
      }
      // a VLAN gateway interface <bridge>.<vlan> (its peer is a port, already gone)
      for (const l of ipJson(['link', 'show']))
        if (String(l.ifname).startsWith(`${br}.`)) trySh('ip', ['link', 'del', l.ifname]);
      trySh('ip', ['link', 'del', br]);
    }
    this.bridges.clear();
    for (const family of ['inet', 'bridge']) trySh('nft', ['delete', 'table', family, this.nftTable]);
    for (const [key, value] of this.sysctls) trySh('sysctl', ['-qw', `${key}=${value}`]);
    for (const dir of [this.dataDir, this.runDir]) {
      for (const f of readdirSync(dir)) rmSync(join(dir, f), { recursive: true, force: true });
    }
  }

  dispose(): void {
    const w = this.warmCalls;
    if (WARM)
      process.stderr.write(`${this.prefix}: warm calls served ${w.served}, standalone ${w.fallback}\n`);
    // Checked after the cleanup below, so that a failing check still leaves nothing behind.
    const warmProblem = !WARM
      ? undefined
      : w.unexpected.length > 0
        ? `berthd did not answer as on the warm path: ${w.unexpected.slice(0, 5).join(', ')}`
        : w.fallback > 0 && w.served === 0
          ? `berthd served none of ${w.fallback} calls: every one ran standalone`
          : undefined;
    if (this.daemonPid !== undefined) {
      try {
        process.kill(this.daemonPid, 'SIGTERM');
      } catch {
        // already gone
      }
      void this.daemon?.then((d) => d.stop());
    }
    this.cleanup();
    rmSync(this.dataDir, { recursive: true, force: true });
    rmSync(this.runDir, { recursive: true, force: true });
    rmSync(this.extraBin, { recursive: true, force: true });
    if (warmProblem !== undefined) throw new Error(`${this.prefix}: ${warmProblem}`);
  }
}

function parseJson(stdout: string): any {
  try {
    return stdout.trim() === '' ? undefined : JSON.parse(stdout);
  } catch {
    return undefined;
  }
}

/** The executable, whole environment and stdin of one call, as a runtime would make it. */
function pluginCall(opts: RunOptions): { path: string; env: Record<string, string>; stdin: string } {
  const path = opts.plugin ?? join(REPO, 'bin', 'berth-bridge');
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: opts.command,
    CNI_PATH,
    ...(opts.containerId !== undefined ? { CNI_CONTAINERID: opts.containerId } : {}),
    ...(opts.netns !== undefined ? { CNI_NETNS: opts.netns } : {}),
    ...(opts.ifname !== undefined ? { CNI_IFNAME: opts.ifname } : {}),
    ...(opts.cniArgs !== undefined ? { CNI_ARGS: opts.cniArgs } : {}),
    ...(opts.env ?? {}),
  };
  return { path, env, stdin: JSON.stringify(opts.conf) };
}

export function runPlugin(opts: RunOptions): Promise<RunResult> {
  const plugin = opts.plugin ?? join(REPO, 'bin', 'berth-bridge');
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: opts.command,
    CNI_PATH,
    ...(opts.containerId !== undefined ? { CNI_CONTAINERID: opts.containerId } : {}),
    ...(opts.netns !== undefined ? { CNI_NETNS: opts.netns } : {}),
    ...(opts.ifname !== undefined ? { CNI_IFNAME: opts.ifname } : {}),
    ...(opts.cniArgs !== undefined ? { CNI_ARGS: opts.cniArgs } : {}),
    ...(opts.env ?? {}),
  };
  return new Promise((resolvePromise, reject) => {
    const child = spawn(plugin, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      let json: any;
      try {
        json = stdout.trim() === '' ? undefined : JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolvePromise({ code: code ?? -1, stdout, stderr, json });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(JSON.stringify(opts.conf));
  });
}

/** Runs a command inside a netns through `ip netns exec` and returns its stdout (throws on failure). */
export function nsExec(ns: string, cmd: string[]): string {
  return sh('ip', ['netns', 'exec', ns, ...cmd]);
}

export function readSysctlIn(ns: string, key: string): string {
  return nsExec(ns, ['cat', `/proc/sys/${key.replace(/\./g, '/')}`]).trim();
}
