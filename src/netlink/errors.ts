// Kernel failures as values callers can branch on (`code: 'EEXIST'`), and their one mapping to CniError.
import { constants as osConstants } from 'node:os';
import { getSystemErrorName } from 'node:util';
import { CniError, ErrorCode } from '../cni-spec/errors';

/**
 * errno names the kernel returns (any `E…` name can appear; these are the ones callers branch on), plus
 * two of ours: `ENOTNS` (a netns path that is not a network namespace) and `ETIMEDOUT` for bounded waits.
 */
export type NetlinkErrorCode =
  | 'EEXIST'
  | 'ENODEV'
  | 'ENOENT'
  | 'ESRCH'
  | 'EINVAL'
  | 'EPERM'
  | 'EBUSY'
  | 'EADDRNOTAVAIL'
  | 'ENETUNREACH'
  | 'EOPNOTSUPP'
  | 'ENOTNS'
  | 'ETIMEDOUT'
  | (string & {});

export interface NetlinkErrorInit {
  code: NetlinkErrorCode;
  /** Negative errno (Node's convention), 0 when the failure is ours rather than the kernel's. */
  errno: number;
  /** The request or step: 'RTM_NEWLINK', 'RTM_NEWADDR', 'setns', 'open netns', 'sysctl write', 'nft'. */
  op: string;
  /** What it was about: a link name, `198.18.0.2/20 dev eth0`, a netns path, a sysctl key. */
  object?: string;
  message?: string;
  cause?: unknown;
}

/** A failed kernel operation: errno name, the operation and the object it was about. */
export class NetlinkError extends Error {
  readonly code: NetlinkErrorCode;
  readonly errno: number;
  readonly op: string;
  readonly object: string | undefined;

  constructor(init: NetlinkErrorInit) {
    const about = init.object !== undefined ? ` ${init.object}` : '';
    super(init.message ?? `${init.op}${about}: ${init.code}`, { cause: init.cause });
    this.name = 'NetlinkError';
    this.code = init.code;
    this.errno = init.errno;
    this.op = init.op;
    this.object = init.object;
  }
}

/** Builds a NetlinkError from a kernel errno as found in NLMSG_ERROR (negative) or in errno (positive). */
export function fromErrno(errno: number, op: string, object?: string): NetlinkError {
  const neg = -Math.abs(errno);
  let code = `E${Math.abs(errno)}`;
  try {
    // Linux has one number for both; the kernel and iproute2 speak of EOPNOTSUPP, libuv of ENOTSUP.
    code = neg === -osConstants.errno.EOPNOTSUPP ? 'EOPNOTSUPP' : getSystemErrorName(neg);
  } catch {
    // Unknown errno: keep the number in the code.
  }
  return new NetlinkError({ code, errno: neg, op, object });
}

/**
 * node_netlink rejects requests with `Error('Request rejected: EEXIST')` (netlink.js `checkError`);
 * our own requests read NLMSG_ERROR themselves, but anything else that reaches us that way is converted
 * here. System errors (code/errno/syscall, e.g. from the addon or fs) keep their code.
 */
export function toNetlinkError(err: unknown, op: string, object?: string): NetlinkError {
  if (err instanceof NetlinkError) return err;
  if (err instanceof Error) {
    const m = /^Request rejected: (E[A-Z0-9]+|-?\d+)$/.exec(err.message);
    if (m !== null) {
      const name = m[1]!;
      if (/^-?\d+$/.test(name)) return withCause(fromErrno(Number(name), op, object), err);
      return new NetlinkError({ code: name, errno: errnoOf(name), op, object, cause: err });
    }
    const sys = err as NodeJS.ErrnoException;
    if (typeof sys.code === 'string' && /^E[A-Z0-9]+$/.test(sys.code)) {
      const errno = typeof sys.errno === 'number' ? -Math.abs(sys.errno) : errnoOf(sys.code);
      return new NetlinkError({ code: sys.code, errno, op, object, cause: err });
    }
    return new NetlinkError({
      code: 'EIO',
      errno: 0,
      op,
      object,
      message: `${op}${object !== undefined ? ` ${object}` : ''}: ${err.message}`,
      cause: err,
    });
  }
  return new NetlinkError({ code: 'EIO', errno: 0, op, object, message: `${op}: ${String(err)}` });
}

function withCause(e: NetlinkError, cause: unknown): NetlinkError {
  return new NetlinkError({ code: e.code, errno: e.errno, op: e.op, object: e.object, cause });
}

function errnoOf(name: string): number {
  const n = (osConstants.errno as Record<string, number | undefined>)[name];
  return typeof n === 'number' ? -n : 0;
}

/**
 * The errno name of `err` if it is a NetlinkError or wraps one (CniError.cause), so callers can write
 * `if (netlinkCode(e) === 'EEXIST')` whether or not the error was already converted to a CniError.
 */
export function netlinkCode(err: unknown): NetlinkErrorCode | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof NetlinkError) return e.code;
  }
  return undefined;
}

/**
 * The CNI view of a kernel failure, for handlers to throw. Mapping (documented contract):
 * - a netns path that does not exist (`ENOENT` on 'open netns') or is not a netns (`ENOTNS`) →
 *   code 8 (InvalidNetns); the message names the path;
 * - `EAGAIN`/`EBUSY` → 11 (TryAgainLater);
 * - everything else → 999 (Internal), message `<op> <object>: <ERRNO>`.
 * The NetlinkError stays as `cause`, so `netlinkCode(cniError)` still answers 'EEXIST', 'ENODEV', ….
 * Anything that is not a NetlinkError (a CniError, a programming error) passes through unchanged.
 */
export function toKernelCniError(err: unknown): unknown {
  if (!(err instanceof NetlinkError)) return err;
  let code: number = ErrorCode.Internal;
  if (err.op === 'open netns' && (err.code === 'ENOENT' || err.code === 'ENOTNS'))
    code = ErrorCode.InvalidNetns;
  else if (err.code === 'EAGAIN' || err.code === 'EBUSY') code = ErrorCode.TryAgainLater;
  return new CniError(code, err.message, err.code, { cause: err });
}
