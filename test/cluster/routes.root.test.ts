// Route programming against a real kernel: a "node" namespace with an underlay link, berthd's route
// programmer fed by a block map, checked with `ip -j route` as the observer. Proves: routes appear via the
// owners' underlay (IPv4, IPv6, IPv4 via IPv6), an operator's routes are never touched, a restart
// reconciles without duplicates, a flush is repaired, and released or forgotten blocks lose their routes.
import { describe, expect, it } from 'vitest';
import { BlockMap } from '../../src/cluster/block-map';
import { RouteProgrammer } from '../../src/cluster/route-programmer';
import { reconcileRoutes } from '../../src/cluster/routes';
import { openNetlink } from '../../src/netlink/rtnetlink';
import { observe, observeJson, useKernelFixture, type Place } from '../netlink/kernel-fixture';
import { poolsConfig } from './pools-fixture';

const kernel = useKernelFixture();
const P = '/berth/v1';

function routes(place: Place): string[] {
  const v4 = observeJson<any[]>(place, 'ip', ['route', 'show', 'proto', '190']);
  const v6 = observeJson<any[]>(place, 'ip', ['-6', 'route', 'show', 'proto', '190']);
  return [...v4, ...v6].map((r) => `${r.dst} via ${r.gateway ?? r.via?.host}`).sort();
}

const block = (cidr: string, node: string) => ({
  key: `${P}/nets/pods/blocks/${cidr.replace('/', '-')}`,
  value: JSON.stringify({ node }),
});
const alive = (node: string, underlay: string, underlay6?: string) => ({
  key: `${P}/nodes/${node}/alive`,
  value: JSON.stringify({ uid: 'u', underlay, ...(underlay6 !== undefined ? { underlay6 } : {}) }),
});

