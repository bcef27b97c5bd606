// `berth status`: is berthd up, and how full is each network (from the daemon, or from the files).
import { openAdminBackend, type BackendOptions } from '../daemon/admin-backend';
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
