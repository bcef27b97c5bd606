// berth-ipam's entry: the handler table bound to the lease-file store, the real boot id and stderr.
import { runPlugin } from '../cni-spec/dispatch';
import type { Request } from '../cni-spec/request';
import { BOOT_ID_FILE, bootStartedMs, readBootId } from './boot-id';
import { filesClusterAllocator } from './cluster-blocks';
import { forwardToDaemon } from './daemon-client';
import type { IpamDeps } from './handlers';

/** Warnings go to the caller's stderr, through the request's own sink. */
function warnerOf(req: Request): (msg: string) => void {
  return (msg) => req.stderr(`${msg}\n`);
}

/**
 * Services for one invocation. BERTH_BOOT_ID_FILE replaces /proc/sys/kernel/random/boot_id: tests use it to
 * simulate a reboot; it has no other use.
 */
function depsFor(req: Request): IpamDeps {
  const warn = warnerOf(req);
  const bootFile = req.env.BERTH_BOOT_ID_FILE;
  const bootIdFile = bootFile !== undefined && bootFile !== '' ? bootFile : BOOT_ID_FILE;
  const bootId = readBootId(bootIdFile, warn);
  return {
    bootId,
    warn,
    now: () => new Date(),
    cluster: filesClusterAllocator(() => new Date()),
    openStore: (conf) =>
      (require('./lease-file-store') as typeof import('./lease-file-store')).openLeaseFileStore({
        dataDir: conf.dataDir,
        network: conf.network,
        bootId: bootId ?? 'unknown',
        bootStarted: () => bootStartedMs(bootIdFile),
        warn,
      }),
  };
}

type Handlers = typeof import('./handlers');

/**
 * berthd answers when its socket does; otherwise the files (so DEL never fails because the daemon is down).
 * The handlers and the file store load only then: when the daemon answers they are ~10 ms of unused start-up.
 */
async function served<T>(
  req: Request,
  pick: (h: Handlers) => (req: Request, deps: IpamDeps) => Promise<T>,
): Promise<T> {
  const reply = await forwardToDaemon(req, warnerOf(req));
  if (reply !== undefined) return reply.result as T;
  return pick(require('./handlers') as Handlers)(req, depsFor(req));
}

export function main(): void {
  runPlugin(
    {
      add: (req) => served(req, (h) => h.add),
      del: (req) => served(req, (h) => h.del),
      check: (req) => served(req, (h) => h.check),
      gc: (req) => served(req, (h) => h.gc),
      status: (req) => served(req, (h) => h.status),
    },
    { name: 'berth-ipam' },
  );
}
