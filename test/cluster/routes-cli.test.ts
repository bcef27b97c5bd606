// `berth cluster routes` and the route metrics through a real berthd server on a temp unix socket, with the
// route programmer over an in-memory table (the kernel side is proven in routes.root.test.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockMap } from '../../src/cluster/block-map';
import { RouteProgrammer } from '../../src/cluster/route-programmer';
import { runClusterStatus } from '../../src/cli/cluster';
import { runClusterRoutes } from '../../src/cli/cluster-routes';
import { createLogger } from '../../src/daemon/log';
import { Metrics } from '../../src/daemon/metrics';
import { BerthServer } from '../../src/daemon/server';
import { callDaemon } from '../../src/ipam/daemon-client';
import { Service } from '../../src/ipam/daemon/service';
import { FakeRouteTable } from './fake-route-table';
import { poolsConfig } from './pools-fixture';

const P = '/berth/v1';
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function serve(routes?: RouteProgrammer): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'bt-routes-cli-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const log = createLogger({ format: 'text', level: 'error', write: () => undefined });
  const socket = join(dir, 'berthd.sock');
  const server = new BerthServer({
    service: new Service({ bootId: undefined, dataDir: join(dir, 'data'), log }),
    log,
    metrics: new Metrics(),
    socketPath: socket,
    // This process, as whichever user runs the tests, may change things (root only by default).
    writerUids: [process.getuid!()],
    ...(routes !== undefined ? { routes } : {}),
  });
  await new Promise<void>((resolve) => server.http.listen(socket, resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.http.close(() => resolve())));
  return socket;
}

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s) }, out, err };
}

describe('berth cluster routes', () => {
  it('lists the routes with the kernel view, exit 0 when it agrees and 1 when it does not; metrics count them', async () => {
    const table = new FakeRouteTable();
    const map = new BlockMap(P);
    map.reset([
      poolsConfig(P),
      { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '{"node":"n2"}' },
      { key: `${P}/nets/pods/blocks/fd00:b::40-122`, value: '{"node":"n2"}' },
      { key: `${P}/nets/pods/blocks/198.19.0.128-26`, value: '{"node":"n3"}' },
      { key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12","underlay6":"fd00:ff::12"}' },
    ]);
    const programmer = new RouteProgrammer({
      source: map,
      self: 'n1',
      openTable: () => table,
      resyncMs: 0,
      log: () => {},
    });
    cleanups.push(() => programmer.stop());
    programmer.start();
    await programmer.reconcileNow();
    const socket = await serve(programmer);

    const ok = capture();
    expect(await runClusterRoutes({ socket }, ok.io)).toBe(0);
    const text = ok.out.join('');
    expect(text).toMatch(/198\.19\.0\.64\/26\s+198\.18\.0\.12\s+n2\s+pods\s+198\.18\.0\.12\s+ok/);
    expect(text).toMatch(/198\.19\.0\.128\/26\s+-\s+n3\s+pods\s+-\s+held \(underlay unknown\)/);
    expect(text).toContain('the kernel agrees');

    // Someone deletes one of berthd's routes: the CLI says so (and exits 1) until the next reconcile.
    table.routes = table.routes.filter((r) => r.dst !== 'fd00:b::40/122');
    const bad = capture();
    expect(await runClusterRoutes({ socket, json: true }, bad.io)).toBe(1);
    const json = JSON.parse(bad.out.join(''));
    expect(json.agrees).toBe(false);
    expect(json.entries.find((e: any) => e.dst === 'fd00:b::40/122').state).toBe('missing');

    const metrics = await callDaemon({ socket, method: 'GET', path: '/metrics' });
    expect(String(metrics.body)).toContain('berthd_cluster_routes{family="ipv4"} 1');
    expect(String(metrics.body)).toContain('berthd_cluster_routes{family="ipv6"} 1');
    expect(String(metrics.body)).toContain('berthd_cluster_routes_held 1');
    expect(String(metrics.body)).toContain('berthd_cluster_route_reconcile_errors_total 0');
    expect(String(metrics.body)).toContain('berthd_cluster_route_changes_total{op="added"} 2');
  });

  it('says once where berthd does not answer, exit 1', async () => {
    const c = capture();
    const socket = join(tmpdir(), `bt${process.pid}-none.sock`);
    expect(await runClusterRoutes({ socket }, c.io)).toBe(1);
    expect(c.err.join('')).toBe(`berth cluster routes: no answer from berthd at ${socket}: ENOENT\n`);
    const s = capture();
    expect(await runClusterStatus({ socket }, s.io)).toBe(1);
    expect(s.err.join('')).toBe(`berth cluster status: no answer from berthd at ${socket}: ENOENT\n`);
  });

  it('says so when the daemon is not a cluster node', async () => {
    const socket = await serve();
    const c = capture();
    expect(await runClusterRoutes({ socket }, c.io)).toBe(1);
    expect(c.err.join('')).toContain('not a cluster node');
  });
});
