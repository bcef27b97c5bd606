// berthd's HTTP/1.1 front: routes under /v1/, bodies read with a size limit, every failure answered as a
// CNI error object with an HTTP status, and the bookkeeping that lets SIGTERM finish what is in flight.
import * as http from 'node:http';
import { CniError, ErrorCode, toCniError } from '../cni-spec/errors';
import type { RouteMetricSample, RoutesReport } from '../cluster/route-programmer';
import { notAWriter, serveCniCall, type RawReply } from './cni-route';
import { CNI_PATH as CNI_CALL_PATH } from './protocol';
import { type HostView, berthIpamNotShared } from './host-view';
import { type Logger, shortLogLine } from './log';
import type { Metrics, SampledValue } from './metrics';
import {
  Allocate,
  Check,
  Gc,
  MAX_BODY_BYTES,
  MAX_GC_BODY_BYTES,
  Release,
  Status,
  type DaemonStatus,
  type Health,
  type Method,
} from '../ipam/daemon/protocol';
import type { Service } from '../ipam/daemon/service';
import type { PluginHost } from './plugin-host';
import { type CallTrace, type LeaseFilter, ServiceError } from '../ipam/daemon/service';

export interface ServerOptions {
  service: Service;
  /** The warm path: berth-bridge's and berth-ipam's handlers served on POST /v1/cni; none without it. */
  plugins?: PluginHost;
  log: Logger;
  metrics: Metrics;
  /** Shown in /v1/status. */
  socketPath: string;
  maxBodyBytes?: number;
  /**
   * How long a warm-path reply may take to reach its caller's socket (default 10 s): a caller that stops
   * reading would otherwise hold its attachment's queue, and every later call of that pod, for good. Past
   * it the reply counts as not delivered (an ADD that made the attachment is deleted again).
   */
  replyDeadlineMs?: number;
  /**
   * Peer uids (SO_PEERCRED) served anything but reads: allocations, releases, GC, cluster changes. Root only
   * by default; the socket's mode may be loosened (a group for `berth status`), this may not. Tests that run
   * the server in their own process as another user name theirs.
   */
  writerUids?: readonly number[];
  /**
   * berthd in a container: berth-ipam's requests whose dataDir or resolvConf the host does not share are
   * answered 421 without a CNI error, so berth-ipam works on the host's files itself (src/daemon/host-view.ts).
   */
  hostView?: HostView;
  /** On a cluster node: the route programmer (routes to other nodes' blocks), for /v1/cluster/routes and /metrics. */
  routes?: { report(): Promise<RoutesReport>; samples(): RouteMetricSample[] };
  /** On a cluster IPAM node: status, check, forget/leave/rejoin, and the cluster's metrics. */
  cluster?: {
    status(): Promise<unknown>;
    check(): Promise<unknown>;
    forget(node: string, force: boolean): Promise<unknown>;
    leave(): Promise<unknown>;
    rejoin(): Promise<void>;
    metricsText(): string;
  };
}

/** HTTP status for a CNI code when the raising code did not choose one. */
function statusOf(err: CniError): number {
  if (err instanceof ServiceError) return err.status;
  switch (err.code) {
    case ErrorCode.IncompatibleCniVersion:
    case ErrorCode.UnsupportedField:
    case ErrorCode.InvalidEnvironmentVariables:
    case ErrorCode.DecodingFailure:
    case ErrorCode.InvalidNetworkConfig:
      return 400;
    case ErrorCode.UnknownContainer:
      return 404;
    case ErrorCode.TryAgainLater:
    case ErrorCode.PluginNotAvailable:
    case ErrorCode.PluginNotAvailableLimitedConnectivity:
      return 503;
    default:
      return 500;
  }
}

const CNI_ROUTES: ReadonlyMap<string, Method<unknown>> = new Map(
  [Allocate, Release, Check, Status].map((m) => [m.path, m]),
);

