// An in-memory stand-in for etcd's HTTP/JSON gateway, with etcd's semantics where berth relies on them:
// one revision per write txn, create/mod revisions and versions, compares on missing keys (value never
// equal, revisions/lease 0), leases that expire and take their keys with them, watches from a revision with
// prev_kv and compaction, /health, token auth. Several "members" (HTTP listeners) share one store, and
// each can be made to refuse, hang or answer 503, so the client's failover can be tested.
import * as http from 'node:http';
import * as https from 'node:https';
import type * as net from 'node:net';
import type { AddressInfo } from 'node:net';

type Json = Record<string, unknown>;

interface Kv {
  value: Buffer;
  create: bigint;
  mod: bigint;
  version: bigint;
  lease: bigint;
}

interface Lease {
  ttl: number;
  expiresAt: number;
  keys: Set<string>;
}

interface HistoryEvent {
  type: 'PUT' | 'DELETE';
  key: string;
  kv: Kv | undefined;
  prev: Kv | undefined;
  rev: bigint;
}

interface Watch {
  start: string;
  end: string | undefined;
  res: http.ServerResponse;
  /** The member serving it: a member in 'hang' mode keeps its streams open and silent (a stopped process). */
  member: { mode: MemberMode };
}

export type MemberMode = 'up' | 'refuse' | 'hang' | 'unavailable';

const key64 = (s: unknown): string => Buffer.from(String(s ?? ''), 'base64').toString('latin1');

function inRange(k: string, start: string, end: string | undefined): boolean {
  if (end === undefined) return k === start;
  if (end === '\0') return k >= start;
  return k >= start && k < end;
}

export class FakeEtcd {
  private readonly kvs = new Map<string, Kv>();
  private readonly leases = new Map<bigint, Lease>();
  private readonly history: HistoryEvent[] = [];
  private readonly watches = new Set<Watch>();
  private readonly members: { server: http.Server; mode: MemberMode; port: number }[] = [];
  private nextLease = 7587880000000000001n; // above 2^53, as real lease ids are
  revision = 1n;
  compactRevision = 0n;
  /** Connections the members accepted (also those a 'refuse' member closes at once). */
  connections = 0;
  /** Requests by path, for counting round trips. */
  readonly calls = new Map<string, number>();
  /** When set, requests need `Authorization: <token>` from /v3/auth/authenticate with these credentials. */
  auth: { user: string; password: string } | undefined;
  private readonly tokens = new Set<string>();
  /** Watch streams answered "canceled" (a refused token) and left open, as etcd does. */
  private readonly refusedWatches = new Set<http.ServerResponse>();
  now: () => number = () => Date.now();
  /** Holds back each txn's answer (after it is applied and watchers have their events). */
  txnAnswerDelayMs = 0;
  /** While set, a new watch request gets no answer at all (the stream just hangs). */
  holdWatches = false;
  /** Called with each txn's body as it arrives, before it is applied (a test looks at a node's files then). */
  onTxn: ((body: Json) => void) | undefined;

