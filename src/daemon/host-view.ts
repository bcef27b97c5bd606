// berthd in a container (the node image's agent) sees its own files; the runtime on the host, and the
// standalone program a shim falls back to, see the host's. State berth-ipam keeps (its dataDir) or reads
// (resolvConf) must be the same file in both views, or a lease written by berthd lands in the container's
// layer while a fallback allocates from the host's directory: two pods, one address. Such calls are left
// to the host (421 on the warm path, a non-CNI answer to berth-ipam's daemon client).
import { type Stats, lstatSync, readlinkSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { ipamStatePaths } from '../ipam/config';

export interface HostView {
  /** Why `path` is not the same file for berthd and for the host, or undefined when it is (or cannot be told). */
  notShared(path: string): string | undefined;
  /** Why nothing is checked (the host's root cannot be read from here), for berthd's log at start. */
  unchecked?: string;
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/** `/proc/<pid>/root`'s process is in our mount namespace: one view of every path. */
function sameMountNamespace(hostRoot: string): boolean {
  const m = /^\/proc\/(\d+)\/root\/?$/.exec(hostRoot);
  if (m === null) return false;
  try {
    return readlinkSync(`/proc/${m[1]}/ns/mnt`) === readlinkSync('/proc/self/ns/mnt');
  } catch {
    return false;
  }
}

/**
 * The view through `hostRoot`: the host's `/` as seen from here (`/proc/1/root` with hostPID). A path is
 * compared at its nearest existing directory (a dataDir is made on the first ADD): same device and inode
 * through both roots, so it is one directory, bind mount or not. When `hostRoot` is a process's root in our
 * own mount namespace (berthd not in a container, or pid 1 is the container's own: no hostPID), nothing can
 * differ and every path is shared; when `hostRoot` cannot be read, nothing can be told (`unchecked` says so).
 */
export function hostViewThrough(hostRoot: string, warn: (line: string) => void = () => undefined): HostView {
  if (sameMountNamespace(hostRoot)) return { notShared: () => undefined };
  try {
    statSync(hostRoot);
  } catch (err) {
    return {
      notShared: () => undefined,
      unchecked: `the host's root ${hostRoot} cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)}; hostPID?): berth-ipam's data dirs are not checked against the host's`,
    };
  }
  const warned = new Set<string>();
  // The host's links on the way to a path are walked once (an lstat per part, on berthd's event loop, for
  // every berth-ipam call otherwise); what the two ends are is still stat'ed each time.
  const resolvedIn = new Map<string, string>();
  const resolve = (at: string): string | undefined => {
    const known = resolvedIn.get(at);
    if (known !== undefined) return known;
    const r = resolveInRoot(hostRoot, at);
    if (r !== undefined && resolvedIn.size < 256) resolvedIn.set(at, r);
    return r;
  };
  return {
    notShared(path: string): string | undefined {
      let at = path;
      let here = statOrUndefined(at);
      while (here === undefined && at !== '/') {
        at = dirname(at);
        here = statOrUndefined(at);
      }
      if (here === undefined) return undefined;
      const resolved = resolve(at);
      const there = resolved === undefined ? undefined : statOrUndefined(resolved);
      if (there !== undefined && there.dev === here.dev && there.ino === here.ino) return undefined;
      const why = `${path} is not the host's (${at} differs between berthd's container and the host: mount it)`;
      // Once per path: each of its calls still runs, standalone on the host, and the metric counts them.
      if (!warned.has(path) && warned.size < 64) {
        warned.add(path);
        warn(`${why}; the calls that use it run standalone on the host`);
      }
      return why;
    },
  };
}

/**
 * `path` of the host's view, resolved under `root` as the host would resolve it, or undefined when a part
 * is missing or the links loop. The kernel resolves an absolute symlink met below `/proc/<pid>/root` against
 * the caller's root, not that process's (the host's /var/run → /run would land in berthd's own /run): each
 * link is read here and followed inside `root`, and `..` stops at `root`.
 */
export function resolveInRoot(root: string, path: string): string | undefined {
  const parts = (p: string): string[] => p.split('/').filter((c) => c !== '' && c !== '.');
  let done: string[] = [];
  let todo = parts(path);
  for (let links = 0; todo.length > 0;) {
    const c = todo.shift()!;
    if (c === '..') {
      done.pop();
      continue;
    }
    const here = `${root}/${[...done, c].join('/')}`;
    let isLink: boolean;
    try {
      isLink = lstatSync(here).isSymbolicLink();
    } catch {
      return undefined;
    }
    if (!isLink) {
      done.push(c);
      continue;
    }
    if (++links > 40) return undefined;
    const target = readlinkSync(here);
    if (target.startsWith('/')) done = [];
    todo = [...parts(target), ...todo];
  }
  return `${root}/${done.join('/')}`;
}

/** The first of a config's berth-ipam paths the host does not share, as a reason; undefined when all are. */
export function berthIpamNotShared(view: HostView, config: unknown): string | undefined {
  for (const p of ipamStatePaths(config)) {
    const why = view.notShared(p);
    if (why !== undefined) return why;
  }
  return undefined;
}