describe('route programmer in a node namespace', () => {
  it('programs, keeps, repairs and removes proto-190 routes and nothing else', async () => {
    const fx = kernel.fresh();
    const node = fx.addNetns('n');
    const peer = fx.addNetns('u');
    const nl = kernel.track(openNetlink(node.path));
    await nl.createVethPair({ name: 'ul0', peerName: 'ul0', peerNetns: peer.path! });
    await nl.setUp('ul0');
    await nl.addAddress({ link: 'ul0', address: '198.18.40.11', prefixLength: 24 });
    await nl.addAddress({ link: 'ul0', address: 'fd00:ff:40::11', prefixLength: 64, nodad: true });
    // The operator's own route into the pool, and one on a destination berthd will want (a conflict).
    await nl.addRoute({ dst: '198.19.99.0/24', gateway: '198.18.40.1' });
    await nl.addRoute({ dst: '198.19.0.192/26', gateway: '198.18.40.1' });
    const operator = () =>
      observeJson<any[]>(node, 'ip', ['route', 'show', 'proto', 'boot'])
        .map((r) => r.dst)
        .sort();
    expect(operator()).toEqual(['198.19.0.192/26', '198.19.99.0/24']);

    const map = new BlockMap(P);
    const logs: string[] = [];
    const start = () => {
      const p = new RouteProgrammer({
        source: map,
        self: 'n1',
        openTable: () => openNetlink(node.path),
        resyncMs: 0,
        log: (l) => logs.push(l),
      });
      p.start();
      return p;
    };
    let programmer = start();
    map.reset([
      poolsConfig(P),
      block('198.19.0.0/26', 'n1'),
      block('198.19.0.64/26', 'n2'),
      block('fd00:b::40/122', 'n2'),
      block('198.19.0.128/26', 'n3'),
      block('198.19.0.192/26', 'n3'),
      alive('n1', '198.18.40.11'),
      alive('n2', '198.18.40.12', 'fd00:ff:40::12'),
      alive('n3', 'fd00:ff:40::13'),
    ]);
    const first = await programmer.reconcileNow();
    expect(first).toMatchObject({ conflicts: ['198.19.0.192/26'], errors: [] });
    const want = [
      '198.19.0.128/26 via fd00:ff:40::13',
      '198.19.0.64/26 via 198.18.40.12',
      'fd00:b::40/122 via fd00:ff:40::12',
    ];
    expect(routes(node)).toEqual(want);
    expect(operator()).toEqual(['198.19.0.192/26', '198.19.99.0/24']);
    expect(logs.join('\n')).toContain("another owner's route");

    // berthd restarts: a new programmer, a fresh map; the first reconcile changes nothing, duplicates nothing.
    await programmer.stop();
    expect(routes(node)).toEqual(want);
    programmer = start();
    const again = await programmer.reconcileNow();
    expect(again).toMatchObject({ added: [], removed: [], replaced: [], unchanged: 3, errors: [] });
    expect(routes(node)).toEqual(want);

    // Someone flushes berthd's routes: the next (periodic) reconcile puts them back.
    observe(node, 'ip', ['route', 'flush', 'proto', '190']);
    observe(node, 'ip', ['-6', 'route', 'flush', 'proto', '190']);
    expect(routes(node)).toEqual([]);
    expect((await programmer.reconcileNow())?.added).toHaveLength(3);
    expect(routes(node)).toEqual(want);

    // n2 releases its IPv4 block; n3 moves to a new underlay; n3 is then forgotten (blocks deleted).
    map.apply([
      { type: 'delete', key: block('198.19.0.64/26', 'n2').key },
      { type: 'put', ...alive('n3', '198.18.40.23') },
    ]);
    await programmer.reconcileNow();
    expect(routes(node)).toEqual(['198.19.0.128/26 via 198.18.40.23', 'fd00:b::40/122 via fd00:ff:40::12']);
    map.apply([
      { type: 'delete', key: `${P}/nodes/n3/alive` },
      { type: 'delete', key: block('198.19.0.128/26', 'n3').key },
      { type: 'delete', key: block('198.19.0.192/26', 'n3').key },
    ]);
    await programmer.reconcileNow();
    expect(routes(node)).toEqual(['fd00:b::40/122 via fd00:ff:40::12']);
    const report = await programmer.report();
    expect(report.entries.map((e) => `${e.dst} ${e.state}`)).toEqual(['fd00:b::40/122 ok']);
    await programmer.stop();
    expect(operator()).toEqual(['198.19.0.192/26', '198.19.99.0/24']);
  });
});

describe("a multipath proto-190 route (not berthd's making)", () => {
  it('is replaced by the one next hop wanted, not reported removed on every pass', async () => {
    const fx = kernel.fresh();
    const node = fx.addNetns('m');
    const peer = fx.addNetns('p');
    const nl = kernel.track(openNetlink(node.path));
    await nl.createVethPair({ name: 'ul0', peerName: 'ul0', peerNetns: peer.path! });
    await nl.setUp('ul0');
    await nl.addAddress({ link: 'ul0', address: '198.18.41.11', prefixLength: 24 });
    observe(node, 'ip', [
      'route',
      'add',
      '198.19.1.0/26',
      'proto',
      '190',
      'nexthop',
      'via',
      '198.18.41.12',
      'dev',
      'ul0',
      'nexthop',
      'via',
      '198.18.41.13',
      'dev',
      'ul0',
    ]);
    const desired = {
      routes: [{ dst: '198.19.1.0/26', via: '198.18.41.12', node: 'n2', network: 'pods' }],
      held: [],
    };
    const first = await reconcileRoutes({ table: nl, desired });
    expect(first.errors).toEqual([]);
    expect(first.removed).toEqual([]);
    expect(routes(node)).toEqual(['198.19.1.0/26 via 198.18.41.12']);
    const second = await reconcileRoutes({ table: nl, desired });
    expect(second).toMatchObject({ removed: [], replaced: [], added: [], unchanged: 1 });
  });
});
