// berthd's life: take the socket (its own, root-only, or systemd's through LISTEN_FDS), serve in the
// foreground with logs on stderr, and on SIGTERM/SIGINT finish what is in flight before exiting.
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { dirname, join } from 'node:path';
import { BOOT_ID_FILE, bootStartedMs, readBootId } from '../ipam/boot-id';
import { type LogFormat, type LogLevel, type Logger, createLogger } from './log';
import { Metrics } from './metrics';
import { DATA_DIRS_FILE, DEFAULT_SOCKET } from '../ipam/daemon/protocol';
import { nftTable, runDir } from '../bridge/deps';
import { hostViewThrough } from './host-view';
import { DEFAULT_CALL_DEADLINE_MS, PluginHost } from './plugin-host';
import { BerthServer } from './server';
import { Service } from '../ipam/daemon/service';

export interface DaemonOptions {
  socket?: string;
  dataDir?: string;
  /** Where berthd keeps its own small state (the data dirs served); default: the socket's directory. */
  stateDir?: string;
  logFormat?: LogFormat;
  logLevel?: LogLevel;
  /** berth-bridge's run dir for the warm path (default: BERTH_RUN_DIR of berthd's environment, or /run/berth). */
  runDir?: string;
  /** berth-bridge's nftables table for the warm path (default: BERTH_NFT_TABLE, or berth). */
  nftTable?: string;
  /** Deadline of one plugin call (default 120 s): then it is cancelled and its delegates killed. */
  callDeadlineMs?: number;
  /** Serve plugin calls on /v1/cni (the warm path); default true. */
  servePlugins?: boolean;
  /** Run a served berth-bridge call's delegated IPAM plugin here (default true); false in a container (see PluginHost). */
  delegatedIpamHere?: boolean;
  /**
   * berthd runs in a container: the host's root as seen from it (`/proc/1/root` with hostPID). berth-ipam
   * calls whose state the host does not share are left to the host (src/daemon/host-view.ts).
   */
  hostRoot?: string;
  /** `HOST:PORT` for a TCP listener serving only /metrics; none unless asked for. */
  metricsAddress?: string;
  env?: NodeJS.ProcessEnv;
  /** On a cluster node: berthd's route programmer (see src/cluster/route-programmer.ts). */
  routes?: import('./server').ServerOptions['routes'];
  /** A cluster node (etcd endpoints given): the settings of src/cluster/cluster-ipam.ts, minus what berthd supplies. */
  cluster?: Omit<import('../cluster/cluster-ipam').ClusterOptions, 'bootId' | 'log' | 'version'>;
  /** `--underlay-address` values (one per family); without them a cluster node detects its underlay. */
  underlayAddresses?: string[];
  /** Resolves when the daemon listens (tests, benches). */
  onListening?: (info: { socket: string }) => void;
}

/** The data dirs berthd served, so a restarted daemon lists their networks before a plugin names them. */
export { DATA_DIRS_FILE } from '../ipam/daemon/protocol';

/** systemd's socket activation: the listening socket arrives as fd 3 when LISTEN_PID names us. */
function activationFd(env: NodeJS.ProcessEnv): number | undefined {
  if (env.LISTEN_PID !== String(process.pid) || env.LISTEN_FDS === undefined) return undefined;
  const n = Number(env.LISTEN_FDS);
  // Not for children: they would believe the socket is theirs.
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (n === 0) return undefined;
  if (n !== 1) throw new Error(`systemd passed ${n} sockets (LISTEN_FDS); berthd listens on exactly one`);
  return 3;
}

