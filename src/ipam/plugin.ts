// berth-ipam's entry: the handler table bound to the lease-file store, the real boot id and stderr.
import { runPlugin } from '../cni-spec/dispatch';
import type { Request } from '../cni-spec/request';
import { BOOT_ID_FILE, readBootId } from './boot-id';
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

export function main(): void {
  runPlugin(
    {
      add: (req) => add(req, depsFor(req)),
      del: (req) => del(req, depsFor(req)),
      check: (req) => check(req, depsFor(req)),
      gc: (req) => gc(req, depsFor(req)),
      status: (req) => status(req, depsFor(req)),
    },
    { name: 'berth-ipam' },
  );
}
