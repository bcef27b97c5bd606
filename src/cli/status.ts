// `berth status`: is berthd up, and how full is each network (from the daemon, or from the files).
import { openAdminBackend, type BackendOptions } from '../daemon/admin-backend';
import type { DaemonStatus } from '../ipam/daemon/protocol';
import type { CliIo } from './leases';

export interface StatusCliOptions extends BackendOptions {
  network?: string;
  json?: boolean;
}

export async function runStatus(o: StatusCliOptions, io: CliIo): Promise<number> {
  const b = await openAdminBackend(o);
  try {
    const s = await b.status(o.network === undefined ? {} : { network: o.network });
    if (o.json === true) {
      io.out(`${JSON.stringify({ backend: b.kind, where: b.where, ...s }, null, 2)}\n`);
      return 0;
    }
    if (s.daemon !== undefined) {
      const d = s.daemon;
      io.out(
        `berthd: ${d.draining ? 'draining' : 'running'} (pid ${d.pid}, up ${d.uptimeSeconds}s, socket ${d.socket})\n`,
      );
    } else {
      io.out(`berthd: not answering; lease files under ${b.where}\n`);
    }
    for (const line of warmPathLines(s.daemon)) io.out(`${line}\n`);
    if (s.networks.length === 0) io.out('no networks\n');
    for (const n of s.networks) {
      io.out(`network ${n.network} (${n.dataDir}/${n.network}): ${n.leases} lease(s)\n`);
      for (const p of n.pools ?? [])
        io.out(`  range set ${p.rangeSet} ${p.ranges}: ${p.used} used, ${p.free} free of ${p.size}\n`);
    }
    return 0;
  } finally {
    b.close();
  }
}

/**
 * The warm path as `berth status` tells it: whether berth-bridge/berth-ipam calls run in berthd (through
 * the shim) or standalone, and what berthd did with the calls it got since it started.
 */
export function warmPathLines(daemon: DaemonStatus | undefined): string[] {
  if (daemon === undefined)
    return ['warm path: down (berthd not answering): the shims run every plugin call standalone'];
  const w = daemon.warm;
  if (w === undefined)
    return ['warm path: off (berthd started with --no-plugins): the shims run every plugin call standalone'];
  const state = w.up && !daemon.draining ? 'up' : 'draining (new calls run standalone)';
  return [
    `warm path: ${state}: ${w.plugins.join(', ')} served in berthd (run dir ${w.runDir}, nft table ` +
      `${w.nftTable}, deadline ${w.deadlineMs / 1000} s per call)`,
    `  calls served ${w.served} (${w.errors} ended with a CNI error), ${w.inFlight} in flight; ` +
      `${w.notServed} sent back to run standalone (421)`,
    ...(w.settingsMismatch !== undefined ? [`  warning: ${w.settingsMismatch}`] : []),
  ];
}
