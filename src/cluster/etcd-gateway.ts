// A client of etcd's own HTTP/JSON gateway (the v3 API at /v3/…, served on every member's client port) over
// `node:http`/`node:https`: about 3 ms to load instead of ~100 ms for a gRPC client, no dependency, and as
// fast on loopback (design/cluster-ipam.md 2.2). What a full client would bring is here: endpoint rotation
// with a short per-request timeout, /health probing of members that failed, lease grant/keepalive/revoke,
// watch with reconnect and compaction handling, TLS and token auth.
//
// The gateway speaks protobuf-JSON: keys and values are base64, int64 fields (revisions, lease ids) are JSON
// strings. They stay strings here (compare them with `revisionCompare`/BigInt): lease ids exceed 2^53.
import * as http from 'node:http';
import * as https from 'node:https';

export interface EtcdTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

export interface EtcdGatewayOptions {
  /** Client URLs, `http://host:port` or `https://host:port`. */
  endpoints: readonly string[];
  /** Per request, before the next member is tried (etcd answers 503 only after 7 s without quorum). */
  timeoutMs?: number;
  tls?: EtcdTls;
  auth?: { user: string; password: string };
  /** Every finished request: for metrics. */
  onRequest?: (op: string, result: 'ok' | 'error', seconds: number) => void;
  /** The client moved to another member. */
  onFailover?: (from: string, to: string, reason: string) => void;
  /** Monotonic milliseconds (tests replace it). */
  clock?: () => number;
}

/** A key-value as the gateway returns it, decoded. Revisions, version and lease stay decimal strings. */
export interface KeyValue {
  key: string;
  value: string;
  createRevision: string;
  modRevision: string;
  version: string;
  lease: string;
}

export type CompareTarget =
  | { target: 'CREATE'; createRevision: string }
  | { target: 'MOD'; modRevision: string }
  | { target: 'VERSION'; version: string }
  | { target: 'VALUE'; value: string }
  | { target: 'LEASE'; lease: string };

export type Compare = CompareTarget & { key: string; result?: 'EQUAL' | 'NOT_EQUAL' | 'GREATER' | 'LESS' };

export type TxnOp =
  | { put: { key: string; value: string; lease?: string } }
  | { range: { key: string; prefix?: boolean } }
  | { deleteRange: { key: string; prefix?: boolean } };

export interface TxnRequest {
  compare: Compare[];
  success: TxnOp[];
  failure: TxnOp[];
}

export type TxnOpResponse =
  | { range: { kvs: KeyValue[]; count: string } }
  | { put: Record<string, never> }
  | { deleteRange: { deleted: string } };

export interface TxnResponse {
  succeeded: boolean;
  revision: string;
  responses: TxnOpResponse[];
}

export interface RangeResponse {
  kvs: KeyValue[];
  revision: string;
  count: string;
}

export interface WatchEvent {
  type: 'PUT' | 'DELETE';
  kv: KeyValue;
  prevKv?: KeyValue;
}

export interface WatchHandlers {
  /** Events in revision order. */
  onEvents(events: WatchEvent[], revision: string): void;
  /**
   * The history the watch needs was compacted away: re-read the prefix (a range) and resume from the
   * returned revision + 1. The watch resumes from what this resolves to.
   */
  onReset(): Promise<string>;
  onError?(err: Error): void;
}

export interface Watcher {
  close(): void;
}

/** An etcd request that got no usable answer (unreachable, timed out, no quorum): the caller may retry. */
export class EtcdUnavailableError extends Error {
  /**
   * @param membersListening some member accepted the connection but could not serve (it timed out or said no
   * leader / no quorum): etcd is probably between leaders, which takes a second or two after a leader dies, so a
   * retry soon can succeed. False when no member accepted a connection at all (etcd is down).
   */
  constructor(
    message: string,
    readonly membersListening = false,
  ) {
    super(message);
    this.name = 'EtcdUnavailableError';
  }
}

