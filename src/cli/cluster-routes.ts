// `berth cluster routes`: the routes berthd keeps to other nodes' blocks and whether the kernel agrees
// (asked of the daemon, which reads its own namespace's table at that moment). Exit 1 when they differ.
import type { RoutesReport } from '../cluster/route-programmer';
import { ask } from './cluster';
import type { CliIo } from './leases';

export interface ClusterRoutesCliOptions {
  socket?: string;
  json?: boolean;
}

export async function runClusterRoutes(o: ClusterRoutesCliOptions, io: CliIo): Promise<number> {
  const r = (await ask('cluster routes', o, io, 'GET', '/v1/cluster/routes')) as RoutesReport | undefined;
  if (r === undefined) return 1;
  const disagree = r.entries.filter((e) => e.state !== 'ok' && e.state !== 'held');
  if (o.json === true) {
    io.out(`${JSON.stringify({ ...r, agrees: disagree.length === 0 }, null, 2)}\n`);
    return disagree.length === 0 ? 0 : 1;
  }
  if (!r.loaded) {
    io.out(`node ${r.self}: block map not loaded yet; berthd leaves the kernel's routes as they are\n`);
    return 0;
  }
  io.out(`node ${r.self}: ${r.entries.length} route(s), proto 190, table ${r.tableId}\n`);
  const rows = r.entries.map((e) => [
    e.dst,
    e.via ?? '-',
    e.node ?? '-',
    e.network ?? '-',
    e.kernelVia ?? '-',
    e.state + (e.reason !== undefined ? ` (${e.reason})` : ''),
  ]);
  const head = ['BLOCK', 'VIA', 'NODE', 'NETWORK', 'KERNEL VIA', 'STATE'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  for (const row of [head, ...rows])
    io.out(
      `${row
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd()}\n`,
    );
  if (r.last !== undefined) {
    const l = r.last.outcome;
    io.out(
      `last reconcile ${r.last.at}: +${l.added.length} ~${l.replaced.length} -${l.removed.length}, ${l.conflicts.length} conflict(s), ${l.errors.length} error(s)\n`,
    );
  }
  io.out(
    disagree.length === 0 ? 'the kernel agrees\n' : `the kernel disagrees on ${disagree.length} route(s)\n`,
  );
  return disagree.length === 0 ? 0 : 1;
}
