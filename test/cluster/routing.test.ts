// Routing beside the cluster IPAM, on the fake etcd: nodes publish their underlay in `alive`, and a
// node's routing follows the blocks the others claim (through the watch) onto its route table.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { ClusterIpam } from '../../src/cluster/cluster-ipam';
import { startClusterRouting } from '../../src/cluster/routing';
import { Allocate } from '../../src/ipam/daemon/protocol';
import { Service } from '../../src/ipam/daemon/service';
import { FakeEtcd } from './fake-etcd';
import { FakeRouteTable } from './fake-route-table';
import { poolsConfig } from './pools-fixture';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
const quiet = { log: () => undefined };

async function node(urls: string[], root: string, name: string, underlay: string) {
  const cluster = new ClusterIpam({
    etcd: { endpoints: urls, timeoutMs: 300 },
    prefix: '/berth/v1',
    nodeName: name,
    nodeIdFile: join(root, `${name}-id`),
    bootId: `boot-${name}`,
    ttlSeconds: 3,
    horizonSeconds: 3600,
    claimTimeoutMs: 1500,
    blockReleaseAfterMs: 300_000,
    forgetMarginSeconds: 0,
    version: 'test',
    underlay: { underlay },
    log: quiet,
  });
  const dataDir = join(root, name);
  const service = new Service({ dataDir, bootId: `boot-${name}`, log: quiet, cluster });
  cluster.useStores((conf) => service.store(conf.dataDir, conf.network));
  await cluster.start();
  cleanups.push(async () => {
    await cluster.stop();
    await service.drain();
    service.close();
  });
  const add = (cid: string) =>
    service.call(Allocate, {
      env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0' },
      config: {
        cniVersion: '1.1.0',
        name: 'ctnet',
        type: 'berth-ipam',
        ipam: { type: 'berth-ipam', dataDir, ranges: [[{ subnet: '198.19.0.0/20' }]], cluster: {} },
      },
    });
  return { cluster, add };
}

test('alive carries the underlay; a block another node claims gets a route via it', async () => {
  const fake = new FakeEtcd();
  cleanups.push(() => fake.close());
  const urls = [await fake.addMember()];
  const root = mkdtempSync(join(tmpdir(), 'bt-routing-'));
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const n1 = await node(urls, root, 'n1', '198.18.60.11');
  const n2 = await node(urls, root, 'n2', '198.18.60.12');
  expect(JSON.parse(fake.get('/berth/v1/nodes/n2/alive')!.value)).toMatchObject({ underlay: '198.18.60.12' });

  const table = new FakeRouteTable();
  const routing = await startClusterRouting({
    etcd: n1.cluster.etcd,
    prefix: '/berth/v1',
    self: 'n1',
    log: () => undefined,
    openTable: () => table,
    resyncMs: 0,
  });
  cleanups.push(() => routing.close());
  await n1.add('a1');
  const r2 = await n2.add('b1');
  const ip2 = r2!.ips![0]!.address.split('/')[0]!;
  const blocksOf = (n: string) =>
    fake
      .keys('/berth/v1/nets/ctnet/blocks/')
      .filter((k) => (JSON.parse(fake.get(k)!.value) as { node: string }).node === n)
      .map((k) => k.slice(k.lastIndexOf('/') + 1).replace('-', '/'));
  const block2 = blocksOf('n2');
  expect(block2.length).toBeGreaterThan(0);
  // The watch delivers the claims; wait for the programmer to have reconciled them.
  for (let i = 0; i < 100 && table.routes.length < block2.length; i++)
    await new Promise((r) => setTimeout(r, 20));
  await routing.programmer.reconcileNow();
  expect(table.routes.map((r) => `${r.dst} via ${r.gateway} proto ${r.protocol}`).sort()).toEqual(
    blocksOf('n2')
      .map((b) => `${b} via 198.18.60.12 proto 190`)
      .sort(),
  );
  // n1's own blocks are never routed.
  expect(table.routes.some((r) => blocksOf('n1').includes(r.dst))).toBe(false);
  expect(ip2.startsWith('198.19.')).toBe(true);
});

test('routing waits for an unreachable etcd without touching the routes, then loads', async () => {
  let fail = true;
  const etcd = {
    range: () =>
      fail
        ? Promise.reject(new Error('etcd unreachable'))
        : Promise.resolve({
            kvs: [
              poolsConfig('/berth/v1', 'n'),
              { key: '/berth/v1/nets/n/blocks/198.19.0.64-26', value: '{"node":"n2"}' },
              { key: '/berth/v1/nodes/n2/alive', value: '{"underlay":"198.18.0.12"}' },
            ],
            revision: '7',
          }),
    watch: () => ({ close: () => undefined }),
  };
  const table = new FakeRouteTable();
  await table.addRoute({ dst: '198.19.1.0/26', gateway: '198.18.0.13', protocol: 190 });
  const logs: string[] = [];
  const routing = await startClusterRouting({
    etcd,
    prefix: '/berth/v1',
    self: 'n1',
    log: (l) => logs.push(l),
    openTable: () => table,
    resyncMs: 0,
    retryMs: 20,
  });
  cleanups.push(() => routing.close());
  expect(logs.join('\n')).toContain('cannot load the block map yet');
  expect(table.routes.map((r) => r.dst)).toEqual(['198.19.1.0/26']);
  fail = false;
  for (let i = 0; i < 100 && !table.routes.some((r) => r.dst === '198.19.0.64/26'); i++)
    await new Promise((r) => setTimeout(r, 20));
  await routing.programmer.reconcileNow();
  expect(table.routes.map((r) => r.dst)).toEqual(['198.19.0.64/26']);
});