/** etcd answered with an error of its own (bad request, permission, lease not found …). */
export class EtcdRequestError extends Error {
  constructor(
    message: string,
    readonly httpStatus: number,
    readonly grpcCode: number | undefined,
  ) {
    super(message);
    this.name = 'EtcdRequestError';
  }
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: unknown): string =>
  typeof s === 'string' ? Buffer.from(s, 'base64').toString('utf8') : '';

/** The range end that makes a range cover every key starting with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`). */
export function prefixEnd(prefix: string): string {
  const bytes = Buffer.from(prefix, 'utf8');
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i]! < 0xff) {
      const end = Buffer.from(bytes.subarray(0, i + 1));
      end[i]!++;
      return end.toString('base64');
    }
  }
  return Buffer.from([0]).toString('base64');
}

/** -1, 0, 1 for two int64 decimal strings. */
export function revisionCompare(a: string, b: string): number {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * JSON.parse, but an integer literal too long for a double (outside strings) arrives as a string. The
 * gateway quotes int64 already; this keeps a gateway or proxy that does not from silently rounding a lease id.
 */
export function parseJsonKeepingBigInts(text: string): unknown {
  let out = '';
  let last = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) {
      inString = true;
      continue;
    }
    if ((c >= 0x30 && c <= 0x39) || c === 0x2d) {
      let j = i + 1;
      while (j < text.length && /[0-9.eE+-]/.test(text[j]!)) j++;
      const lit = text.slice(i, j);
      if (/^-?\d{16,}$/.test(lit)) {
        out += `${text.slice(last, i)}"${lit}"`;
        last = j;
      }
      i = j - 1;
    }
  }
  return JSON.parse(last === 0 ? text : out + text.slice(last));
}

function int64(v: unknown): string {
  if (v === undefined || v === null) return '0';
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v);
  throw new Error(`etcd gateway: ${JSON.stringify(v)} is not an int64`);
}

type Json = Record<string, unknown>;

function decodeKv(raw: unknown): KeyValue {
  const o = (raw ?? {}) as Json;
  return {
    key: unb64(o.key),
    value: unb64(o.value),
    createRevision: int64(o.create_revision),
    modRevision: int64(o.mod_revision),
    version: int64(o.version),
    lease: int64(o.lease),
  };
}

function encodeCompare(c: Compare): Json {
  const out: Json = { key: b64(c.key), result: c.result ?? 'EQUAL', target: c.target };
  switch (c.target) {
    case 'CREATE':
      out.create_revision = c.createRevision;
      break;
    case 'MOD':
      out.mod_revision = c.modRevision;
      break;
    case 'VERSION':
      out.version = c.version;
      break;
    case 'VALUE':
      out.value = b64(c.value);
      break;
    case 'LEASE':
      out.lease = c.lease;
      break;
  }
  return out;
}

function encodeOp(op: TxnOp): Json {
  if ('put' in op) {
    const put: Json = { key: b64(op.put.key), value: b64(op.put.value) };
    if (op.put.lease !== undefined) put.lease = op.put.lease;
    return { request_put: put };
  }
  if ('range' in op) {
    const r: Json = { key: b64(op.range.key) };
    if (op.range.prefix === true) r.range_end = prefixEnd(op.range.key);
    return { request_range: r };
  }
  const d: Json = { key: b64(op.deleteRange.key) };
  if (op.deleteRange.prefix === true) d.range_end = prefixEnd(op.deleteRange.key);
  return { request_delete_range: d };
}

function decodeOpResponse(raw: unknown): TxnOpResponse {
  const o = (raw ?? {}) as Json;
  if (o.response_range !== undefined) {
    const r = o.response_range as Json;
    return { range: { kvs: ((r.kvs as unknown[]) ?? []).map(decodeKv), count: int64(r.count) } };
  }
  if (o.response_delete_range !== undefined) {
    return { deleteRange: { deleted: int64((o.response_delete_range as Json).deleted) } };
  }
  return { put: {} };
}

function headerRevision(o: Json): string {
  return int64((o.header as Json | undefined)?.revision);
}

interface Endpoint {
  url: URL;
  /** Monotonic ms until which this member is skipped unless its /health says otherwise. */
  suspectUntil: number;
}

