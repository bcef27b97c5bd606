// The plugin's way to berthd: one HTTP/1.1 request over the unix socket on a raw node:net connection (no
// node:http in the plugin path), loaded only when a socket file exists. Any transport failure means
// "no daemon": the caller then works on the files, so DEL never fails because the daemon is down.
import { statSync } from 'node:fs';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { MAX_CONFIG_DEPTH, type Request, nestedDeeperThan } from '../cni-spec/request';
import type { Result } from '../cni-spec/types/result';
import {
  Allocate,
  Check,
  DEFAULT_SOCKET,
  Gc,
  type Method,
  Release,
  Status,
  type Envelope,
} from './daemon/protocol';

/** The daemon could not be asked (absent, refused, reset, timed out, garbled): not a CNI failure. */
export class DaemonUnavailable extends Error {
  readonly code = 'BERTH_DAEMON_UNAVAILABLE';
  /**
   * The whole request reached the daemon, which may have acted on it: the reply was lost (a timeout, a close
   * without a complete reply). False when nothing was sent, or the daemon reset the connection before any
   * reply (on a unix socket: it closed with the request unread).
   */
  maybeRan = false;
  /** The socket's own error code when that was the failure (ENOENT, ECONNREFUSED, EACCES…). */
  sysCode: string | undefined;
}

export interface DaemonReply {
  status: number;
  body: unknown;
}

export interface DaemonCall {
  socket: string;
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  body?: unknown;
  timeoutMs?: number;
  /** The socket file's owner, when the caller has stat'ed it already (one stat per call, not two). */
  owner?: number;
}

/** Splits a complete HTTP/1.1 response (read until the server closed) into status and JSON body. */
function parseResponse(raw: Buffer): DaemonReply {
  const end = raw.indexOf('\r\n\r\n');
  if (end === -1) throw new DaemonUnavailable('incomplete HTTP response from berthd');
  const head = raw.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? '');
  if (m === null) throw new DaemonUnavailable(`not an HTTP response from berthd: ${JSON.stringify(head[0])}`);
  const headers = new Map<string, string>();
  for (const line of head.slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  let body = raw.subarray(end + 4);
  const length = headers.get('content-length');
  if (length !== undefined) {
    if (body.length < Number(length)) throw new DaemonUnavailable('berthd closed the connection mid-reply');
    body = body.subarray(0, Number(length));
  } else if (headers.get('transfer-encoding')?.toLowerCase() === 'chunked') {
    const parts: Buffer[] = [];
    let pos = 0;
    for (;;) {
      const eol = body.indexOf('\r\n', pos);
      if (eol === -1) throw new DaemonUnavailable('berthd closed the connection mid-reply');
      const size = parseInt(body.subarray(pos, eol).toString('latin1'), 16);
      if (!Number.isFinite(size)) throw new DaemonUnavailable('bad chunk in the reply of berthd');
      if (size === 0) break;
      parts.push(body.subarray(eol + 2, eol + 2 + size));
      pos = eol + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  }
  const text = body.toString('utf8');
  const type = headers.get('content-type') ?? '';
  if (!type.startsWith('application/json')) return { status: Number(m[1]), body: text };
  try {
    return { status: Number(m[1]), body: JSON.parse(text) as unknown };
  } catch {
    throw new DaemonUnavailable(`berthd sent a reply that is not JSON (HTTP ${m[1]})`);
  }
}

/** A reply is a result or a listing; past this, the other end is no berthd (as the shim's limit). */
const MAX_REPLY_BYTES = 64 << 20;

/** The uid owning the socket file; undefined when it cannot be read (the connect then says why). */
function socketOwner(path: string): number | undefined {
  try {
    return statSync(path).uid;
  } catch {
    return undefined;
  }
}

/** Whether a socket file of this owner may be berthd's: made by root, or by the caller itself. */
function trustedOwner(uid: number): boolean {
  return uid === 0 || uid === process.geteuid?.();
}

/** One request on a fresh connection (`Connection: close`); rejects with DaemonUnavailable on any transport failure. */
export function callDaemon(c: DaemonCall): Promise<DaemonReply> {
  const net = require('node:net') as typeof import('node:net');
  const payload = c.body === undefined ? '' : JSON.stringify(c.body);
  const head =
    `${c.method} ${c.path} HTTP/1.1\r\nHost: berthd\r\nConnection: close\r\nAccept: application/json\r\n` +
    (c.body === undefined
      ? ''
      : `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n`) +
    '\r\n';
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let settled = false;
    let written = false;
    const fail = (why: string, resetBeforeReply = false, sysCode?: string): void => {
      if (settled) return;
      settled = true;
      sock.destroy();
      const err = new DaemonUnavailable(`berthd at ${c.socket}: ${why}`);
      err.maybeRan = written && !resetBeforeReply;
      err.sysCode = sysCode;
      reject(err);
    };
    // Only a socket root (or this user) made is berthd's: one another user bound, in a directory others
    // write, would get the call and have its answer believed (the shim checks the peer's uid the same way).
    const owner = c.owner ?? socketOwner(c.socket);
    if (owner !== undefined && !trustedOwner(owner)) {
      const err = new DaemonUnavailable(`berthd at ${c.socket}: the socket is not root's (uid ${owner})`);
      err.maybeRan = false;
      reject(err);
      return;
    }
    const sock = net.createConnection(c.socket);
    sock.setTimeout(c.timeoutMs ?? 30_000, () => fail('no reply in time'));
    sock.on('connect', () =>
      sock.write(head + payload, (err) => {
        if (err === undefined || err === null) written = true;
      }),
    );
    let received = 0;
    sock.on('data', (d: Buffer) => {
      received += d.length;
      if (received > MAX_REPLY_BYTES) fail(`a reply of more than ${MAX_REPLY_BYTES} bytes`);
      else chunks.push(d);
    });
    sock.on('error', (err: NodeJS.ErrnoException) =>
      fail(err.code ?? err.message, err.code === 'ECONNRESET' && chunks.length === 0, err.code),
    );
    sock.on('end', () => {
      if (settled) return;
      try {
        const reply = parseResponse(Buffer.concat(chunks));
        settled = true;
        resolve(reply);
      } catch (err) {
        fail((err as Error).message);
      }
    });
  });
}

