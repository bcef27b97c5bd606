// `berth cluster status|check` and `berth node forget|leave|rejoin`: asked of the local berthd, which holds
// the etcd endpoints and credentials (none of them on this command line).
import type { ClusterCheckReply, ClusterStatusReply } from '../cluster/cluster-ipam';
import { DaemonUnavailable, callDaemon } from '../ipam/daemon-client';
import { DEFAULT_SOCKET } from '../ipam/daemon/protocol';
import type { CliIo } from './leases';
import { columnWidths } from './table';

export interface ClusterCliOptions {
  socket?: string;
  json?: boolean;
}

/** One request to berthd; undefined, with the reason on stderr, when it fails or berthd refuses it. */
export async function ask(
  what: string,
  o: ClusterCliOptions,
  io: CliIo,
  method: 'GET' | 'POST',
  path: string,
): Promise<unknown> {
  let reply;
  try {
    reply = await callDaemon({ socket: o.socket ?? DEFAULT_SOCKET, method, path });
  } catch (err) {
    // The client's error names the socket already ("berthd at <socket>: ENOENT").
    if (!(err instanceof DaemonUnavailable)) throw err;
    io.err(`berth ${what}: no answer from ${err.message}\n`);
    return undefined;
  }
  if (reply.status !== 200) {
    const msg = (reply.body as { msg?: string } | undefined)?.msg ?? `HTTP ${reply.status}`;
    io.err(`berth ${what}: ${msg}\n`);
    return undefined;
  }
  return reply.body;
}

function table(rows: string[][], io: CliIo): void {
  const widths = columnWidths(rows);
  for (const r of rows)
    io.out(
      `${r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd()}\n`,
    );
}

export async function runClusterStatus(o: ClusterCliOptions, io: CliIo): Promise<number> {
  const r = (await ask('cluster status', o, io, 'GET', '/v1/cluster/status')) as
    ClusterStatusReply | undefined;
  if (r === undefined) return 1;
  if (o.json === true) {
    io.out(`${JSON.stringify(r, null, 2)}\n`);
    return 0;
  }
  io.out(
    `node ${r.node} (uid ${r.uid}), prefix ${r.prefix}, last contact with etcd ${r.lastContactSecondsAgo} s ago\n`,
  );
  if (r.fenced !== undefined) io.out(`FENCED: ${r.fenced}\n`);
  io.out(`etcd: ${r.etcd.map((e) => `${e.endpoint} ${e.healthy ? 'healthy' : 'UNHEALTHY'}`).join(', ')}\n`);
  for (const n of r.networks) {
    io.out(`network ${n.network}: ${n.blocks.length} block(s) here, ${n.used} used, ${n.free} free\n`);
  }
  const rows = [['NODE', 'STATE', 'NETWORK', 'BLOCKS']];
  for (const n of r.nodes) {
    const state =
      n.forgotten === true
        ? 'forgotten'
        : n.alive
          ? 'alive'
          : `absent${n.absentSince ? ` since ${n.absentSince}` : ''}`;
    const nets = Object.entries(n.blocks);
    if (nets.length === 0) rows.push([n.node, state, '-', '0']);
    for (const [net, blocks] of nets)
      rows.push([n.node, state, net, `${blocks.length}: ${blocks.sort().join(' ')}`]);
  }
  table(rows, io);
  return 0;
}

export async function runClusterCheck(o: ClusterCliOptions, io: CliIo): Promise<number> {
  const r = (await ask('cluster check', o, io, 'GET', '/v1/cluster/check')) as ClusterCheckReply | undefined;
  if (r === undefined) return 1;
  if (o.json === true) io.out(`${JSON.stringify(r, null, 2)}\n`);
  else {
    for (const p of r.problems) io.out(`problem: ${p}\n`);
    io.out(
      `checked ${r.checked.blocks} block(s) of ${r.checked.networks} network(s), ${r.checked.nodes} node(s): ${r.problems.length === 0 ? 'clean' : `${r.problems.length} problem(s)`}\n`,
    );
  }
  return r.problems.length === 0 ? 0 : 1;
}

export async function runNodeForget(
  node: string,
  o: ClusterCliOptions & { force?: boolean },
  io: CliIo,
): Promise<number> {
  const path = `/v1/cluster/nodes/${encodeURIComponent(node)}/forget${o.force === true ? '?force=1' : ''}`;
  const r = (await ask('node forget', o, io, 'POST', path)) as { node: string; blocks: string[] } | undefined;
  if (r === undefined) return 1;
  if (o.json === true) io.out(`${JSON.stringify(r, null, 2)}\n`);
  else io.out(`node ${r.node} forgotten; ${r.blocks.length} block(s) freed\n`);
  return 0;
}

export async function runNodeSelf(
  what: 'leave' | 'rejoin',
  o: ClusterCliOptions,
  io: CliIo,
): Promise<number> {
  const r = await ask(`node ${what}`, o, io, 'POST', `/v1/cluster/${what}`);
  if (r === undefined) return 1;
  io.out(o.json === true ? `${JSON.stringify(r, null, 2)}\n` : `done\n`);
  return 0;
}