/** A socket file left by a daemon that died is removed; one that answers belongs to a live daemon. */
async function clearStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; not touching it`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`another berthd already answers on ${path}`);
  fs.unlinkSync(path);
}

function prepareSocketDir(path: string, log: Logger): void {
  const dir = dirname(path);
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    return;
  }
  const st = fs.statSync(dir);
  const mode = st.mode & 0o777;
  if ((mode & 0o077) === 0) return;
  // berth's own directory, made by someone else with the usual 0755: a kubelet's DirectoryOrCreate hostPath
  // (the DaemonSet's /run/berth, again after every reboot), or an install. It is made private as berthd
  // would have made it. Any other directory (a test's socket under /tmp) is not berthd's to change.
  if (dir === dirname(DEFAULT_SOCKET) && st.uid === 0 && st.isDirectory()) {
    fs.chmodSync(dir, 0o700);
    log.log('info', 'socket directory made private (0700)', { dir, was: mode.toString(8) });
    return;
  }
  log.log('warn', 'socket directory is accessible to others; the socket itself is 0600', {
    dir,
    mode: mode.toString(8),
  });
}

function listen(server: http.Server, target: { path: string } | { fd: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = (): void => {
      server.off('error', reject);
      resolve();
    };
    if ('fd' in target) server.listen({ fd: target.fd }, done);
    else server.listen(target.path, done);
  });
}

function inodeOf(path: string): number | undefined {
  try {
    return fs.statSync(path).ino;
  } catch {
    return undefined;
  }
}

/**
 * GET /v1/health over TCP (kubelet's probes): 503 while starting (no socket yet), while draining, and once
 * berthd's socket file is gone or another's (removed by hand, or by another berthd): the plugins' calls
 * cannot reach this berthd any more, and a restart makes the socket again.
 */
function healthOf(
  server: BerthServer | undefined,
  socketPath: string,
  socketIno: number | undefined,
): { ok: boolean; [k: string]: unknown } {
  if (server === undefined) return { ok: false, starting: true };
  if (server.isDraining) return { ok: false, draining: true };
  if (socketIno !== undefined && inodeOf(socketPath) !== socketIno)
    return { ok: false, draining: false, socket: `${socketPath} is no longer this berthd's` };
  return { ok: true, draining: false };
}

/** Connections the metrics port holds at once (scrapers and probes are a handful). */
const METRICS_MAX_CONNECTIONS = 64;

/**
 * `--metrics-address HOST:PORT`: an empty host (`:9377`, as Go writes it) listens on every address, as Node's
 * listen(port, '') does; an IPv6 host may be bracketed. Undefined when it is not one.
 */
export function parseListenAddress(text: string): { host: string; port: number } | undefined {
  const m = /^(.*):(\d+)$/.exec(text);
  if (m === null || Number(m[2]) > 65535) return undefined;
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/** The TCP listener for /metrics and /v1/health (`--metrics-address HOST:PORT`). */
async function listenMetrics(
  address: string,
  health: () => { ok: boolean },
  metricsText: () => string,
): Promise<http.Server> {
  const at = parseListenAddress(address);
  if (at === undefined) throw new Error(`--metrics-address wants HOST:PORT, got ${address}`);
  // Any local user reaches this port (hostNetwork in the DaemonSet): connections are capped and held only
  // briefly, and the text is made at most once a second, so a flood here costs berthd little and the pods'
  // calls on the unix socket nothing much.
  const srv = http.createServer(
    {
      headersTimeout: 5_000,
      requestTimeout: 10_000,
      keepAliveTimeout: 5_000,
      connectionsCheckingInterval: 1_000,
    },
    (req, res) => {
      // /v1/health here too: kubelet's httpGet probes reach TCP only (deploy/berth.yaml probes it).
      if (req.method === 'GET' && req.url === '/v1/health') {
        const h = health();
        res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h));
        return;
      }
      const ok = req.method === 'GET' && (req.url === '/metrics' || req.url === '/v1/metrics');
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'text/plain; version=0.0.4' };
      // Anything else: no body read, the connection closed after the answer.
      if (!ok) headers.connection = 'close';
      res.writeHead(ok ? 200 : 404, headers).end(ok ? cached() : 'only GET /metrics and /v1/health here\n');
    },
  );
  srv.maxConnections = METRICS_MAX_CONNECTIONS;
  // A connection that says nothing at all is no request yet: the header timeout never starts for it.
  srv.setTimeout(5_000);
  let text = '';
  let madeAt = -Infinity;
  const cached = (): string => {
    // Monotonic: a wall clock stepped back would freeze the text for as long as the step.
    if (performance.now() - madeAt >= 1_000) {
      text = metricsText();
      madeAt = performance.now();
    }
    return text;
  };
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(at.port, at.host, () => {
      srv.off('error', reject);
      resolve();
    });
  });
  return srv;
}

