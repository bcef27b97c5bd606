// `berth daemon`: berthd in the foreground (systemd runs it so), options checked here before it starts.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isLogFormat, isLogLevel } from '../daemon/log';
import { parseListenAddress, runDaemon } from '../daemon/lifecycle';

export interface DaemonCliOptions {
  socket?: string;
  dataDir?: string;
  stateDir?: string;
  logFormat?: string;
  logLevel?: string;
  metricsAddress?: string;
  etcdEndpoints?: string;
  etcdCacert?: string;
  etcdCert?: string;
  etcdKey?: string;
  etcdUser?: string;
  etcdPrefix?: string;
  nodeName?: string;
  underlayAddress?: string[];
  nodeIdFile?: string;
  nodeLeaseTtl?: string;
  ownershipHorizon?: string;
  claimTimeout?: string;
  blockReleaseAfter?: string;
  forgetMargin?: string;
  reserveWindow?: string;
  runDir?: string;
  nftTable?: string;
  callTimeout?: string;
  plugins?: boolean;
  /**
   * berthd runs in a container whose view of the host's `/` is this directory: delegated IPAM then runs on
   * the host, and berth-ipam calls whose state the host does not share too. `berth node-agent`: /proc/1/root.
   */
  hostRoot?: string;
}

/** `15s`, `500ms`, `5m`, `1h`, or plain seconds → milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (m === null) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

type ClusterSettings = NonNullable<Parameters<typeof runDaemon>[0]['cluster']>;

/** The cluster flags, checked; undefined without --etcd-endpoints. Throws a message for a bad flag. */
export function clusterSettingsOf(o: DaemonCliOptions, env: NodeJS.ProcessEnv): ClusterSettings | undefined {
  if (o.etcdEndpoints === undefined || o.etcdEndpoints === '') return undefined;
  const endpoints = o.etcdEndpoints
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  for (const e of endpoints) {
    if (!/^https?:\/\/[^/]+\/?$/.test(e))
      throw new Error(`--etcd-endpoints: ${e} is not http(s)://host:port`);
  }
  // `max`: a duration a timer holds (Node fires a longer setTimeout/setInterval after 1 ms).
  const dur = (flag: string, v: string | undefined, def: number, min = 0, max = Infinity): number => {
    if (v === undefined) return def;
    const ms = parseDuration(v);
    if (ms === undefined || ms < min || ms > max)
      throw new Error(
        `${flag} wants a duration such as 15s, 5m or 1h${max < Infinity ? `, at most ${Math.floor(max / 3_600_000)}h` : ''}, got ${v}`,
      );
    return ms;
  };
  const read = (flag: string, path: string | undefined): Buffer | undefined => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`${flag}: cannot read ${path}: ${(err as Error).message}`);
    }
  };
  const ca = read('--etcd-cacert', o.etcdCacert);
  const cert = read('--etcd-cert', o.etcdCert);
  const key = read('--etcd-key', o.etcdKey);
  const password = env.BERTH_ETCD_PASSWORD;
  if (o.etcdUser !== undefined && (password === undefined || password === '')) {
    throw new Error('--etcd-user needs the password in $BERTH_ETCD_PASSWORD (never on the command line)');
  }
  // The keepalive runs every TTL/3 of the whole seconds the TTL is rounded to.
  const ttl = dur(
    '--node-lease-ttl',
    o.nodeLeaseTtl,
    15_000,
    2000,
    Math.floor((3 * MAX_TIMER_MS) / 1000) * 1000,
  );
  const horizon = dur('--ownership-horizon', o.ownershipHorizon, 3_600_000, 1000);
  if (horizon < 2 * ttl) throw new Error('--ownership-horizon must be at least twice --node-lease-ttl');
  return {
    etcd: {
      endpoints,
      // An election takes 1–2 s after the leader died, and a request a follower forwarded to the dead leader
      // is lost: only this timeout ends it. At 2 s a claim could spend 4 s on two followers in a row, past the
      // ADD's claim timeout; at 1 s the claim is retried on a member that has a leader again (measured in
      // design/cluster-ipam.md: writes resumed 1.16 s after the first failure with a 1 s timeout).
      timeoutMs: 1000,
      ...(ca || cert || key
        ? { tls: { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) } }
        : {}),
      ...(o.etcdUser !== undefined ? { auth: { user: o.etcdUser, password: password! } } : {}),
    },
    prefix: o.etcdPrefix ?? '/berth/v1',
    nodeName: o.nodeName ?? hostname(),
    nodeIdFile: o.nodeIdFile ?? '/var/lib/berth/node-id',
    ttlSeconds: Math.round(ttl / 1000),
    horizonSeconds: Math.round(horizon / 1000),
    claimTimeoutMs: dur('--claim-timeout', o.claimTimeout, 5000, 100, MAX_TIMER_MS),
    blockReleaseAfterMs: dur('--block-release-after', o.blockReleaseAfter, 300_000),
    reserveWindowMs: dur('--reserve-window', o.reserveWindow, 60_000, 1000),
    forgetMarginSeconds: Math.round(dur('--forget-margin', o.forgetMargin, 30_000) / 1000),
  };
}

/** The longest a Node timer holds (ms); AbortSignal.timeout throws above 2^32 - 1, setTimeout fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * `--call-timeout` (a duration as the other flags take: plain seconds, or with ms/s/m/h) in ms, or null when
 * no timer can hold it: under 1 ms every call would start cancelled; past MAX_TIMER_MS every call failed in
 * AbortSignal.timeout and the shim silently ran standalone.
 */