/** A member's host for the request: an IPv6 URL's hostname keeps its brackets, which the lookup refuses. */
function hostnameOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

/** An error of the gateway as text: a string, or (streams: keepalive, watch) an object with a message. */
function errorText(e: unknown): string {
  if (typeof e === 'string') return e;
  if (typeof e === 'object' && e !== null && typeof (e as { message?: unknown }).message === 'string')
    return (e as { message: string }).message;
  return JSON.stringify(e);
}

/** A transport error that says nothing listens there (as opposed to a timeout or a dropped connection). */
function notListening(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return (
    code === 'ECONNREFUSED' ||
    code === 'EHOSTUNREACH' ||
    code === 'ENETUNREACH' ||
    code === 'EADDRNOTAVAIL' ||
    code === 'ENOTFOUND'
  );
}

/** One watch's stream on one member: dropped (and reconnected elsewhere) when that member is suspected. */
interface WatchStream {
  idx: number;
  drop(why: Error): void;
}

export class EtcdGateway {
  private readonly endpoints: Endpoint[];
  /** Watch streams open now, with their member (see suspect). */
  private readonly watchStreams = new Set<WatchStream>();
  private current = 0;
  private readonly timeoutMs: number;
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private readonly httpsAgent: https.Agent;
  private token: string | undefined;
  private authenticating: Promise<void> | undefined;
  private readonly clock: () => number;
  private closed = false;
  /** Monotonic send time of the last request etcd answered (any answer from a member counts). */
  lastContact: number | undefined;
  /** Requests sent (each attempt on a member counts once): etcd round trips. */
  roundTrips = 0;