/** Runs berthd until a signal stops it; resolves to the exit code. */
export async function runDaemon(o: DaemonOptions): Promise<number> {
  const env = o.env ?? process.env;
  const log = createLogger({
    format: o.logFormat ?? 'text',
    level: o.logLevel ?? 'info',
    write: (s) => process.stderr.write(s),
  });
  // Sync rounds hold up to two pool threads per filesystem while a syncfs runs (ipam/daemon/fs-sync.ts), and
  // the lease files' async fs calls share that pool: with libuv's default of 4 they would queue behind the
  // rounds. (16 dates from one fdatasync per lease; it was not re-measured when rounds replaced those.)
  if (env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '16';
  const bootFile = env.BERTH_BOOT_ID_FILE;
  const bootIdFile = bootFile !== undefined && bootFile !== '' ? bootFile : BOOT_ID_FILE;
  const bootId = readBootId(bootIdFile, (m) => log.log('warn', m));
  const metrics = new Metrics();
  const socketPath = o.socket ?? DEFAULT_SOCKET;
  // From the start: a SIGTERM while berthd is starting (reading networks, reaching etcd) waits for the start
  // to end and then drains, rather than killing berthd with a request half-served.
  const stopSignal = new Promise<NodeJS.Signals>((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
      resolve(sig);
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
  });
  // The metrics listener before anything else is started: a bad address or a port in use (the previous
  // pod's berthd still on it) stops berthd at once, with nothing running that would keep the process up.
  // What the health probe reads, set as the start goes on.
  const live: { server?: BerthServer; listening: boolean; socketIno?: number } = { listening: false };
  const metricsServer =
    o.metricsAddress === undefined
      ? undefined
      : await listenMetrics(
          o.metricsAddress,
          () => healthOf(live.listening ? live.server : undefined, socketPath, live.socketIno),
          () => live.server?.metricsText() ?? '',
        );
  if (metricsServer !== undefined) log.log('info', 'metrics listening', { address: o.metricsAddress });
  // A live berthd on the socket (the previous pod's, during an overlap) stops this one before it registers
  // in the cluster or reads any network: one berthd per node.
  const fd = activationFd(env);
  if (fd === undefined) {
    try {
      prepareSocketDir(socketPath, log);
      await clearStaleSocket(socketPath);
    } catch (err) {
      metricsServer?.close();
      throw err;
    }
  }
  const stateDir = o.stateDir ?? dirname(socketPath);
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  // The etcd client and the route programmer load only here: a plugin execution never pays for them.
  const routingModule =
    o.cluster === undefined
      ? undefined
      : (require('../cluster/routing') as typeof import('../cluster/routing'));
  const routeLog = (line: string, level: 'info' | 'warn' = 'info'): void => log.log(level, line);
  const underlay =
    o.cluster === undefined || routingModule === undefined
      ? undefined
      : (o.cluster.underlay ??
        (await routingModule.resolveUnderlay({
          flags: o.underlayAddresses,
          endpoints: o.cluster.etcd.endpoints,
          log: routeLog,
        })));
  const cluster =
    o.cluster === undefined
      ? undefined
      : new (require('../cluster/cluster-ipam') as typeof import('../cluster/cluster-ipam')).ClusterIpam({
          ...o.cluster,
          ...(underlay !== undefined ? { underlay } : {}),
          bootId: bootId ?? 'unknown',
          log,
          version: '0.1.0',
        });
  const service = new Service({
    bootId,
    bootStarted: () => bootStartedMs(bootIdFile),
    log,
    metrics,
    dataDirsFile: join(stateDir, DATA_DIRS_FILE),
    ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}),
    ...(cluster !== undefined ? { cluster } : {}),
  });
  if (cluster !== undefined) {
    cluster.useStores(
      (conf) => service.store(conf.dataDir, conf.network),
      () => service.knownDataDirs,
    );
    // Refuses to start when the node name belongs to another machine; an unreachable etcd only delays it.
    await cluster.start();
  }
  // No underlay given: while a family was not found at the start, look again (the network may not be up
  // yet) and publish what turns up.
  const firstEndpoint = o.cluster?.etcd.endpoints[0];
  const stopUnderlayRetry =
    cluster !== undefined &&
    routingModule !== undefined &&
    firstEndpoint !== undefined &&
    o.cluster?.underlay === undefined &&
    (o.underlayAddresses ?? []).length === 0
      ? routingModule.retryUnderlayDetection({
          have: underlay ?? {},
          detect: () => routingModule.detectUnderlayTowards(firstEndpoint),
          publish: (u) => cluster.node.publishUnderlay(u),
          log: routeLog,
        })
      : undefined;
  // Routes to the other nodes' blocks (issue 15): follows the block map in etcd.
  const routing =
    cluster !== undefined && routingModule !== undefined && o.cluster !== undefined
      ? await routingModule.startClusterRouting({
          etcd: cluster.etcd,
          prefix: o.cluster.prefix,
          self: o.cluster.nodeName,
          log: routeLog,
        })
      : undefined;
  const routes = o.routes ?? routing?.programmer;
  const hostView =
    o.hostRoot !== undefined ? hostViewThrough(o.hostRoot, (line) => log.log('warn', line)) : undefined;
  if (hostView?.unchecked !== undefined) log.log('warn', hostView.unchecked);
  const plugins =
    o.servePlugins === false
      ? undefined
      : new PluginHost({
          service,
          log,
          metrics,
          runDir: o.runDir ?? runDir(env),
          nftTable: o.nftTable ?? nftTable(env),
          bootIdFile,
          deadlineMs: o.callDeadlineMs ?? DEFAULT_CALL_DEADLINE_MS,
          ...(o.delegatedIpamHere === false ? { delegatedIpamHere: false } : {}),
          ...(hostView !== undefined ? { hostView } : {}),
        });
  const server = new BerthServer({
    service,
    log,
    metrics,
    socketPath,
    ...(routes !== undefined ? { routes } : {}),
    ...(cluster !== undefined ? { cluster } : {}),
    ...(plugins ? { plugins } : {}),
    ...(hostView !== undefined ? { hostView } : {}),
  });

  let ownSocket = false;
  if (fd !== undefined) {
    await listen(server.http, { fd });
    log.log('info', 'listening on the socket passed by systemd', { fd });
  } else {
    // The socket is born 0600: no moment in which another user could connect.
    const oldMask = process.umask(0o177);
    try {
      await listen(server.http, { path: socketPath });
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(socketPath, 0o600);
    ownSocket = true;
    // This daemon's socket file: at exit only this one is removed (a berthd started meanwhile on the same
    // path, the next pod's during an overlap, keeps its own), and health fails once it is gone.
    live.socketIno = fs.statSync(socketPath).ino;
    log.log('info', 'listening', { socket: socketPath, pid: process.pid });
  }
  live.server = server;
  live.listening = true;
  // The networks of the data dirs (--data-dir and those remembered) are read now, not at their first
  // request: the view is warm, and a broken directory shows in the log at start rather than in a pod's ADD.
  try {
    const views = await service.networkViews();
    for (const v of views)
      log.log('info', 'network loaded', { network: v.network, dataDir: v.dataDir, leases: v.leases });
  } catch (err) {
    log.log('warn', 'could not read the networks of the data dirs', {
      dataDirs: service.knownDataDirs.join(','),
      error: (err as Error).message,
    });
  }
  o.onListening?.({ socket: socketPath });
  const sweeper = setInterval(() => {
    const n = service.sweep();
    if (n > 0) log.log('debug', 'forgot networks whose directory is gone', { count: n });
  }, 60_000);
  sweeper.unref();

  const signal = await stopSignal;
  log.log('info', 'stopping: finishing requests in flight', { signal });
  // A second signal while draining means "now".
  const force = (): void => {
    log.log('warn', 'second signal: exiting without waiting');
    process.exit(1);
  };
  process.once('SIGTERM', force);
  process.once('SIGINT', force);
  clearInterval(sweeper);
  await server.shutdown({ keepListening: !ownSocket });
  metricsServer?.close();
  stopUnderlayRetry?.();
  // Routes stay in the kernel: pods keep their traffic while berthd is down.
  await routing?.close();
  await cluster?.stop();
  service.close();
  if (ownSocket && live.socketIno !== undefined && inodeOf(socketPath) === live.socketIno)
    fs.rmSync(socketPath, { force: true });
  log.log('info', 'stopped');
  return 0;
}
