// Entering a pod's network namespace from Node: the only door is withNetns, a synchronous scope.
//
// Hazard (why the scope is synchronous): setns(2) changes the namespace of the calling *thread*. Node
// runs JavaScript on one thread, so if the code inside awaited anything, every other callback that runs
// meanwhile (timers, I/O completions, other requests) would run in the pod's namespace, and libuv's
// threadpool (fs, DNS) would not follow the switch at all. So enter, work and leave happen in one native
// call (`setnsRun`), with no `await` in between. What survives the scope are file descriptors: a netlink
// socket or a /proc/sys file opened inside stays bound to the namespace it was opened in. Hence the
// pattern: open sockets/files inside, use them asynchronously outside.
import { closeSync, openSync, readlinkSync, statSync, statfsSync } from 'node:fs';
import { loadNativeAddon } from '../native-addon';
import { NetlinkError, toNetlinkError } from './errors';

const NSFS_MAGIC = 0x6e736673;
const PROC_SUPER_MAGIC = 0x9fa0;
const CLONE_NEWNET = 0x40000000;
/** The other CLONE_NEW* flags, to say what a wrong namespace file is. */
const NAMESPACE_KINDS = new Map([
  [0x00020000, 'mnt'],
  [0x04000000, 'uts'],
  [0x08000000, 'ipc'],
  [0x10000000, 'user'],
  [0x20000000, 'pid'],
  [0x02000000, 'cgroup'],
  [0x00000080, 'time'],
]);

/** An open network namespace: a path (bind mount or /proc/<pid>/ns/net) or an fd we were given. */
export interface NetnsRef {
  readonly fd: number;
  /** The path it was opened from, when it was opened from one. */
  readonly path: string | undefined;
  /** Closes the fd if this ref opened it; a borrowed fd stays open. */
  close(): void;
}

/** A namespace by path, by fd (borrowed), or an already open ref. */
export type NetnsSpec = string | number | NetnsRef;

/**
 * Whether `path` is the network namespace the calling thread is in (same namespace inode). False when it
 * cannot be read: the open that follows reports that.
 */
export function isOwnNetns(path: string): boolean {
  try {
    const target = statSync(path);
    // The process's namespace outside any withNetns scope: read once (berthd asks on every call).
    ownNetns ??= statSync('/proc/thread-self/ns/net');
    return target.dev === ownNetns.dev && target.ino === ownNetns.ino;
  } catch {
    return false;
  }
}
let ownNetns: { dev: number; ino: number } | undefined;

/** A filesystem type a namespace file can have: nsfs, or procfs (/proc/<pid>/ns/net). */
const isNamespaceFs = (type: number): boolean => type === NSFS_MAGIC || type === PROC_SUPER_MAGIC;

/**
 * Whether `path` is, in this process's mount namespace, a namespace file (nsfs, or procfs's
 * /proc/<pid>/ns/net): false for a path that is missing or only the empty file a namespace is mounted on.
 */
export function isNamespaceFile(path: string): boolean {
  try {
    return isNamespaceFs(statfsSync(path).type);
  } catch {
    return false;
  }
}

/**
 * Opens a network namespace by path. Errors (NetlinkError, op 'open netns', object = path):
 * `ENOENT` when the path does not exist (DEL treats this as "already gone"), `ENOTNS` when it exists but
 * is not a network namespace (a plain file or directory, another namespace type such as /proc/self/ns/mnt,
 * a procfs file that is no namespace), other errno names as open(2) reports them.
 */
export function openNetns(spec: string | number): NetnsRef {
  if (typeof spec === 'number') {
    return { fd: spec, path: undefined, close() {} };
  }
  let type: number;
  try {
    type = statfsSync(spec).type;
  } catch (err) {
    throw toNetlinkError(err, 'open netns', spec);
  }
  if (!isNamespaceFs(type)) {
    throw new NetlinkError({
      code: 'ENOTNS',
      errno: 0,
      op: 'open netns',
      object: spec,
      message: `open netns ${spec}: not a network namespace (filesystem type 0x${type.toString(16)}, expected nsfs or procfs)`,
    });
  }
  let fd: number;
  try {
    fd = openSync(spec, 'r'); // libuv opens with O_CLOEXEC
  } catch (err) {
    throw toNetlinkError(err, 'open netns', spec);
  }
  // nsfs and procfs also hold other namespaces (/proc/self/ns/mnt, a bind mount of a uts namespace) and
  // plain files (/proc/self/status), which setns or a veth's IFLA_NET_NS_FD would refuse later with a bare
  // EINVAL: ask the open fd what it is.
  let nsType: number | undefined;
  try {
    nsType = loadNativeAddon().nsType(fd);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOTTY') {
      closeSync(fd);
      throw toNetlinkError(err, 'open netns', spec);
    }
  }
  if (nsType !== CLONE_NEWNET) {
    closeSync(fd);
    const kind =
      nsType === undefined
        ? 'not a namespace at all'
        : `a ${NAMESPACE_KINDS.get(nsType) ?? `0x${nsType.toString(16)}`} namespace`;
    throw new NetlinkError({
      code: 'ENOTNS',
      errno: 0,
      op: 'open netns',
      object: spec,
      message: `open netns ${spec}: not a network namespace (${kind})`,
    });
  }
  let open = true;
  return {
    fd,
    path: spec,
    close() {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/**
 * Runs `fn` synchronously inside the network namespace `netns` and switches back before returning or
 * rethrowing. `fn` must be synchronous: create sockets, open files, read or write small files; a promise
 * returned by `fn` would settle outside the namespace. If switching back fails the process aborts rather
 * than carry on in the wrong namespace. A path is opened and closed around the call.
 * Errors: as `openNetns` for a path; entering fails with NetlinkError op 'setns' (`EINVAL` for an fd
 * that is not a network namespace, `EPERM` without CAP_SYS_ADMIN).
 */
export function withNetns<T>(netns: NetnsSpec, fn: () => T): T {
  const ref = typeof netns === 'object' ? netns : openNetns(netns);
  try {
    return enter(ref, fn);
  } finally {
    if (ref !== netns) ref.close();
  }
}

function enter<T>(ref: NetnsRef, fn: () => T): T {
  const addon = loadNativeAddon();
  let inside = false;
  let result: T;
  try {
    result = addon.setnsRun(ref.fd, () => {
      inside = true;
      return fn();
    });
  } catch (err) {
    // Errors from fn pass through untouched; only a failed entry is ours to describe.
    if (inside) throw err;
    throw toNetlinkError(err, 'setns', ref.path ?? `fd ${ref.fd}`);
  }
  if (typeof (result as { then?: unknown } | null)?.then === 'function') {
    // Everything after the callback's first await ran (or will run) outside the namespace: a bug, so
    // say so loudly rather than let it half-work. The promise's own outcome is dropped on purpose.
    (result as unknown as Promise<unknown>).then(undefined, () => undefined);
    throw new TypeError(
      'withNetns: the callback returned a promise; it must be synchronous (open sockets/files inside, await outside)',
    );
  }
  return result;
}

/** The calling thread's network namespace, e.g. `net:[4026531840]` (for checks and logs). */
export function currentNetnsId(): string {
  return readlinkSync('/proc/thread-self/ns/net');
}

/** The inode identity of a namespace path (`net:[…]`), to compare with `currentNetnsId()`. */
export function netnsIdOf(spec: NetnsSpec): string {
  return withNetns(spec, currentNetnsId);
}
