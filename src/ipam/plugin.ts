// berth-ipam's entry: the handler table bound to the lease-file store, the real boot id and stderr.
import { runPlugin } from '../cni-spec/dispatch';
import type { Request } from '../cni-spec/request';
import { BOOT_ID_FILE, readBootId } from './boot-id';
import { forwardToDaemon } from './daemon-client';
import { type IpamDeps, add, check, del, gc, status } from './handlers';
import { openLeaseFileStore } from './lease-file-store';

function warn(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/**
 * Services for one invocation. BERTH_BOOT_ID_FILE replaces /proc/sys/kernel/random/boot_id: tests use it to
 * simulate a reboot; it has no other use.
 */
function depsFor(req: Request): IpamDeps {
  const bootFile = req.env.BERTH_BOOT_ID_FILE;
  const bootId = readBootId(bootFile !== undefined && bootFile !== '' ? bootFile : BOOT_ID_FILE, warn);
  return {
    bootId,
    warn,
    now: () => new Date(),
    openStore: (conf) =>
      openLeaseFileStore({ dataDir: conf.dataDir, network: conf.network, bootId: bootId ?? 'unknown', warn }),
  };
}

/** berthd answers when its socket does; otherwise the files (so DEL never fails because the daemon is down). */
async function served<T>(req: Request, direct: (req: Request, deps: IpamDeps) => Promise<T>): Promise<T> {
  const reply = await forwardToDaemon(req, warn);
  return reply === undefined ? direct(req, depsFor(req)) : (reply.result as T);
}

export function main(): void {
  runPlugin(
    {
      add: (req) => served(req, add),
      del: (req) => served(req, del),
      check: (req) => served(req, check),
      gc: (req) => served(req, gc),
      status: (req) => served(req, status),
    },
    { name: 'berth-ipam' },
  );
}