export function callDeadlineMs(text: string): number | null {
  const ms = parseDuration(text);
  return ms !== undefined && ms >= 1 && ms <= MAX_TIMER_MS ? ms : null;
}

export async function runDaemonCommand(o: DaemonCliOptions, err: (s: string) => void): Promise<number> {
  const options = daemonOptionsOf(o, err);
  return typeof options === 'number' ? options : runCheckedDaemon(options, err);
}

/** berthd with options daemonOptionsOf accepted, until a signal stops it; a failed start exits the process. */
export async function runCheckedDaemon(
  options: Parameters<typeof runDaemon>[0],
  err: (s: string) => void,
): Promise<number> {
  try {
    return await runDaemon(options);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Not root: berthd's socket, run dir and data dir are root's (a test's private paths may be anyone's).
    const hint =
      (code === 'EACCES' || code === 'EPERM') && process.getuid?.() !== 0 ? ' (berthd runs as root)' : '';
    err(`berth daemon: ${(e as Error).message}${hint}\n`);
    // A start that failed half-way (the cluster registered, a listener open) must not leave a process that
    // serves nothing running: a DaemonSet would count it as a healthy pod.
    process.exit(1);
  }
}

/** The flags checked and turned into berthd's options, or the exit code (2) after saying what is wrong. */
export function daemonOptionsOf(
  o: DaemonCliOptions,
  err: (s: string) => void,
): Parameters<typeof runDaemon>[0] | number {
  const format = o.logFormat ?? 'text';
  const level = o.logLevel ?? 'info';
  if (!isLogFormat(format)) {
    err(`berth daemon: --log-format must be text or json, got ${format}\n`);
    return 2;
  }
  if (!isLogLevel(level)) {
    err(`berth daemon: --log-level must be debug, info, warn or error, got ${level}\n`);
    return 2;
  }
  for (const [flag, v] of [
    ['--socket', o.socket],
    ['--data-dir', o.dataDir],
    ['--state-dir', o.stateDir],
  ] as const) {
    if (v !== undefined && !v.startsWith('/')) {
      err(`berth daemon: ${flag} must be an absolute path, got ${v}\n`);
      return 2;
    }
  }
  let cluster: ClusterSettings | undefined;
  try {
    cluster = clusterSettingsOf(o, process.env);
  } catch (e) {
    err(`berth daemon: ${(e as Error).message}\n`);
    return 2;
  }
  if (o.nodeName !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(o.nodeName)) {
    err(`berth daemon: --node-name ${o.nodeName} is not a valid node name (letters, digits, . _ -)\n`);
    return 2;
  }
  const underlayAddresses = o.underlayAddress ?? [];
  if (underlayAddresses.length > 0) {
    try {
      // Checked here (an address per family at most) so a typo stops the daemon before it registers.
      const { underlayFromFlags } = require('../cluster/underlay') as typeof import('../cluster/underlay');
      underlayFromFlags(underlayAddresses);
    } catch (e) {
      err(`berth daemon: ${(e as Error).message}\n`);
      return 2;
    }
    if (cluster === undefined) {
      err('berth daemon: --underlay-address needs --etcd-endpoints (routes are for cluster nodes)\n');
      return 2;
    }
  }
  if (o.hostRoot !== undefined && !o.hostRoot.startsWith('/')) {
    err(`berth daemon: --host-root must be an absolute path, got ${o.hostRoot}\n`);
    return 2;
  }
  if (o.runDir !== undefined && !o.runDir.startsWith('/')) {
    err(`berth daemon: --run-dir must be an absolute path, got ${o.runDir}\n`);
    return 2;
  }
  if (o.nftTable !== undefined && !/^[A-Za-z][A-Za-z0-9_]{0,30}$/.test(o.nftTable)) {
    err(`berth daemon: --nft-table must be a name of letters, digits and _, got ${o.nftTable}\n`);
    return 2;
  }
  const deadlineMs = o.callTimeout === undefined ? undefined : callDeadlineMs(o.callTimeout);
  if (deadlineMs === null) {
    err(
      `berth daemon: --call-timeout wants a duration from 1ms to ${MAX_TIMER_MS / 1000}s (plain seconds, or with ms, s, m or h), got ${o.callTimeout}\n`,
    );
    return 2;
  }
  if (o.metricsAddress !== undefined) {
    if (parseListenAddress(o.metricsAddress) === undefined) {
      err(`berth daemon: --metrics-address wants HOST:PORT, got ${o.metricsAddress}\n`);
      return 2;
    }
  }
  return {
    ...(cluster !== undefined ? { cluster } : {}),
    ...(underlayAddresses.length > 0 ? { underlayAddresses } : {}),
    ...(o.runDir !== undefined ? { runDir: o.runDir } : {}),
    ...(o.nftTable !== undefined ? { nftTable: o.nftTable } : {}),
    ...(deadlineMs !== undefined ? { callDeadlineMs: deadlineMs } : {}),
    ...(o.plugins === false ? { servePlugins: false } : {}),
    ...(o.hostRoot !== undefined ? { delegatedIpamHere: false, hostRoot: o.hostRoot } : {}),
    logFormat: format,
    logLevel: level,
    ...(o.socket !== undefined ? { socket: o.socket } : {}),
    ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}),
    ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
    ...(o.metricsAddress !== undefined ? { metricsAddress: o.metricsAddress } : {}),
  };
}