const METHOD_OF: Readonly<Record<Request['command'], Method<unknown>>> = {
  ADD: Allocate,
  DEL: Release,
  CHECK: Check,
  GC: Gc,
  STATUS: Status,
};

/** The socket to try: ipam.daemonSocket, or the standard path; "" or false turns the daemon off. */
export function daemonSocketOf(config: Readonly<Record<string, unknown>>): string | undefined {
  const ipam = config.ipam as Record<string, unknown> | undefined;
  const v = typeof ipam === 'object' && ipam !== null ? ipam.daemonSocket : undefined;
  if (v === false || v === '' || v === null) return undefined;
  if (v === undefined) return DEFAULT_SOCKET;
  if (typeof v !== 'string' || !v.startsWith('/')) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `ipam.daemonSocket must be an absolute path (or false), got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/**
 * Forwards the request to berthd when its socket answers: resolves to its answer ({ result } for ADD), or
 * undefined when there is no daemon to ask. A CNI error from the daemon is thrown as is.
 */
export async function forwardToDaemon(
  req: Request,
  warn: (msg: string) => void,
): Promise<{ result?: Result } | undefined> {
  const socket = daemonSocketOf(req.config);
  if (socket === undefined) return undefined;
  // Not for berthd to parse (see MAX_CONFIG_DEPTH): this process, which parsed it already, works on the files.
  if (nestedDeeperThan(req.stdin, MAX_CONFIG_DEPTH)) return undefined;
  let owner: number;
  try {
    const st = statSync(socket);
    if (!st.isSocket()) return undefined;
    owner = st.uid;
  } catch {
    return undefined;
  }
  const env: Record<string, string> = {};
  for (const k of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_ARGS', 'CNI_PATH']) {
    const v = req.env[k];
    if (v !== undefined) env[k] = v;
  }
  const envelope: Envelope = { env, config: req.config };
  const method = METHOD_OF[req.command];
  let reply: DaemonReply;
  try {
    reply = await callDaemon({ socket, method: 'POST', path: method.path, body: envelope, owner });
  } catch (err) {
    if (!(err instanceof DaemonUnavailable)) throw err;
    // An ADD berthd may have run must not run again on the files: berthd, seeing its caller gone, undoes
    // it and frees the address while the files' ADD hands the same lease out (two pods, one address).
    // DEL, CHECK, GC and STATUS converge whoever runs them.
    if (err.maybeRan && req.command === 'ADD') {
      throw new CniError(
        ErrorCode.TryAgainLater,
        `berth-ipam: ${err.message}, after the ADD was sent: it may have run there (and is undone once berthd sees the caller gone); try again later`,
      );
    }
    warn(`berth-ipam: ${err.message}; working on the lease files directly`);
    return undefined;
  }
  if (reply.status === 200) {
    return req.command === 'ADD' ? { result: reply.body as Result } : {};
  }
  const cni = CniError.fromJson(reply.body);
  if (cni === undefined) {
    warn(
      `berth-ipam: berthd answered HTTP ${reply.status} without a CNI error; working on the lease files directly`,
    );
    return undefined;
  }
  throw cni;
}