  constructor(private readonly o: EtcdGatewayOptions) {
    if (o.endpoints.length === 0) throw new Error('etcd: at least one endpoint is needed');
    this.endpoints = o.endpoints.map((e) => {
      const url = new URL(e);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        throw new Error(`etcd endpoint ${e}: only http:// and https:// are supported`);
      }
      return { url, suspectUntil: 0 };
    });
    this.timeoutMs = o.timeoutMs ?? 2000;
    this.clock = o.clock ?? (() => performance.now());
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 64, ...this.tlsOptions() });
  }

  /** CA, client certificate and key for https members: the pooled agent's, and the watch's (no agent). */
  private tlsOptions(): Pick<https.AgentOptions, 'ca' | 'cert' | 'key'> {
    const t = this.o.tls;
    return {
      ...(t?.ca !== undefined ? { ca: t.ca } : {}),
      ...(t?.cert !== undefined ? { cert: t.cert } : {}),
      ...(t?.key !== undefined ? { key: t.key } : {}),
    };
  }

  get endpointInUse(): string {
    return this.endpoints[this.current]!.url.origin;
  }

  close(): void {
    this.closed = true;
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  private agentFor(url: URL): http.Agent {
    return url.protocol === 'https:' ? this.httpsAgent : this.httpAgent;
  }

  /** One HTTP exchange with one member; resolves with the status and body, rejects on transport failure. */
  private exchange(
    ep: Endpoint,
    method: 'GET' | 'POST',
    path: string,
    body: string | undefined,
    timeoutMs: number,
  ): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const mod = ep.url.protocol === 'https:' ? https : http;
      const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json' };
      if (body !== undefined) headers['content-length'] = Buffer.byteLength(body);
      if (this.token !== undefined && path !== '/v3/auth/authenticate') headers.authorization = this.token;
      const req = mod.request(
        {
          protocol: ep.url.protocol,
          hostname: hostnameOf(ep.url),
          port: ep.url.port,
          method,
          path,
          headers,
          agent: this.agentFor(ep.url),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            clearTimeout(timer);
            resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
          });
          res.on('error', (err) => {
            clearTimeout(timer);
            reject(err);
          });
        },
      );
      const timer = setTimeout(() => {
        req.destroy(new Error(`no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end(body);
    });
  }

  /** GET /health of one member: true when it has a leader and answers (1 ms healthy, 503 within 1 s without quorum). */
  async health(endpoint?: string): Promise<boolean> {
    const ep =
      endpoint === undefined
        ? this.endpoints[this.current]!
        : (this.endpoints.find((e) => e.url.origin === new URL(endpoint).origin) ?? {
            url: new URL(endpoint),
            suspectUntil: 0,
          });
    return (await this.probe(ep, Math.min(this.timeoutMs, 1500))) === 'healthy';
  }

  /** /health of one member, telling a member that is up without a leader from one that accepts no connection. */
  private async probe(ep: Endpoint, timeoutMs: number): Promise<'healthy' | 'leaderless' | 'down'> {
    try {
      const r = await this.exchange(ep, 'GET', '/health', undefined, timeoutMs);
      if (r.status !== 200) return 'leaderless';
      const o = JSON.parse(r.text) as { health?: unknown };
      return o.health === true || o.health === 'true' ? 'healthy' : 'leaderless';
    } catch (err) {
      return notListening(err) ? 'down' : 'leaderless';
    }
  }

  /** Health of every member, for `berth cluster status`. */
  async memberHealth(): Promise<{ endpoint: string; healthy: boolean }[]> {
    return Promise.all(
      this.endpoints.map(async (e) => ({ endpoint: e.url.origin, healthy: await this.health(e.url.href) })),
    );
  }

  private async authenticate(): Promise<void> {
    const auth = this.o.auth;
    if (auth === undefined) return;
    this.authenticating ??= (async () => {
      try {
        // The old token stays until the new one arrives: a call sent meanwhile (to another member, in a
        // failover) gets an auth refusal and retries after this, where no token at all was a refusal
        // ("user name is empty") that is not retried.
        const r = (await this.call(
          'auth',
          '/v3/auth/authenticate',
          { name: auth.user, password: auth.password },
          true,
        )) as Json;
        if (typeof r.token !== 'string')
          throw new EtcdRequestError('etcd: authenticate returned no token', 200, undefined);
        this.token = r.token;
      } finally {
        this.authenticating = undefined;
      }
    })();
    return this.authenticating;
  }

  /**
   * POSTs `body` to `path`, trying each member at most once, sticky to the last one that answered. A member
   * that timed out, refused or answered 503 is suspected; a suspected member is tried only if its /health
   * says it is fine again. Throws EtcdUnavailableError when no member gave an answer.
   */
  async call(op: string, path: string, body: unknown, skipAuth = false): Promise<unknown> {
    if (this.closed) throw new EtcdUnavailableError('etcd client closed');
    if (!skipAuth && this.o.auth !== undefined && this.token === undefined) await this.authenticate();
    const text = JSON.stringify(body);
    const problems: string[] = [];
    const n = this.endpoints.length;
    // Each member at most once per call, and first the one that answered last: other calls move `current`
    // while this one waits (during an election, to the new leader). Following `current` blindly tried one
    // member twice and never the new leader (m1, m3, m3: cluster-test's leader kill); a fixed order ignored
    // what the other calls had found meanwhile.
    const tried = new Set<number>();
    let idx = this.current;
    let listening = false;
    let retriedAuth = false;
    while (tried.size < n) {
      if (!tried.has(this.current)) idx = this.current;
      else while (tried.has(idx)) idx = (idx + 1) % n;
      const first = tried.size === 0;
      tried.add(idx);
      const ep = this.endpoints[idx]!;
      if (!first && ep.suspectUntil > this.clock()) {
        // A healthy member answers /health in about a millisecond; one that takes longer is no help to this
        // call, which may be an ADD waiting for a block (the probe used to wait up to 1.5 s).
        const state = await this.probe(ep, Math.min(this.timeoutMs, 500));
        if (state !== 'healthy') {
          if (state === 'leaderless') listening = true;
          problems.push(`${ep.url.origin}: unhealthy`);
          continue;
        }
      }
      const sent = this.clock();
      this.roundTrips++;
      let r: { status: number; text: string };
      try {
        r = await this.exchange(ep, 'POST', path, text, this.timeoutMs);
      } catch (err) {
        this.o.onRequest?.(op, 'error', (this.clock() - sent) / 1000);
        problems.push(`${ep.url.origin}: ${(err as Error).message}`);
        if (!notListening(err)) listening = true;
        this.suspect(idx, (err as Error).message);
        continue;
      }
      this.o.onRequest?.(op, r.status === 200 ? 'ok' : 'error', (this.clock() - sent) / 1000);
      let parsed: Json;
      try {
        parsed = parseJsonKeepingBigInts(r.text) as Json;
      } catch {
        parsed = { error: r.text.slice(0, 200) };
      }
      if (r.status === 200) {
        this.noteContact(sent, idx);
        return parsed;
      }
      const message = errorText(parsed.error ?? parsed.message ?? r.text.slice(0, 200));
      const code = typeof parsed.code === 'number' ? parsed.code : undefined;
      // 503 / Unavailable (14) / DeadlineExceeded (4): this member cannot serve now (no leader, no quorum).
      if (r.status === 503 || code === 14 || code === 4 || r.status >= 500) {
        listening = true;
        problems.push(`${ep.url.origin}: ${message}`);
        this.suspect(idx, message);
        continue;
      }
      // An auth refusal (401/403, Unauthenticated 16, PermissionDenied 7) is answered by a member on its own,
      // also one cut off from its peers: no sign that etcd as a whole answers, so no contact (it would
      // put off this node's self-fence).
      const authRefusal = r.status === 401 || r.status === 403 || code === 16 || code === 7;
      if (!authRefusal) this.noteContact(sent, idx);
      if (
        (code === 16 || /auth token/.test(message)) &&
        this.o.auth !== undefined &&
        !retriedAuth &&
        !skipAuth
      ) {
        retriedAuth = true;
        await this.authenticate();
        tried.delete(idx);
        continue;
      }
      throw new EtcdRequestError(`etcd ${op}: ${message}`, r.status, code);
    }
    throw new EtcdUnavailableError(`etcd unreachable (${problems.join('; ')})`, listening);
  }

  private noteContact(sent: number, idx: number): void {
    if (this.lastContact === undefined || sent > this.lastContact) this.lastContact = sent;
    this.endpoints[idx]!.suspectUntil = 0;
    if (idx !== this.current) {
      const from = this.endpoints[this.current]!.url.origin;
      this.current = idx;
      this.o.onFailover?.(from, this.endpoints[idx]!.url.origin, 'answered');
    }
  }

  private suspect(idx: number, reason: string): void {
    this.endpoints[idx]!.suspectUntil = this.clock() + 5000;
    // A member a call found unfit (hung, without quorum) may hold watch streams that will never say another
    // word, and a watch has no deadline of its own: they reconnect to another member.
    for (const stream of [...this.watchStreams]) {
      if (stream.idx === idx)
        stream.drop(new Error(`${this.endpoints[idx]!.url.origin} suspected: ${reason}`));
    }
  }

  /** Where a watch (re)connects: the member in use, unless suspected and another one is not. */
  private watchMember(): number {
    const n = this.endpoints.length;
    const now = this.clock();
    for (let k = 0; k < n; k++) {
      const idx = (this.current + k) % n;
      if (this.endpoints[idx]!.suspectUntil <= now) return idx;
    }
    return this.current;
  }

  async range(
    key: string,
    opts: { prefix?: boolean; limit?: number; serializable?: boolean } = {},
  ): Promise<RangeResponse> {
    const body: Json = { key: b64(key) };
    if (opts.prefix === true) body.range_end = prefixEnd(key);
    if (opts.limit !== undefined) body.limit = String(opts.limit);
    if (opts.serializable === true) body.serializable = true;
    const r = (await this.call('range', '/v3/kv/range', body)) as Json;
    return {
      kvs: ((r.kvs as unknown[]) ?? []).map(decodeKv),
      revision: headerRevision(r),
      count: int64(r.count),
    };
  }

  async get(key: string): Promise<KeyValue | undefined> {
    return (await this.range(key)).kvs[0];
  }

  async put(key: string, value: string, lease?: string): Promise<string> {
    const body: Json = { key: b64(key), value: b64(value) };
    if (lease !== undefined) body.lease = lease;
    return headerRevision((await this.call('put', '/v3/kv/put', body)) as Json);
  }

  async deleteRange(key: string, opts: { prefix?: boolean } = {}): Promise<string> {
    const body: Json = { key: b64(key) };
    if (opts.prefix === true) body.range_end = prefixEnd(key);
    return int64(((await this.call('delete', '/v3/kv/deleterange', body)) as Json).deleted);
  }

  async txn(t: TxnRequest, op = 'txn'): Promise<TxnResponse> {
    const r = (await this.call(op, '/v3/kv/txn', {
      compare: t.compare.map(encodeCompare),
      success: t.success.map(encodeOp),
      failure: t.failure.map(encodeOp),
    })) as Json;
    return {
      succeeded: r.succeeded === true,
      revision: headerRevision(r),
      responses: ((r.responses as unknown[]) ?? []).map(decodeOpResponse),
    };
  }

  /** Grants a lease; the id is a decimal string (it does not fit a double). */
  async leaseGrant(ttlSeconds: number): Promise<{ id: string; ttl: number }> {
    const r = (await this.call('lease_grant', '/v3/lease/grant', { TTL: String(ttlSeconds) })) as Json;
    if (typeof r.error === 'string' && r.error !== '')
      throw new EtcdRequestError(`etcd lease grant: ${r.error}`, 200, undefined);
    return { id: int64(r.ID), ttl: Number(int64(r.TTL)) };
  }

  /** One keepalive; returns the remaining TTL in seconds, 0 when the lease no longer exists. */
  async leaseKeepAlive(id: string): Promise<number> {
    const r = (await this.call('lease_keepalive', '/v3/lease/keepalive', { ID: id })) as Json;
    const result = (r.result ?? r) as Json;
    if (r.error !== undefined) {
      const e = r.error as Json;
      const code =
        typeof e.grpc_code === 'number' ? e.grpc_code : typeof e.code === 'number' ? e.code : undefined;
      if (code === 14 || e.http_code === 503)
        throw new EtcdUnavailableError(`etcd keepalive: ${String(e.message)}`);
      throw new EtcdRequestError(`etcd keepalive: ${String(e.message)}`, 200, code);
    }
    return Number(int64(result.TTL));
  }

  async leaseRevoke(id: string): Promise<void> {
    try {
      await this.call('lease_revoke', '/v3/lease/revoke', { ID: id });
    } catch (err) {
      if (err instanceof EtcdRequestError && /not found/.test(err.message)) return;
      throw err;
    }
  }

  /** Remaining seconds of a lease, -1 when it does not exist. */
  async leaseTimeToLive(id: string): Promise<number> {
    const r = (await this.call('lease_ttl', '/v3/lease/timetolive', { ID: id })) as Json;
    return Number(int64(r.TTL));
  }

  /**
   * Watches every key under `prefix` from `fromRevision` (inclusive), reconnecting (next member when this one
   * fails) from the last revision seen, and calling `onReset` when etcd compacted the revisions needed.
   */
  watch(prefix: string, fromRevision: string, handlers: WatchHandlers): Watcher {
    let next = fromRevision;
    let closed = false;
    let req: http.ClientRequest | undefined;
    let open: WatchStream | undefined;
    let retry: NodeJS.Timeout | undefined;
    const reconnect = (why: Error | undefined, delayMs: number): void => {
      req = undefined;
      if (closed || this.closed) return;
      if (why !== undefined) handlers.onError?.(why);
      retry = setTimeout(start, delayMs);
      retry.unref();
    };
    const start = (): void => {
      if (closed || this.closed) return;
      const idx = this.watchMember();
      const ep = this.endpoints[idx]!;
      const mod = ep.url.protocol === 'https:' ? https : http;
      const body = JSON.stringify({
        create_request: {
          key: b64(prefix),
          range_end: prefixEnd(prefix),
          start_revision: next,
          prev_kv: true,
        },
      });
      const headers: http.OutgoingHttpHeaders = {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      };
      if (this.token !== undefined) headers.authorization = this.token;
      let settled = false;
      /** Ends this stream once (its request, its place among the open ones); false if it had ended already. */
      const settle = (): boolean => {
        if (settled) return false;
        settled = true;
        this.watchStreams.delete(stream);
        r.destroy();
        return true;
      };
      const stream: WatchStream = (open = {
        idx,
        drop: (why) => {
          if (settle()) reconnect(why, 0);
        },
      });
      this.watchStreams.add(stream);
      const fail = (err: Error): void => {
        if (!settle()) return;
        // Not the member's fault when the stream merely ended: try the same one again first.
        if (!/ended/.test(err.message)) {
          this.suspect(idx, err.message);
          this.current = (idx + 1) % this.endpoints.length;
        }
        reconnect(err, 1000);
      };
      const r = mod.request(
        {
          protocol: ep.url.protocol,
          hostname: hostnameOf(ep.url),
          port: ep.url.port,
          method: 'POST',
          path: '/v3/watch',
          headers,
          agent: false,
          // Without an agent the request carries its own TLS settings (the watch failed every handshake).
          ...(ep.url.protocol === 'https:' ? this.tlsOptions() : {}),
        },
        (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            fail(new Error(`watch on ${ep.url.origin}: HTTP ${res.statusCode}`));
            return;
          }
          let buf = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            buf += chunk;
            let nl: number;
            while ((nl = buf.indexOf('\n')) !== -1) {
              const line = buf.slice(0, nl).trim();
              buf = buf.slice(nl + 1);
              if (line === '') continue;
              let msg: Json;
              try {
                msg = parseJsonKeepingBigInts(line) as Json;
              } catch {
                continue;
              }
              // No contact from a watch: a member without quorum still creates watches (the gateway sends
              // no require-leader), so a stream says nothing of whether etcd as a whole answers.
              if (msg.error !== undefined) {
                fail(new Error(`watch: ${errorText(msg.error)}`));
                return;
              }
              const result = (msg.result ?? {}) as Json;
              const compacted = int64(result.compact_revision);
              if (compacted !== '0') {
                if (!settle()) return;
                handlers.onReset().then(
                  (rev) => {
                    next = (BigInt(rev) + 1n).toString();
                    reconnect(undefined, 0);
                  },
                  (err: unknown) => {
                    reconnect(err as Error, 1000);
                  },
                );
                return;
              }
              if (result.canceled === true) {
                // etcd cancels a watch it will not serve (an expired or invalid token: after an outage longer
                // than --auth-token-ttl, the watch comes back first with the old one) and keeps the stream
                // open, silent: ended here, or no event would come again.
                const why = new Error(
                  `watch canceled by etcd: ${String(result.cancel_reason ?? 'no reason')}`,
                );
                if (!settle()) return;
                if (this.o.auth !== undefined && /auth token/i.test(why.message)) {
                  this.authenticate().then(
                    () => reconnect(why, 0),
                    (err: unknown) => reconnect(err as Error, 1000),
                  );
                } else reconnect(why, 1000);
                return;
              }
              const events = ((result.events as unknown[]) ?? []).map((e): WatchEvent => {
                const o = e as Json;
                const ev: WatchEvent = { type: o.type === 'DELETE' ? 'DELETE' : 'PUT', kv: decodeKv(o.kv) };
                if (o.prev_kv !== undefined) ev.prevKv = decodeKv(o.prev_kv);
                return ev;
              });
              const rev = headerRevision(result);
              if (events.length > 0) {
                const last = events[events.length - 1]!.kv.modRevision;
                next = (BigInt(last) + 1n).toString();
                handlers.onEvents(events, rev);
              }
            }
          });
          res.on('end', () => fail(new Error('watch stream ended')));
          res.on('error', (err) => fail(err));
        },
      );
      r.on('error', (err) => fail(err));
      // The gateway keeps the watch open after the request body ends.
      r.end(body);
      req = r;
    };
    start();
    return {
      close: (): void => {
        closed = true;
        if (retry !== undefined) clearTimeout(retry);
        if (open !== undefined) this.watchStreams.delete(open);
        req?.destroy();
      },
    };
  }
}