type Reply = { status?: number; body: unknown } | string | { raw: RawReply };

/** The routes of berth-ipam's calls that change or check leases (STATUS, polled, is not among them). */
const IPAM_CALL_ROUTES = new Set(['POST /v1/allocate', 'POST /v1/release', 'POST /v1/check', 'POST /v1/gc']);

export class BerthServer {
  readonly http: http.Server;
  private inFlight = 0;
  private draining = false;
  /** Stopping while still listening (systemd's socket): IPAM calls get 503 instead of being served. */
  private refusingNew = false;
  private get writerUids(): readonly number[] {
    return this.o.writerUids ?? [0];
  }
  /** Monotonic: uptime does not follow steps of the wall clock. */
  private readonly started = performance.now();
  private readonly idleWaiters: (() => void)[] = [];

  constructor(private readonly o: ServerOptions) {
    this.http = http.createServer(
      { requestTimeout: 30_000, headersTimeout: 10_000, keepAliveTimeout: 5_000 },
      (req, res) => {
        this.handle(req, res).catch((err: unknown) =>
          this.o.log.log('error', 'request handler failed', { error: String(err) }),
        );
      },
    );
    // A malformed request line or headers: answer in the same JSON shape, then drop the connection.
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      if (socket.writable && err.code !== 'ECONNRESET') {
        const body = JSON.stringify(
          new CniError(ErrorCode.DecodingFailure, `bad HTTP request: ${err.message}`).toJSON(),
        );
        socket.end(
          `HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
        );
      } else {
        socket.destroy();
      }
    });
  }

  /** Requests read and not yet answered. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * Resolves when every request already read has been answered. Connections stop being taken at once, so
   * that callers find no daemon and run on their own; except with `keepListening` (systemd's socket, which
   * systemd keeps listening on: a connection would wait in its queue for the next berthd), where new calls
   * are answered 503 "did nothing" until the last one in flight is done.
   */
  async shutdown(opts: { keepListening?: boolean } = {}): Promise<void> {
    this.draining = true;
    this.refusingNew = opts.keepListening === true;
    const close = (): Promise<void> => new Promise<void>((resolve) => this.http.close(() => resolve()));
    const closed = opts.keepListening === true ? undefined : close();
    this.http.closeIdleConnections();
    // A request can start while the stores drain (one read before the listener closed, or, on systemd's
    // socket, a new one answered 503): wait for it too, or closing the connections below cuts its reply
    // and a caller that sent its whole request must report code 11 instead of running it itself.
    do {
      if (this.inFlight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      await this.o.service.drain();
    } while (this.inFlight > 0);
    const closing = closed ?? close();
    this.http.closeAllConnections();
    await closing;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://berthd');
    } catch {
      // `//`, `//:99999`: no route, and nothing counted in flight that a drain would wait for.
      const err = new CniError(
        ErrorCode.DecodingFailure,
        `bad request target: ${String(req.url).slice(0, 200)}`,
      );
      this.send(res, 400, JSON.stringify(err.toJSON()));
      return;
    }
    this.inFlight++;
    const t0 = process.hrtime.bigint();
    const route = this.routeName(req.method ?? 'GET', url.pathname);
    let gone = false;
    const clientGone = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) {
        gone = true;
        clientGone.abort();
      }
    });
    try {
      const reply: Reply =
        url.pathname === CNI_CALL_PATH
          ? await serveCniCall(req, {
              plugins: this.o.plugins,
              draining: this.draining,
              writerUids: this.writerUids,
              clientGone: clientGone.signal,
              readJson: () => this.readJson(req),
              deliver: (raw) => this.deliverRaw(res, raw),
            })
          : await this.dispatch(req, url, () => gone);
      let status = 200;
      if (typeof reply === 'string') this.send(res, 200, reply, 'text/plain; version=0.0.4');
      else if ('raw' in reply) {
        status = reply.raw.status;
        if (!('sent' in reply)) this.sendRaw(res, reply.raw);
      } else {
        status = reply.status ?? 200;
        this.send(res, status, JSON.stringify(reply.body));
      }
      this.o.metrics.inc('berthd_requests_total', 'Requests answered, by route and HTTP status.', {
        route,
        status: String(status),
      });
    } catch (err) {
      const cni = toCniError(err);
      const status = statusOf(cni);
      if (!(err instanceof CniError))
        this.o.log.log('error', 'unexpected failure', {
          route,
          error: err instanceof Error ? (err.stack ?? err.message) : String(err),
        });
      // berth-ipam's calls (its program forwards them here) fail as a plugin call does: one line at warn.
      else
        this.o.log.log(IPAM_CALL_ROUTES.has(route) ? 'warn' : 'info', 'request failed', {
          route,
          code: cni.code,
          msg: shortLogLine(cni.message),
        });
      this.o.metrics.inc(
        'berthd_errors_total',
        'Requests answered with a CNI error, by route and CNI code.',
        { route, code: String(cni.code) },
      );
      this.o.metrics.inc('berthd_requests_total', 'Requests answered, by route and HTTP status.', {
        route,
        status: String(status),
      });
      this.send(res, status, JSON.stringify(cni.toJSON()));
    } finally {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      this.o.metrics.observeLatency(route, seconds);
      this.o.log.log('debug', 'request', {
        route,
        status: res.statusCode,
        ms: Math.round(seconds * 1e6) / 1e3,
        gone,
      });
      this.inFlight--;
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private routeName(method: string, path: string): string {
    if (path.startsWith('/v1/leases/')) return `${method} /v1/leases/:id`;
    if (path.startsWith('/v1/cluster/nodes/')) return `${method} /v1/cluster/nodes/:node/forget`;
    if (CNI_ROUTES.has(path) || path === Gc.path) return `${method} ${path}`;
    if (
      [
        CNI_CALL_PATH,
        '/v1/leases',
        '/v1/status',
        '/v1/health',
        '/v1/metrics',
        '/metrics',
        '/v1/cluster/routes',
        '/v1/cluster/status',
        '/v1/cluster/check',
        '/v1/cluster/leave',
        '/v1/cluster/rejoin',
      ].includes(path)
    )
      return `${method} ${path}`;
    return 'unknown';
  }

  /**
   * sendRaw, resolving true once the reply is in the caller's socket, false when the caller had gone. Not
   * 'finish' nor writableFinished: they only say the bytes left Node. A write to a socket whose peer has
   * closed fails with EPIPE, and only the socket's error says so, by the time the response closes.
   */
  private deliverRaw(res: http.ServerResponse, raw: RawReply): Promise<boolean> {
    const socket = res.socket;
    if (socket === null || res.destroyed || res.headersSent) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        res.removeListener('close', closed);
        res.destroy();
        resolve(false);
      }, this.o.replyDeadlineMs ?? 10_000);
      const closed = (): void => {
        clearTimeout(timer);
        resolve(socket.errored === null);
      };
      res.once('close', closed);
      this.sendRaw(res, raw);
    });
  }

  /** A warm-path reply: the exact bytes, always with Content-Length (the shim reads no chunked encoding). */
  private sendRaw(res: http.ServerResponse, raw: RawReply): void {
    if (res.destroyed || res.headersSent) return;
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/octet-stream',
      ...raw.headers,
      'content-length': raw.body.length,
    };
    if (this.draining) headers.connection = 'close';
    res.writeHead(raw.status, headers).end(raw.body);
  }

  private send(res: http.ServerResponse, status: number, body: string, type = 'application/json'): void {
    if (res.destroyed || res.headersSent) return;
    const headers: http.OutgoingHttpHeaders = {
      'content-type': type,
      'content-length': Buffer.byteLength(body),
    };
    if (this.draining) headers.connection = 'close';
    res.writeHead(status, headers).end(body);
  }

  /** Reads the whole body (bounded) and parses it as JSON. */
  private readJson(
    req: http.IncomingMessage,
    limit = this.o.maxBodyBytes ?? MAX_BODY_BYTES,
  ): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const declared = Number(req.headers['content-length'] ?? '0');
      if (declared > limit) {
        req.resume();
        reject(
          new ServiceError(
            413,
            ErrorCode.DecodingFailure,
            `request body of ${declared} bytes exceeds the limit of ${limit}`,
          ),
        );
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      let failed = false;
      req.on('data', (c: Buffer) => {
        if (failed) return;
        size += c.length;
        if (size > limit) {
          failed = true;
          reject(
            new ServiceError(
              413,
              ErrorCode.DecodingFailure,
              `request body exceeds the limit of ${limit} bytes`,
            ),
          );
          return;
        }
        chunks.push(c);
      });
      req.on('end', () => {
        if (failed) return;
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          resolve(JSON.parse(text));
        } catch (err) {
          reject(
            new ServiceError(
              400,
              ErrorCode.DecodingFailure,
              `request body is not JSON: ${(err as Error).message}`,
            ),
          );
        }
      });
      req.on('error', (err) => {
        failed = true;
        reject(new ServiceError(400, ErrorCode.IoFailure, `request body not received: ${err.message}`));
      });
      // The client went away before its body was complete: nothing was started, nothing to undo.
      req.on('aborted', () => {
        failed = true;
        reject(
          new ServiceError(
            400,
            ErrorCode.IoFailure,
            'client closed the connection before the body was complete',
          ),
        );
      });
    });
  }

  /**
   * The network/dataDir filter of an admin request. A data dir berthd does not serve yet is opened as root
   * (its .berth state made or repaired): named by a reader that is no writer (the socket opened to a group
   * for `berth status`), it is refused, or any user could have root write under a directory of theirs.
   */
  private filterOf(url: URL, req: http.IncomingMessage): LeaseFilter {
    const f: LeaseFilter = {};
    const network = url.searchParams.get('network');
    const dataDir = url.searchParams.get('dataDir');
    if (network !== null && network !== '') f.network = network;
    if (dataDir !== null && dataDir !== '') {
      if (!dataDir.startsWith('/'))
        throw new ServiceError(
          400,
          ErrorCode.InvalidEnvironmentVariables,
          'dataDir must be an absolute path',
        );
      f.dataDir = dataDir;
      const notWriter = this.o.service.servesDataDir(dataDir) ? undefined : notAWriter(req, this.writerUids);
      if (notWriter !== undefined)
        throw new ServiceError(
          403,
          ErrorCode.Internal,
          `dataDir ${dataDir} is not served by berthd: naming another is for root only (${notWriter})`,
        );
    }
    return f;
  }

  private async dispatch(
    req: http.IncomingMessage,
    url: URL,
    clientGone: () => boolean,
  ): Promise<{ status?: number; body: unknown } | string> {
    const method = req.method ?? 'GET';
    const path = url.pathname;
    const service = this.o.service;
    // Anything but a read is for a writer (writerUids, root by default), whatever the socket's mode.
    const notWriter = method === 'GET' || method === 'HEAD' ? undefined : notAWriter(req, this.writerUids);
    if (notWriter !== undefined)
      throw new ServiceError(
        403,
        ErrorCode.Internal,
        `berthd serves ${method} ${path} to root only (${notWriter})`,
      );
    const wrongMethod = (allowed: string): never => {
      throw new ServiceError(405, ErrorCode.UnsupportedField, `${method} ${path}: use ${allowed}`);
    };

    const cni = CNI_ROUTES.get(path);
    // GET /v1/status is the daemon's own status; POST carries a CNI STATUS.
    if ((cni !== undefined && !(path === Status.path && method === 'GET')) || path === Gc.path) {
      if (method !== 'POST') wrongMethod('POST');
      // Only a writer gets here (above): a GC's valid list may be long.
      const body = await this.readJson(req, path === Gc.path ? MAX_GC_BODY_BYTES : undefined);
      if (path === Gc.path && typeof body === 'object' && body !== null && !('config' in body)) {
        return { body: await service.adminGc(body) };
      }
      // Stopping on systemd's socket, which keeps taking connections: nothing new starts. Not a CNI error, so
      // berth-ipam runs the call on the files itself. On its own socket berthd takes no connection once
      // stopping, and serves every request of those it took.
      if (this.refusingNew) return { status: 503, body: { draining: true, message: 'berthd is stopping' } };
      const notShared =
        this.o.hostView === undefined
          ? undefined
          : berthIpamNotShared(this.o.hostView, (body as { config?: unknown } | null)?.config);
      if (notShared !== undefined) return { status: 421, body: { notServed: true, message: notShared } };
      const m = cni ?? Gc;
      const trace: CallTrace = { reserved: [] };
      const result = await service.call(m, body, trace);
      if (clientGone() && trace.reserved.length > 0) {
        // Nobody will ever configure these addresses: give them back instead of leaking them.
        const undone = await service.undo(trace);
        this.o.log.log('warn', 'client left before the reply; allocation undone', {
          route: path,
          released: undone,
        });
      }
      return { body: result ?? { ok: true } };
    }

    if (path === '/v1/leases') {
      if (method !== 'GET') wrongMethod('GET');
      return { body: { leases: await service.list(this.filterOf(url, req)) } };
    }
    if (path.startsWith('/v1/leases/')) {
      const id = decodeURIComponent(path.slice('/v1/leases/'.length));
      if (method === 'GET') {
        const leases = await service.show(id, this.filterOf(url, req));
        if (leases.length === 0)
          throw new ServiceError(404, ErrorCode.UnknownContainer, `no lease for ${JSON.stringify(id)}`);
        return { body: { leases } };
      }
      if (method === 'DELETE') {
        const containerId = url.searchParams.get('containerId');
        const holder =
          containerId === null ? undefined : { containerId, ifname: url.searchParams.get('ifname') ?? '' };
        return { body: await service.release(id, this.filterOf(url, req), holder) };
      }
      wrongMethod('GET or DELETE');
    }
    if (path === '/v1/health') {
      if (method !== 'GET') wrongMethod('GET');
      const h: Health = { ok: !this.draining, draining: this.draining };
      return { status: this.draining ? 503 : 200, body: h };
    }
    if (path === '/v1/status') {
      const s: DaemonStatus = {
        version: 1,
        pid: process.pid,
        uptimeSeconds: Math.round((performance.now() - this.started) / 1000),
        socket: this.o.socketPath,
        draining: this.draining,
        networks: await service.networkViews(this.filterOf(url, req)),
      };
      if (this.o.plugins !== undefined) s.warm = { up: !this.draining, ...this.o.plugins.stats() };
      return { body: s };
    }
    if (path === '/metrics' || path === '/v1/metrics') {
      if (method !== 'GET') wrongMethod('GET');
      return this.metricsText();
    }
    if (path.startsWith('/v1/cluster/') && path !== '/v1/cluster/routes') {
      const cluster = this.o.cluster;
      if (cluster === undefined)
        throw new ServiceError(
          404,
          ErrorCode.UnsupportedField,
          'this berthd is not a cluster node (no --etcd-endpoints)',
        );
      if (path === '/v1/cluster/status') {
        if (method !== 'GET') wrongMethod('GET');
        return { body: await cluster.status() };
      }
      if (path === '/v1/cluster/check') {
        if (method !== 'GET') wrongMethod('GET');
        return { body: await cluster.check() };
      }
      if (path === '/v1/cluster/leave') {
        if (method !== 'POST') wrongMethod('POST');
        return { body: await cluster.leave() };
      }
      if (path === '/v1/cluster/rejoin') {
        if (method !== 'POST') wrongMethod('POST');
        await cluster.rejoin();
        return { body: { ok: true } };
      }
      const forget = /^\/v1\/cluster\/nodes\/([^/]+)\/forget$/.exec(path);
      if (forget !== null) {
        if (method !== 'POST') wrongMethod('POST');
        return {
          body: await cluster.forget(decodeURIComponent(forget[1]!), url.searchParams.get('force') === '1'),
        };
      }
    }
    if (path === '/v1/cluster/routes') {
      if (method !== 'GET') wrongMethod('GET');
      if (this.o.routes === undefined)
        throw new ServiceError(
          404,
          ErrorCode.UnsupportedField,
          'this berthd programs no routes between nodes (it is not a cluster node)',
        );
      return { body: await this.o.routes.report() };
    }
    throw new ServiceError(
      404,
      ErrorCode.UnsupportedField,
      `no route ${method} ${path} (see /v1/health, /v1/leases, /v1/status, /metrics)`,
    );
  }

  metricsText(): string {
    const sampled: SampledValue[] = this.o.service.poolGauges().flatMap((p) => {
      // data_dir as on berthd_leases: the same network name in two data dirs is two series, not a duplicate.
      const labels = { network: p.network, data_dir: p.dataDir, range_set: String(p.rangeSet) };
      return [
        {
          name: 'berthd_pool_size',
          help: 'Addresses a range set can hand out (gateway and excluded addresses not counted).',
          labels,
          value: p.size,
        },
        {
          name: 'berthd_pool_used',
          help: 'Addresses of a range set held by a lease.',
          labels,
          value: p.used,
        },
        { name: 'berthd_pool_free', help: 'Addresses of a range set still free.', labels, value: p.free },
      ];
    });
    for (const n of this.o.service.leaseGauges())
      sampled.push({
        name: 'berthd_leases',
        help: 'Leases held in a network directory (every data dir served, remembered across restarts).',
        labels: { network: n.network, data_dir: n.dataDir },
        value: n.leases,
      });
    const b = this.o.service.batchStats();
    // Sums since start, kept by the network stores: counters, so they are named `_total` (and seconds
    // `_seconds_total`); the service keeps the sums of networks it forgot, so none ever goes down.
    const counter = (name: string, help: string, value: number): SampledValue => ({
      name,
      help,
      labels: {},
      value,
      type: 'counter',
    });
    sampled.push(
      counter('berthd_batches_total', 'Batches committed under one flock since start.', b.batches),
      counter(
        'berthd_batched_requests_total',
        'Store transactions run inside those batches.',
        b.batchedRequests,
      ),
      counter(
        'berthd_fsync_rounds_total',
        'Group fsync rounds (each covers every batch committed meanwhile).',
        b.fsyncRounds,
      ),
      counter(
        'berthd_rescans_total',
        'Times a network was re-read because its directory changed outside the daemon.',
        b.rescans,
      ),
      counter(
        'berthd_lock_waits_total',
        'Attempts to take a network flock that found it held by others.',
        b.lockWaits,
      ),
      counter(
        'berthd_lock_wait_seconds_total',
        'Time spent waiting for network flocks held by others.',
        b.lockWaitSeconds,
      ),
      counter(
        'berthd_batch_seconds_total',
        'Time batches held a network lock (running requests and writing files).',
        b.batchSeconds,
      ),
      counter(
        'berthd_fsync_seconds_total',
        'Time fsync rounds took (requests wait for them before their reply).',
        b.fsyncSeconds,
      ),
      { name: 'berthd_in_flight', help: 'Requests being served.', labels: {}, value: this.inFlight },
    );
    if (this.o.routes !== undefined) sampled.push(...this.o.routes.samples());
    return this.o.metrics.render(sampled) + (this.o.cluster?.metricsText() ?? '');
  }
}
