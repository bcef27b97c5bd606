// The one place the C addon (native/) is loaded and typed: setns around a synchronous callback, the type of a
// namespace file, flock(2), syncfs(2), a directory's small files read in one call, a netlink request on a
// pool thread.
import { join } from 'node:path';

/** Modes of flock(2): exclusive, shared, unlock. */
export type FlockMode = 'ex' | 'sh' | 'un';

/**
 * The native surface. Errors are Node-style system errors: `code` ('EPERM', 'EBADF', …),
 * `errno` (negative, as in Node's own errors) and `syscall` ('setns', 'open', 'flock').
 */
export interface NativeAddon {
  /**
   * Enters the network namespace open on `fd`, calls `fn` synchronously, switches back to the namespace
   * the thread was in (also when `fn` throws; the process aborts if switching back fails), and returns
   * `fn`'s value or rethrows its exception. `fn` must not rely on anything asynchronous: a promise it
   * returns settles after the switch back, outside the namespace.
   */
  setnsRun<T>(fd: number, fn: () => T): T;
  /**
   * flock(2) on `fd` (EINTR retried). With `nonBlocking`, returns false when the lock is held elsewhere
   * (EWOULDBLOCK); otherwise returns true once the lock is taken. Interoperates with Go's
   * go-filemutex (host-local's `<dataDir>/<net>/lock`), which uses flock(2) too.
   */
  flock(fd: number, mode: FlockMode, nonBlocking?: boolean): boolean;
  /**
   * syncfs(2) of the filesystem holding `fd`, on a libuv pool thread: resolves once everything written to
   * that filesystem is on disk (data, inodes, directories, then one cache flush). Rejects with a writeback
   * error (EIO, ENOSPC, …) that happened since the descriptor was opened or its last syncfs: Linux >= 5.8
   * reports them, older kernels report none.
   */
  syncfs(fd: number): Promise<void>;
  /**
   * The namespace type of `fd` as its CLONE_NEW* flag (ioctl NS_GET_NSTYPE, Linux >= 4.11):
   * 0x40000000 for a network namespace. Throws ENOTTY when `fd` is not a namespace at all.
   */
  nsType(fd: number): number;
  /** The pid, uid and gid of the process at the other end of the unix socket `fd` (SO_PEERCRED). */
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  /**
   * Every entry of directory `dir` with the first 4096 bytes of each regular file, in one Buffer (see
   * native/src/berth_native.c for the layout): a lease scan in one call instead of three per file. Absent
   * from an addon built before it (callers then read the files one by one).
   */
  readSmallFiles?(dir: string): Buffer;
  /**
   * A plain AF_NETLINK socket of `protocol` (close-on-exec, bound to a kernel-chosen port) in the calling
   * thread's namespace, for `netlinkRequest`; closed by the caller (fs.closeSync). Absent from an addon
   * built before it (callers then send on their main socket).
   */
  netlinkOpen?(protocol: number): number;
  /**
   * Sends one netlink message (whole, header included, NLM_F_ACK set) on `fd` from a libuv pool thread and
   * waits there for its acknowledgement (NLMSG_ERROR with the message's sequence number); resolves with the
   * acknowledgement's error field: 0 or a negative errno. Rejects with ETIMEDOUT when none came within
   * `timeoutMs`. One request at a time per fd. For requests answered by an acknowledgement alone.
   */
  netlinkRequest?(fd: number, message: Buffer, timeoutMs: number): Promise<number>;
  /**
   * CLOCK_BOOTTIME in ms: monotonic (no wall-clock steps) and, unlike performance.now(), counting the time
   * the machine was suspended. Absent from an addon built before it.
   */
  bootTimeMs?(): number;
}

/** Where the addon is looked for, first hit wins. Exposed so error messages and tests can name them. */
export function addonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  // src/ and dist/ both sit one level below the package root, so the same relative path works for the
  // compiled code and for tests running the TypeScript sources.
  const root = join(__dirname, '..');
  const list: string[] = [];
  const override = env.BERTH_NATIVE_ADDON;
  if (override !== undefined && override !== '') list.push(override);
  list.push(
    join(root, 'native', 'build', 'Release', 'berth_native.node'),
    join(root, 'native', 'build', 'Debug', 'berth_native.node'),
    join(root, 'native', `prebuilds`, `${process.platform}-${process.arch}`, 'berth_native.node'),
  );
  return list;
}

let loaded: NativeAddon | undefined;
let embedded: (() => NativeAddon) | undefined;

/**
 * Set by the single-executable entry (src/sea/entry.ts): the addon then comes from the executable's
 * embedded asset instead of the candidate paths, which do not exist on a host without the source tree.
 */
export function setEmbeddedAddonLoader(load: () => NativeAddon): void {
  embedded = load;
}

/**
 * Loads the addon (once, for the default candidates); the error lists every path tried and why each
 * failed.
 */
export function loadNativeAddon(candidates?: readonly string[]): NativeAddon {
  if (candidates === undefined && loaded !== undefined) return loaded;
  if (candidates === undefined && embedded !== undefined) return (loaded = embedded());
  const tried: string[] = [];
  for (const file of candidates ?? addonCandidates()) {
    try {
      const addon = require(file) as NativeAddon;
      if (candidates === undefined) loaded = addon;
      return addon;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      tried.push(`  ${file}: ${code === 'MODULE_NOT_FOUND' ? 'not found' : (err as Error).message}`);
    }
  }
  throw new Error(
    `berth: failed to load the native addon (build it with \`npm run build:native\`); checked:\n${tried.join('\n')}`,
  );
}