  /** Starts one more member (HTTP listener on 127.0.0.1); returns its URL. */
  /**
   * A member on a port of its own; its client URL. `tls`: https with that key and certificate, asking for a
   * client certificate signed by `ca` (etcd's --client-cert-auth). `host`: the address to listen on
   * (default 127.0.0.1; '::1' gives a bracketed IPv6 URL).
   */
  async addMember(
    opts: { tls?: { key: string; cert: string; ca: string }; host?: string } = {},
  ): Promise<string> {
    const server =
      opts.tls === undefined
        ? http.createServer()
        : https.createServer({ ...opts.tls, requestCert: true, rejectUnauthorized: true });
    const member = { server: server as http.Server, mode: 'up' as MemberMode, port: 0 };
    member.server.on('request', (req, res) => this.handle(member, req, res));
    member.server.on(opts.tls === undefined ? 'connection' : 'secureConnection', (sock: net.Socket) => {
      this.connections++;
      if (member.mode === 'refuse') sock.destroy();
    });
    const host = opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve) => member.server.listen(0, host, resolve));
    member.port = (member.server.address() as AddressInfo).port;
    this.members.push(member);
    return `${opts.tls === undefined ? 'http' : 'https'}://${host.includes(':') ? `[${host}]` : host}:${member.port}`;
  }

  setMode(i: number, mode: MemberMode): void {
    this.members[i]!.mode = mode;
    if (mode !== 'up' && mode !== 'hang') {
      for (const w of [...this.watches]) {
        w.res.destroy();
        this.watches.delete(w);
      }
      for (const r of this.refusedWatches) r.destroy();
    }
  }

  /** Every token handed out so far stops being valid (etcd's --auth-token-ttl passed). */
  expireTokens(): void {
    this.tokens.clear();
  }

  async close(): Promise<void> {
    for (const w of this.watches) w.res.destroy();
    this.watches.clear();
    for (const r of this.refusedWatches) r.destroy();
    await Promise.all(
      this.members.map(
        (m) =>
          new Promise<void>((resolve) => {
            m.server.closeAllConnections();
            m.server.close(() => resolve());
          }),
      ),
    );
  }

  /** Direct access for assertions. */
  get(
    key: string,
  ): { value: string; createRevision: bigint; modRevision: bigint; lease: bigint } | undefined {
    this.expire();
    const kv = this.kvs.get(key);
    return kv === undefined
      ? undefined
      : { value: kv.value.toString('utf8'), createRevision: kv.create, modRevision: kv.mod, lease: kv.lease };
  }

  /** Watch streams open now. */
  get openWatches(): number {
    return this.watches.size;
  }

  keys(prefix = ''): string[] {
    this.expire();
    return [...this.kvs.keys()].filter((k) => k.startsWith(prefix)).sort();
  }

  putDirect(key: string, value: string): void {
    this.writeTxn((w) => w.put(key, Buffer.from(value), 0n));
  }

  deleteDirect(key: string): void {
    this.writeTxn((w) => w.del(key));
  }

  /** Several keys in one write txn: one revision, one watch batch. */
  putManyDirect(entries: [key: string, value: string][]): void {
    this.writeTxn((w) => {
      for (const [k, v] of entries) w.put(k, Buffer.from(v), 0n);
    });
  }

  /** Forgets history up to `rev`: watches starting earlier are answered with compact_revision. */
  compact(rev: bigint = this.revision): void {
    this.compactRevision = rev;
    while (this.history.length > 0 && this.history[0]!.rev <= rev) this.history.shift();
  }

  /** Lets every lease run out now (a long partition of its owner). */
  expireAllLeases(): void {
    for (const l of this.leases.values()) l.expiresAt = 0;
    this.expire();
  }

  private expire(): void {
    const t = this.now();
    const gone = [...this.leases.entries()].filter(([, l]) => l.expiresAt <= t);
    if (gone.length === 0) return;
    for (const [id, l] of gone) {
      this.leases.delete(id);
      if (l.keys.size > 0) this.writeTxn((w) => [...l.keys].forEach((k) => w.del(k)));
    }
  }

  private writeTxn(
    fn: (w: { put(k: string, v: Buffer, lease: bigint): void; del(k: string): boolean }) => void,
  ): void {
    const events: HistoryEvent[] = [];
    const rev = this.revision + 1n;
    fn({
      put: (k, v, lease) => {
        const prev = this.kvs.get(k);
        if (prev !== undefined && prev.lease !== 0n) this.leases.get(prev.lease)?.keys.delete(k);
        const kv: Kv = {
          value: v,
          create: prev?.create ?? rev,
          mod: rev,
          version: (prev?.version ?? 0n) + 1n,
          lease,
        };
        if (lease !== 0n) {
          const l = this.leases.get(lease);
          if (l === undefined) throw new FakeError(400, 5, 'etcdserver: requested lease not found');
          l.keys.add(k);
        }
        this.kvs.set(k, kv);
        events.push({ type: 'PUT', key: k, kv, prev, rev });
      },
      del: (k) => {
        const prev = this.kvs.get(k);
        if (prev === undefined) return false;
        if (prev.lease !== 0n) this.leases.get(prev.lease)?.keys.delete(k);
        this.kvs.delete(k);
        events.push({ type: 'DELETE', key: k, kv: undefined, prev, rev });
        return true;
      },
    });
    if (events.length === 0) return;
    this.revision = rev;
    this.history.push(...events);
    for (const w of this.watches) {
      if (w.member.mode === 'hang') continue;
      const mine = events.filter((e) => inRange(e.key, w.start, w.end));
      if (mine.length > 0) this.sendEvents(w.res, mine);
    }
  }

  private header(): Json {
    return { cluster_id: '1', member_id: '1', revision: String(this.revision), raft_term: '2' };
  }

  private kvJson(k: string, kv: Kv): Json {
    const o: Json = {
      key: Buffer.from(k, 'latin1').toString('base64'),
      create_revision: String(kv.create),
      mod_revision: String(kv.mod),
      version: String(kv.version),
      value: kv.value.toString('base64'),
    };
    if (kv.lease !== 0n) o.lease = String(kv.lease);
    return o;
  }

  private sendEvents(res: http.ServerResponse, events: HistoryEvent[]): void {
    res.write(
      `${JSON.stringify({
        result: {
          header: this.header(),
          events: events.map((e) => {
            const o: Json = {
              kv:
                e.kv !== undefined
                  ? this.kvJson(e.key, e.kv)
                  : { key: Buffer.from(e.key, 'latin1').toString('base64'), mod_revision: String(e.rev) },
            };
            if (e.type === 'DELETE') o.type = 'DELETE';
            if (e.prev !== undefined) o.prev_kv = this.kvJson(e.key, e.prev);
            return o;
          }),
        },
      })}\n`,
    );
  }

  private rangeOf(r: Json): { start: string; end: string | undefined } {
    const start = key64(r.key);
    const end = r.range_end === undefined ? undefined : key64(r.range_end);
    return { start, end };
  }

  private doRange(r: Json): Json {
    const { start, end } = this.rangeOf(r);
    const keys = [...this.kvs.keys()].filter((k) => inRange(k, start, end)).sort();
    const limit = r.limit === undefined ? 0 : Number(r.limit);
    const shown = limit > 0 ? keys.slice(0, limit) : keys;
    const out: Json = { header: this.header() };
    if (shown.length > 0) out.kvs = shown.map((k) => this.kvJson(k, this.kvs.get(k)!));
    if (keys.length > 0) out.count = String(keys.length);
    return out;
  }

  private compare(c: Json): boolean {
    const k = key64(c.key);
    const kv = this.kvs.get(k);
    const result = (c.result as string | undefined) ?? 'EQUAL';
    const target = (c.target as string | undefined) ?? 'VERSION';
    let cmp: number;
    if (target === 'VALUE') {
      if (kv === undefined) return false;
      cmp = Buffer.compare(kv.value, Buffer.from(String(c.value ?? ''), 'base64'));
    } else {
      const actual =
        target === 'CREATE'
          ? (kv?.create ?? 0n)
          : target === 'MOD'
            ? (kv?.mod ?? 0n)
            : target === 'LEASE'
              ? (kv?.lease ?? 0n)
              : (kv?.version ?? 0n);
      const field = { CREATE: 'create_revision', MOD: 'mod_revision', LEASE: 'lease', VERSION: 'version' }[
        target
      ]!;
      const want = BigInt(String(c[field] ?? '0'));
      cmp = actual < want ? -1 : actual > want ? 1 : 0;
    }
    switch (result) {
      case 'EQUAL':
        return cmp === 0;
      case 'NOT_EQUAL':
        return cmp !== 0;
      case 'GREATER':
        return cmp > 0;
      case 'LESS':
        return cmp < 0;
      default:
        throw new FakeError(400, 3, `bad compare result ${result}`);
    }
  }

  private doTxn(body: Json): Json {
    this.onTxn?.(body);
    // etcd's --max-txn-ops (128 by default), counted per list as etcd does.
    for (const list of ['compare', 'success', 'failure'] as const) {
      if (((body[list] as Json[] | undefined) ?? []).length > 128)
        throw new FakeError(400, 3, 'etcdserver: too many operations in txn request');
    }
    const compares = (body.compare as Json[] | undefined) ?? [];
    const ok = compares.every((c) => this.compare(c));
    const ops = ((ok ? body.success : body.failure) as Json[] | undefined) ?? [];
    const responses: Json[] = [];
    // Validate leases before writing anything: a txn is all or nothing.
    for (const op of ops) {
      const put = op.request_put as Json | undefined;
      if (put?.lease !== undefined && put.lease !== '0' && !this.leases.has(BigInt(String(put.lease)))) {
        throw new FakeError(400, 5, 'etcdserver: requested lease not found');
      }
    }
    const writes = ops.some((op) => op.request_put !== undefined || op.request_delete_range !== undefined);
    const run = (w?: Parameters<Parameters<FakeEtcd['writeTxn']>[0]>[0]): void => {
      for (const op of ops) {
        if (op.request_range !== undefined) {
          responses.push({ response_range: this.doRange(op.request_range as Json) });
        } else if (op.request_put !== undefined) {
          const p = op.request_put as Json;
          w!.put(key64(p.key), Buffer.from(String(p.value ?? ''), 'base64'), BigInt(String(p.lease ?? '0')));
          responses.push({ response_put: { header: this.header() } });
        } else if (op.request_delete_range !== undefined) {
          const { start, end } = this.rangeOf(op.request_delete_range as Json);
          let n = 0;
          for (const k of [...this.kvs.keys()].filter((x) => inRange(x, start, end))) if (w!.del(k)) n++;
          responses.push({ response_delete_range: { header: this.header(), deleted: String(n) } });
        }
      }
    };
    if (writes) this.writeTxn((w) => run(w));
    else run();
    return { header: this.header(), succeeded: ok, responses };
  }

  private handle(member: { mode: MemberMode }, req: http.IncomingMessage, res: http.ServerResponse): void {
    if (member.mode === 'hang') return;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '';
      this.calls.set(path, (this.calls.get(path) ?? 0) + 1);
      if (member.mode === 'refuse') {
        res.destroy();
        return;
      }
      const send = (status: number, o: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(o));
      };
      if (member.mode === 'unavailable') {
        if (path === '/health') send(503, { health: 'false' });
        else
          send(503, {
            error: 'etcdserver: request timed out',
            code: 14,
            message: 'etcdserver: request timed out',
          });
        return;
      }
      if (path === '/health') {
        send(200, { health: 'true' });
        return;
      }
      let body: Json;
      try {
        body = chunks.length === 0 ? {} : (JSON.parse(Buffer.concat(chunks).toString('utf8')) as Json);
      } catch {
        send(400, { error: 'bad json', code: 3 });
        return;
      }
      if (path === '/v3/auth/authenticate') {
        if (this.auth === undefined || body.name !== this.auth.user || body.password !== this.auth.password) {
          send(400, { error: 'etcdserver: authentication failed, invalid user ID or password', code: 3 });
          return;
        }
        const token = `tok${this.tokens.size + 1}.${Math.random().toString(36).slice(2)}`;
        this.tokens.add(token);
        send(200, { header: this.header(), token });
        return;
      }
      // No token at all is another refusal than a stale one, as etcd answers it (not an auth-token error).
      if (this.auth !== undefined && req.headers.authorization === undefined && path !== '/v3/watch') {
        send(400, { error: 'etcdserver: user name is empty', code: 3 });
        return;
      }
      if (this.auth !== undefined && !this.tokens.has(String(req.headers.authorization))) {
        if (path === '/v3/watch') {
          // As etcd 3.4's gateway: the watch is created and canceled at once, and the stream stays open.
          res.writeHead(200, { 'content-type': 'application/json' });
          const reason = 'rpc error: code = Unauthenticated desc = etcdserver: invalid auth token';
          res.write(
            `${JSON.stringify({ result: { header: this.header(), created: true, canceled: true, cancel_reason: reason } })}\n`,
          );
          this.refusedWatches.add(res);
          res.on('close', () => this.refusedWatches.delete(res));
          return;
        }
        send(401, { error: 'etcdserver: invalid auth token', code: 16 });
        return;
      }
      this.expire();
      try {
        switch (path) {
          case '/v3/kv/range':
            send(200, this.doRange(body));
            return;
          case '/v3/kv/put':
            this.writeTxn((w) =>
              w.put(
                key64(body.key),
                Buffer.from(String(body.value ?? ''), 'base64'),
                BigInt(String(body.lease ?? '0')),
              ),
            );
            send(200, { header: this.header() });
            return;
          case '/v3/kv/deleterange': {
            const { start, end } = this.rangeOf(body);
            let n = 0;
            this.writeTxn((w) => {
              for (const k of [...this.kvs.keys()].filter((x) => inRange(x, start, end))) if (w.del(k)) n++;
            });
            send(200, { header: this.header(), deleted: String(n) });
            return;
          }
          case '/v3/kv/txn': {
            // Applied (and watchers told) now; the answer may be held back to let a watch event win the race.
            const answer = this.doTxn(body);
            if (this.txnAnswerDelayMs > 0) setTimeout(() => send(200, answer), this.txnAnswerDelayMs);
            else send(200, answer);
            return;
          }
          case '/v3/lease/grant': {
            const ttl = Number(body.TTL);
            const id = this.nextLease++;
            this.leases.set(id, { ttl, expiresAt: this.now() + ttl * 1000, keys: new Set() });
            send(200, { header: this.header(), ID: String(id), TTL: String(ttl) });
            return;
          }
          case '/v3/lease/keepalive': {
            const id = BigInt(String(body.ID));
            const l = this.leases.get(id);
            if (l !== undefined) l.expiresAt = this.now() + l.ttl * 1000;
            // etcd answers a keepalive of an unknown lease with TTL 0 (no TTL field at all in JSON).
            send(200, {
              result: { header: this.header(), ID: String(id), ...(l ? { TTL: String(l.ttl) } : {}) },
            });
            return;
          }
          case '/v3/lease/revoke': {
            const id = BigInt(String(body.ID));
            const l = this.leases.get(id);
            if (l === undefined) {
              send(404, { error: 'etcdserver: requested lease not found', code: 5 });
              return;
            }
            this.leases.delete(id);
            this.writeTxn((w) => [...l.keys].forEach((k) => w.del(k)));
            send(200, { header: this.header() });
            return;
          }
          case '/v3/lease/timetolive': {
            const l = this.leases.get(BigInt(String(body.ID)));
            send(200, {
              header: this.header(),
              ID: String(body.ID),
              TTL: l === undefined ? '-1' : String(Math.ceil((l.expiresAt - this.now()) / 1000)),
            });
            return;
          }
          case '/v3/watch': {
            if (this.holdWatches) return;
            const c = (body.create_request ?? {}) as Json;
            const { start, end } = this.rangeOf(c);
            const from = BigInt(String(c.start_revision ?? '0'));
            res.writeHead(200, { 'content-type': 'application/json' });
            res.write(`${JSON.stringify({ result: { header: this.header(), created: true } })}\n`);
            if (from !== 0n && from <= this.compactRevision) {
              res.write(
                `${JSON.stringify({ result: { header: this.header(), compact_revision: String(this.compactRevision), canceled: true } })}\n`,
              );
              res.end();
              return;
            }
            if (from !== 0n) {
              const past = this.history.filter((e) => e.rev >= from && inRange(e.key, start, end));
              if (past.length > 0) this.sendEvents(res, past);
            }
            const w: Watch = { start, end, res, member };
            this.watches.add(w);
            res.on('close', () => this.watches.delete(w));
            return;
          }
          default:
            send(404, { error: `Not Found ${path}`, code: 5 });
        }
      } catch (err) {
        if (err instanceof FakeError)
          send(err.status, { error: err.message, code: err.code, message: err.message });
        else send(500, { error: String(err), code: 13 });
      }
    });
  }
}

class FakeError extends Error {
  constructor(
    readonly status: number,
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}
