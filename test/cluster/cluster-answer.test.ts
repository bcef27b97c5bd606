// berth-ipam's answer on a cluster network (issue 15): host prefixes with the pool's gateway and a route
// to each pool via it, from berthd's Service with the cluster layer on the fake etcd.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { ClusterIpam } from '../../src/cluster/cluster-ipam';
import { Allocate } from '../../src/ipam/daemon/protocol';
import { Service } from '../../src/ipam/daemon/service';
import { FakeEtcd } from './fake-etcd';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

test('a cluster network answers /32 and /128 with the pool gateway and the pool routes', async () => {
  const fake = new FakeEtcd();
  cleanups.push(() => fake.close());
  const urls = [await fake.addMember()];
  const root = mkdtempSync(join(tmpdir(), 'bt-cluster-answer-'));
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const quiet = { log: () => undefined };
  const cluster = new ClusterIpam({
    etcd: { endpoints: urls, timeoutMs: 300 },
    prefix: '/berth/v1',
    nodeName: 'n1',
    nodeIdFile: join(root, 'node-id'),
    bootId: 'boot-n1',
    ttlSeconds: 3,
    horizonSeconds: 3600,
    claimTimeoutMs: 1500,
    blockReleaseAfterMs: 300_000,
    forgetMarginSeconds: 0,
    version: 'test',
    log: quiet,
  });
  const dataDir = join(root, 'data');
  const service = new Service({ dataDir, bootId: 'boot-n1', log: quiet, cluster });
  cluster.useStores((conf) => service.store(conf.dataDir, conf.network));
  await cluster.start();
  cleanups.push(async () => {
    await cluster.stop();
    await service.drain();
    service.close();
  });
  const config = {
    cniVersion: '1.1.0',
    name: 'ctnet',
    type: 'berth-ipam',
    ipam: {
      type: 'berth-ipam',
      dataDir,
      ranges: [[{ subnet: '198.19.0.0/20' }], [{ subnet: 'fd00:b::/64' }]],
      routes: [{ dst: '0.0.0.0/0' }],
      cluster: { blockSize: 26 },
    },
  };
  const envelope = (cid: string) => ({
    env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0' },
    config,
  });
  const seen: string[] = [];
  for (const cid of ['c1', 'c2']) {
    const r = await service.call(Allocate, envelope(cid));
    expect(r!.ips).toEqual([
      { address: expect.stringMatching(/^198\.19\.\d+\.\d+\/32$/), gateway: '198.19.0.1' },
      { address: expect.stringMatching(/^fd00:b::[0-9a-f:]+\/128$/), gateway: 'fd00:b::1' },
    ]);
    expect(r!.routes).toEqual([
      { dst: '198.19.0.0/20', gw: '198.19.0.1' },
      { dst: 'fd00:b::/64', gw: 'fd00:b::1' },
      { dst: '0.0.0.0/0' },
    ]);
    seen.push(...r!.ips!.map((c) => c.address));
  }
  // The shared gateway is never handed out.
  expect(seen).not.toContain('198.19.0.1/32');
  expect(seen).not.toContain('fd00:b::1/128');
});
