// Route programming without a kernel: what berthd wants from a block map, how a reconcile moves an
// in-memory table (with the kernel's matching rules) there, and the block map fed by etcd keys.
import { describe, expect, it, vi } from 'vitest';
import { BlockMap, parseClusterKey, underlayOf } from '../../src/cluster/block-map';
import { RouteProgrammer } from '../../src/cluster/route-programmer';
import {
  canonicalCidr,
  compareRoutes,
  desiredRoutes,
  reconcileRoutes,
  type ClusterView,
} from '../../src/cluster/routes';
import { FakeRouteTable } from './fake-route-table';
import { poolsConfig } from './pools-fixture';

const P = '/berth/v1';
const view: ClusterView = {
  blocks: [
    { network: 'pods', cidr: '198.19.0.0/26', node: 'n1' },
    { network: 'pods', cidr: '198.19.0.64/26', node: 'n2' },
    { network: 'pods', cidr: 'fd00:b:0:0:0:0:0:1c0/122', node: 'n2' },
    { network: 'pods', cidr: '198.19.0.128/26', node: 'n3' },
    { network: 'pods', cidr: 'fd00:b::200/122', node: 'n3' },
  ],
  alive: [
    { node: 'n1', underlay: ['198.18.0.11'] },
    { node: 'n2', underlay: ['198.18.0.12', 'fd00:ff::12'] },
    { node: 'n3', underlay: ['fd00:ff::13'] },
  ],
};

describe('desiredRoutes', () => {
  it('routes every block of another node via its underlay of the same family; IPv4 may go via IPv6', () => {
    const d = desiredRoutes(view, 'n1');
    expect(d.routes).toEqual([
      { dst: '198.19.0.128/26', via: 'fd00:ff::13', node: 'n3', network: 'pods' },
      { dst: '198.19.0.64/26', via: '198.18.0.12', node: 'n2', network: 'pods' },
      { dst: 'fd00:b::1c0/122', via: 'fd00:ff::12', node: 'n2', network: 'pods' },
      { dst: 'fd00:b::200/122', via: 'fd00:ff::13', node: 'n3', network: 'pods' },
    ]);
    expect(d.held).toEqual([]);
  });

  it('never routes its own blocks; an IPv6 block of a node without IPv6 underlay is held', () => {
    const d = desiredRoutes(
      { blocks: [...view.blocks, { network: 'pods', cidr: 'fd00:b::/122', node: 'n1' }], alive: view.alive },
      'n2',
    );
    expect(d.routes.map((r) => r.dst)).not.toContain('198.19.0.64/26');
    expect(d.held).toEqual([
      { dst: 'fd00:b::/122', node: 'n1', network: 'pods', reason: 'no underlay of this family' },
    ]);
  });

  it('does not route through an address two live nodes publish, this node included', () => {
    const shared: ClusterView = {
      blocks: [...view.blocks, { network: 'pods', cidr: '198.19.0.192/26', node: 'n4' }],
      alive: [
        ...view.alive,
        // n4 copied n2's IPv4 address (written another way).
        { node: 'n4', underlay: ['::ffff:198.18.0.12'] },
      ],
    };
    const d = desiredRoutes(shared, 'n1');
    const why = 'underlay shared with another node';
    // n4 has nothing else: held. n2's IPv4 block goes via its own IPv6 address instead (RFC 5549).
    expect(d.held).toEqual([{ dst: '198.19.0.192/26', node: 'n4', network: 'pods', reason: why }]);
    expect(d.routes.map((r) => `${r.dst} ${r.via}`)).toEqual([
      '198.19.0.128/26 fd00:ff::13',
      '198.19.0.64/26 fd00:ff::12',
      'fd00:b::1c0/122 fd00:ff::12',
      'fd00:b::200/122 fd00:ff::13',
    ]);
    // A node that publishes this node's own address: its IPv4 block is held (routed through ourselves before).
    const mine = desiredRoutes(
      {
        blocks: view.blocks,
        alive: [...view.alive.filter((n) => n.node !== 'n3'), { node: 'n3', underlay: ['198.18.0.11'] }],
      },
      'n1',
    );
    expect(mine.held).toContainEqual({ dst: '198.19.0.128/26', node: 'n3', network: 'pods', reason: why });
    expect(mine.routes.filter((r) => r.node === 'n3')).toEqual([]);
  });

  it("a live node's address is its own: a lapsed node's last address taken over is not routed through for it", () => {
    // n2 lapsed at 198.18.0.12; n5, alive, publishes that address now (a reused machine address).
    const taken: ClusterView = {
      blocks: [...view.blocks, { network: 'pods', cidr: '198.19.1.0/26', node: 'n5' }],
      alive: [...view.alive.filter((n) => n.node !== 'n2'), { node: 'n5', underlay: ['198.18.0.12'] }],
    };
    const d = desiredRoutes(taken, 'n1', new Map([['n2', ['198.18.0.12']]]));
    expect(d.routes.filter((r) => r.node === 'n5').map((r) => `${r.dst} ${r.via}`)).toEqual([
      '198.19.1.0/26 198.18.0.12',
    ]);
    expect(d.routes.filter((r) => r.node === 'n2')).toEqual([]);
    expect(d.held).toContainEqual({
      dst: '198.19.0.64/26',
      node: 'n2',
      network: 'pods',
      reason: 'underlay shared with another node',
    });
  });

  it('two lapsed nodes that shared an address stay held while no live node holds it', () => {
    const clones: ClusterView = {
      blocks: [...view.blocks, { network: 'pods', cidr: '198.19.0.192/26', node: 'n4' }],
      alive: view.alive.filter((n) => n.node !== 'n2'),
    };
    const d = desiredRoutes(
      clones,
      'n1',
      new Map([
        ['n2', ['198.18.0.12']],
        ['n4', ['198.18.0.12']],
      ]),
    );
    expect(d.routes.filter((r) => r.node === 'n2' || r.node === 'n4')).toEqual([]);
    expect(d.held.filter((h) => h.reason === 'underlay shared with another node').map((h) => h.node)).toEqual(
      ['n2', 'n4'],
    );
  });

  it('keeps the routes of a node whose lease lapsed via the last underlay seen; holds unknown ones', () => {
    const lapsed = { blocks: view.blocks, alive: view.alive.filter((n) => n.node !== 'n2') };
    const withMemory = desiredRoutes(lapsed, 'n1', new Map([['n2', ['198.18.0.12', 'fd00:ff::12']]]));
    expect(withMemory.routes.filter((r) => r.node === 'n2').map((r) => r.via)).toEqual([
      '198.18.0.12',
      'fd00:ff::12',
    ]);
    const fresh = desiredRoutes(lapsed, 'n1');
    expect(fresh.held.map((h) => [h.dst, h.reason])).toEqual([
      ['198.19.0.64/26', 'underlay unknown'],
      ['fd00:b::1c0/122', 'underlay unknown'],
    ]);
  });

  it('canonicalizes CIDRs (host bits, IPv6 text forms)', () => {
    expect(canonicalCidr('198.19.0.70/26')).toBe('198.19.0.64/26');
    expect(canonicalCidr('FD00:B:0::1C0/122')).toBe('fd00:b::1c0/122');
    expect(canonicalCidr('nonsense')).toBeUndefined();
  });
});

describe('reconcileRoutes', () => {
  it('adds, replaces, removes and deduplicates only proto-190 routes; conflicts and errors are reported', async () => {
    const t = new FakeRouteTable();
    // The operator's routes: one unrelated, one on a block berthd wants (conflict).
    await t.addRoute({ dst: '10.0.0.0/8', gateway: '198.18.0.1' });
    await t.addRoute({ dst: 'fd00:b::200/122', gateway: 'fd00:ff::99' });
    // berthd's from before: one right, one with an old next hop, one stale, one duplicate of a wanted dst.
    await t.addRoute({ dst: '198.19.0.64/26', gateway: '198.18.0.12', protocol: 190 });
    await t.addRoute({ dst: '198.19.0.64/26', gateway: '198.18.0.99', protocol: 190, priority: 5 });
    await t.addRoute({ dst: '198.19.0.128/26', gateway: '198.18.0.13', protocol: 190 });
    await t.addRoute({ dst: '198.19.1.0/26', gateway: '198.18.0.14', protocol: 190 });
    t.failOn.set('fd00:b::1c0/122', 'ENETUNREACH');

    const out = await reconcileRoutes({ table: t, desired: desiredRoutes(view, 'n1') });
    expect(out).toMatchObject({
      added: [],
      replaced: ['198.19.0.128/26'],
      removed: ['198.19.0.64/26', '198.19.1.0/26'],
      unchanged: 1,
      conflicts: ['fd00:b::200/122'],
    });
    expect(out.errors).toEqual([
      { dst: 'fd00:b::1c0/122', op: 'add', message: expect.stringContaining('ENETUNREACH') },
    ]);
    const ours = (await t.listRoutes({ protocol: 190 })).map((r) => `${r.dst} ${r.gateway}`).sort();
    expect(ours).toEqual(['198.19.0.128/26 fd00:ff::13', '198.19.0.64/26 198.18.0.12']);
    // The operator's routes are exactly as they were.
    expect((await t.listRoutes({ protocol: 3 })).map((r) => `${r.dst} ${r.gateway}`).sort()).toEqual([
      '10.0.0.0/8 198.18.0.1',
      'fd00:b::200/122 fd00:ff::99',
    ]);

    // The next run fixes what failed and changes nothing else.
    t.failOn.clear();
    const again = await reconcileRoutes({ table: t, desired: desiredRoutes(view, 'n1') });
    expect(again).toMatchObject({
      added: ['fd00:b::1c0/122'],
      replaced: [],
      removed: [],
      unchanged: 2,
      errors: [],
    });
  });

  it('leaves the kernel route of a held block alone, and removes everything once nothing is owned', async () => {
    const t = new FakeRouteTable();
    await t.addRoute({ dst: '198.19.0.64/26', gateway: '198.18.0.12', protocol: 190 });
    const lapsed = { blocks: view.blocks, alive: [] };
    expect(await reconcileRoutes({ table: t, desired: desiredRoutes(lapsed, 'n1') })).toMatchObject({
      removed: [],
      added: [],
    });
    expect(t.routes).toHaveLength(1);
    const none = await reconcileRoutes({ table: t, desired: desiredRoutes({ blocks: [], alive: [] }, 'n1') });
    expect(none.removed).toEqual(['198.19.0.64/26']);
    expect(t.routes).toEqual([]);
  });

  it("a held block's route via another node (the block moved in one go) goes; via the owner's old address it stays", async () => {
    const t = new FakeRouteTable();
    // Routes to n2's blocks, as installed while n2 owned them.
    await t.addRoute({ dst: '198.19.0.64/26', gateway: '198.18.0.12', protocol: 190 });
    await t.addRoute({ dst: 'fd00:b::1c0/122', gateway: 'fd00:ff::12', protocol: 190 });
    // n2 released both; n3 (underlay never seen) took the IPv4 one, n4 (IPv4 only) the IPv6 one: both held.
    const moved: ClusterView = {
      blocks: [
        { network: 'pods', cidr: '198.19.0.64/26', node: 'n3' },
        { network: 'pods', cidr: 'fd00:b::1c0/122', node: 'n4' },
      ],
      alive: [
        { node: 'n2', underlay: ['198.18.0.12', 'fd00:ff::12'] },
        { node: 'n4', underlay: ['198.18.0.14'] },
      ],
    };
    const d = desiredRoutes(moved, 'n1');
    expect(d.held.map((h) => [h.dst, h.node])).toEqual([
      ['198.19.0.64/26', 'n3'],
      ['fd00:b::1c0/122', 'n4'],
    ]);
    const out = await reconcileRoutes({ table: t, desired: d });
    expect(out.removed.sort()).toEqual(['198.19.0.64/26', 'fd00:b::1c0/122']);
    expect(t.routes).toEqual([]);
    // After a restart nothing is known of n3's address: its route via an address no node publishes stays.
    await t.addRoute({ dst: '198.19.0.64/26', gateway: '198.18.0.13', protocol: 190 });
    expect((await reconcileRoutes({ table: t, desired: desiredRoutes(moved, 'n1') })).removed).toEqual([]);
    expect(t.routes.map((r) => r.dst)).toEqual(['198.19.0.64/26']);
  });

  it('compareRoutes says, per destination, whether the kernel agrees', () => {
    const d = desiredRoutes(view, 'n1');
    const present = [
      { dst: '198.19.0.64/26', gateway: '198.18.0.12' },
      { dst: '198.19.0.128/26', gateway: '198.18.0.13' },
      { dst: 'fd00:b::200/122', gateway: 'fd00:ff::13' },
      { dst: 'fd00:b::200/122', gateway: 'fd00:ff::13' },
      { dst: '198.19.9.0/26', gateway: '198.18.0.19' },
    ].map((r) => ({
      family: 4 as const,
      oif: undefined,
      priority: undefined,
      table: 254,
      scope: 0,
      protocol: 190,
      type: 1,
      prefsrc: undefined,
      ...r,
    }));
    expect(compareRoutes(d, present).map((e) => `${e.dst} ${e.state}`)).toEqual([
      '198.19.0.128/26 wrong-via',
      '198.19.0.64/26 ok',
      '198.19.9.0/26 stale',
      'fd00:b::1c0/122 missing',
      'fd00:b::200/122 duplicate',
    ]);
  });
});

describe('BlockMap', () => {
  it('parses block and alive keys under the prefix, and nothing else', () => {
    expect(parseClusterKey(P, '/berth/v1/nets/pods/blocks/198.19.0.64-26')).toEqual({
      kind: 'block',
      network: 'pods',
      cidr: '198.19.0.64/26',
    });
    expect(parseClusterKey(P, '/berth/v1/nets/pods/blocks/fd00::1c0-122')).toMatchObject({
      cidr: 'fd00::1c0/122',
    });
    expect(parseClusterKey(`${P}/`, '/berth/v1/nodes/n1/alive')).toEqual({ kind: 'alive', node: 'n1' });
    expect(parseClusterKey(P, '/berth/v1/nets/pods/config')).toEqual({ kind: 'config', network: 'pods' });
    for (const k of [
      '/berth/v1/nodes/n1/identity',
      '/other/v1/nodes/n1/alive',
      '/berth/v1/nets/pods/blocks/x',
    ])
      expect(parseClusterKey(P, k)).toBeUndefined();
    expect(underlayOf('{"uid":"u","underlay":"198.18.0.11","underlay6":"fd00:ff::11"}')).toEqual([
      '198.18.0.11',
      'fd00:ff::11',
    ]);
    expect(underlayOf('not json')).toEqual([]);
  });

  it('is undefined until loaded, then follows puts and deletes and tells its listeners', () => {
    const m = new BlockMap(P);
    let heard = 0;
    m.onChange(() => heard++);
    m.apply([{ type: 'put', key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12"}' }]);
    expect(m.view()).toBeUndefined();
    m.reset([
      { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '{"node":"n2"}' },
      { key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12"}' },
      {
        key: `${P}/nets/pods/config`,
        value: '{"pools":[["198.19.0.0-198.19.0.255","x-y"],["fd00:b::-fd00:b::ff"]]}',
      },
    ]);
    expect(heard).toBe(1);
    expect(m.view()).toEqual({
      blocks: [{ network: 'pods', cidr: '198.19.0.64/26', node: 'n2' }],
      alive: [{ node: 'n2', underlay: ['198.18.0.12'] }],
      pools: new Map([
        [
          'pods',
          [
            { family: 4, start: 0xc6130000n, end: 0xc61300ffn },
            {
              family: 6,
              start: 0xfd00000b000000000000000000000000n,
              end: 0xfd00000b0000000000000000000000ffn,
            },
          ],
        ],
      ]),
    });
    m.apply([
      { type: 'delete', key: `${P}/nets/pods/blocks/198.19.0.64-26` },
      { type: 'put', key: `${P}/nets/pods/blocks/198.19.0.128-26`, value: '{"node":"n3"}' },
      { type: 'delete', key: `${P}/nodes/n2/alive` },
    ]);
    expect(heard).toBe(2);
    expect(m.view()).toMatchObject({
      blocks: [{ network: 'pods', cidr: '198.19.0.128/26', node: 'n3' }],
      alive: [],
    });
    m.apply([{ type: 'put', key: `${P}/nets/pods/usage/n1`, value: '{}' }]);
    expect(heard).toBe(2);
  });
});

describe('RouteProgrammer', () => {
  it('does nothing before the map is loaded, then follows it; counts changes; forgets a node with its blocks', async () => {
    const t = new FakeRouteTable();
    await t.addRoute({ dst: '198.19.0.64/26', gateway: '198.18.0.12', protocol: 190 });
    const m = new BlockMap(P);
    const p = new RouteProgrammer({ source: m, self: 'n1', openTable: () => t, resyncMs: 0, log: () => {} });
    p.start();
    await p.reconcileNow();
    expect(t.calls.filter((c) => !c.startsWith('add 198.19.0.64/26'))).toEqual([]);
    expect((await p.report()).loaded).toBe(false);

    m.reset([
      poolsConfig(P),
      { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '{"node":"n2"}' },
      { key: `${P}/nets/pods/blocks/198.19.0.128-26`, value: '{"node":"n3"}' },
      { key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12"}' },
      { key: `${P}/nodes/n3/alive`, value: '{"underlay":"198.18.0.13"}' },
    ]);
    await p.reconcileNow();
    expect((await t.listRoutes({ protocol: 190 })).map((r) => r.dst).sort()).toEqual([
      '198.19.0.128/26',
      '198.19.0.64/26',
    ]);

    // n3's lease lapses: its route stays (last underlay). Then n3 is forgotten: its block goes, and the route.
    m.apply([{ type: 'delete', key: `${P}/nodes/n3/alive` }]);
    await p.reconcileNow();
    expect((await t.listRoutes({ protocol: 190 })).map((r) => r.dst)).toContain('198.19.0.128/26');
    m.apply([{ type: 'delete', key: `${P}/nets/pods/blocks/198.19.0.128-26` }]);
    await p.reconcileNow();
    expect((await t.listRoutes({ protocol: 190 })).map((r) => r.dst)).toEqual(['198.19.0.64/26']);

    const report = await p.report();
    expect(report.entries.map((e) => `${e.dst} ${e.state} ${e.via}`)).toEqual([
      '198.19.0.64/26 ok 198.18.0.12',
    ]);
    const samples = p.samples();
    const value = (name: string, labels: Record<string, string> = {}) =>
      samples.find((s) => s.name === name && JSON.stringify(s.labels) === JSON.stringify(labels))?.value;
    expect(value('berthd_cluster_routes', { family: 'ipv4' })).toBe(1);
    expect(value('berthd_cluster_route_changes_total', { op: 'added' })).toBe(1);
    expect(value('berthd_cluster_route_changes_total', { op: 'removed' })).toBe(1);
    expect(value('berthd_cluster_route_reconcile_errors_total')).toBe(0);
    await p.stop();
    expect(t.routes).toHaveLength(1);
  });

  it('coalesces bursts of changes into few reconciles and counts failures', async () => {
    const t = new FakeRouteTable();
    const m = new BlockMap(P);
    m.reset([poolsConfig(P), { key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12"}' }]);
    const p = new RouteProgrammer({ source: m, self: 'n1', openTable: () => t, resyncMs: 0, log: () => {} });
    p.start();
    t.failOn.set('198.19.0.192/26', 'ENETUNREACH');
    for (let i = 0; i < 4; i++)
      m.apply([{ type: 'put', key: `${P}/nets/pods/blocks/198.19.0.${i * 64}-26`, value: '{"node":"n2"}' }]);
    await p.reconcileNow();
    const reconciles = p.samples().find((s) => s.name === 'berthd_cluster_route_reconciles_total')!.value;
    expect(reconciles).toBeLessThanOrEqual(3);
    expect(t.routes.map((r) => r.dst).sort()).toEqual(['198.19.0.0/26', '198.19.0.128/26', '198.19.0.64/26']);
    expect(
      p.samples().find((s) => s.name === 'berthd_cluster_route_reconcile_errors_total')!.value,
    ).toBeGreaterThan(0);
    expect(t.closed).toBeGreaterThan(0);
    await p.stop();
  });
});

describe('RouteProgrammer, a reconcile that fails as a whole', () => {
  it('no netlink socket (EMFILE): counted and logged, berthd goes on, the next reconcile works', async () => {
    const t = new FakeRouteTable();
    const m = new BlockMap(P);
    m.reset([
      poolsConfig(P),
      { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '{"node":"n2"}' },
      { key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12"}' },
    ]);
    let sockets = 0;
    const lines: string[] = [];
    const p = new RouteProgrammer({
      source: m,
      self: 'n1',
      openTable: () => {
        if (sockets++ === 0)
          throw Object.assign(new Error('socket: too many open files'), { code: 'EMFILE' });
        return t;
      },
      resyncMs: 0,
      log: (l) => void lines.push(l),
    });
    const unhandled = vi.fn();
    process.on('unhandledRejection', unhandled);
    try {
      p.start();
      await p.reconcileNow();
      await new Promise((r) => setImmediate(r));
      expect(unhandled).not.toHaveBeenCalled();
      expect(lines).toContain('routes: reconcile failed: socket: too many open files');
      expect(p.samples().find((s) => s.name === 'berthd_cluster_route_reconcile_errors_total')!.value).toBe(
        1,
      );
      await p.reconcileNow();
      expect(t.routes.map((r) => r.dst)).toEqual(['198.19.0.64/26']);
    } finally {
      process.off('unhandledRejection', unhandled);
      await p.stop();
    }
  });
});

describe('followBlockMap', () => {
  it('loads with one range, follows watch events, reloads on compaction', async () => {
    const { followBlockMap } = await import('../../src/cluster/block-map-feed');
    let store = [poolsConfig(P), { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '{"node":"n2"}' }];
    let handlers: any;
    let watchedFrom = '';
    const etcd = {
      range: (key: string) =>
        Promise.resolve({ kvs: store.filter((kv) => kv.key.startsWith(key)), revision: '41' }),
      watch: (_prefix: string, from: string, h: any) => {
        watchedFrom = from;
        handlers = h;
        return { close: () => undefined };
      },
    };
    const map = new BlockMap(P);
    const logs: string[] = [];
    await followBlockMap({ etcd, map, prefix: P, log: (l) => logs.push(l) });
    expect(watchedFrom).toBe('42');
    expect(map.view()?.blocks).toEqual([{ network: 'pods', cidr: '198.19.0.64/26', node: 'n2' }]);
    handlers.onEvents(
      [
        { type: 'PUT', kv: { key: `${P}/nodes/n2/alive`, value: '{"underlay":"198.18.0.12"}' } },
        { type: 'DELETE', kv: { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '' } },
      ],
      '43',
    );
    expect(map.view()).toMatchObject({ blocks: [], alive: [{ node: 'n2', underlay: ['198.18.0.12'] }] });
    store = [poolsConfig(P), { key: `${P}/nets/pods/blocks/198.19.0.128-26`, value: '{"node":"n3"}' }];
    // The revision the reload reflects: the gateway resumes the watch after it (the next write included).
    expect(await handlers.onReset()).toBe('41');
    expect(map.view()).toMatchObject({
      blocks: [{ network: 'pods', cidr: '198.19.0.128/26', node: 'n3' }],
      alive: [],
    });
    expect(logs.join('\n')).toContain('compacted');
  });

  it('after a compaction reload, the first write past the reload is not lost (real gateway, fake etcd)', async () => {
    const { followBlockMap } = await import('../../src/cluster/block-map-feed');
    const { EtcdGateway } = await import('../../src/cluster/etcd-gateway');
    const { FakeEtcd } = await import('./fake-etcd');
    const fake = new FakeEtcd();
    const gw = new EtcdGateway({ endpoints: [await fake.addMember()], timeoutMs: 300 });
    try {
      const A = `${P}/nets/pods/blocks/198.19.0.64-26`;
      const B = `${P}/nets/pods/blocks/198.19.0.128-26`;
      await gw.put(A, '{"node":"n2"}');
      let resetting = false;
      const etcd = {
        range: async (k: string, o: { prefix: boolean }) => {
          const r = await gw.range(k, o);
          // n2 releases A right after the reload's range: the write at the range's revision + 1.
          if (resetting) {
            resetting = false;
            await gw.deleteRange(A);
          }
          return r;
        },
        watch: gw.watch.bind(gw),
      };
      const map = new BlockMap(P);
      const logs: string[] = [];
      const w = await followBlockMap({ etcd, map, prefix: P, log: (l) => logs.push(l) });
      // The watch away while the history it needs is compacted: it resets, reloading the map.
      fake.setMode(0, 'refuse');
      fake.putDirect(`${P}/other`, '1');
      fake.compact();
      resetting = true;
      fake.setMode(0, 'up');
      await vi.waitFor(() => expect(logs.join('\n')).toContain('compacted'), { timeout: 4000 });
      await gw.put(B, '{"node":"n3"}');
      await vi.waitFor(() => expect((map.view()?.blocks ?? []).some((b) => b.node === 'n3')).toBe(true), {
        timeout: 4000,
      });
      // One stream in the gateway's books: the one before the reset is gone from them.
      expect((gw as unknown as { watchStreams: Set<unknown> }).watchStreams.size).toBe(1);
      w.close();
      expect(map.view()!.blocks.map((b) => b.cidr)).toEqual(['198.19.0.128/26']);
    } finally {
      gw.close();
      await fake.close();
    }
  });
});

describe('block keys that are no block of their network', () => {
  it('are never routed: outside the pools, larger than any block, not a network address, a network without config', () => {
    // 198.19.0.1–198.19.255.254 (a subnet's default range).
    const pools = new Map([['pods', [{ family: 4 as const, start: 0xc6130001n, end: 0xc613fffen }]]]);
    const alive = [{ node: 'evil', underlay: ['198.18.0.2'] }];
    const blocks = [
      '0.0.0.0/0',
      '198.18.5.5/32',
      '198.18.128.0/17',
      '198.19.1.5/26',
      '198.19.1.0/26',
      '198.19.0.0/26',
      '198.19.255.192/26',
      '198.19.4.16/28',
      '198.19.2.0/26@other',
    ].map((c) => {
      const [cidr, network] = c.split('@');
      return { network: network ?? 'pods', cidr: cidr!, node: 'evil' };
    });
    const d = desiredRoutes({ blocks, alive, pools }, 'n1');
    // The pool's first and last blocks start and end beyond its range; a /28 is a block of a /28 subnet.
    expect(d.routes.map((r) => r.dst)).toEqual([
      '198.19.0.0/26',
      '198.19.1.0/26',
      '198.19.255.192/26',
      '198.19.4.16/28',
    ]);
    expect(d.refused.map((r) => `${r.dst} ${r.reason}`)).toEqual([
      '0.0.0.0/0 a /0 is larger than any block (/16)',
      '198.18.5.5/32 outside the pools of network pods',
      '198.18.128.0/17 outside the pools of network pods',
      '198.19.1.0/26 not a network address',
      '198.19.2.0/26 outside the pools of network other',
    ]);
  });

  it('a forged block key in etcd gets no route, and a route berthd made for one before goes', async () => {
    const t = new FakeRouteTable();
    await t.addRoute({ dst: '198.18.128.0/17', gateway: '198.18.0.2', protocol: 190 });
    const m = new BlockMap(P);
    m.reset([
      poolsConfig(P),
      { key: `${P}/nodes/evil/alive`, value: '{"underlay":"198.18.0.2"}' },
      { key: `${P}/nets/pods/blocks/198.19.0.64-26`, value: '{"node":"evil"}' },
      { key: `${P}/nets/pods/blocks/198.18.128.0-17`, value: '{"node":"evil"}' },
      { key: `${P}/nets/zzz/blocks/198.19.1.0-26`, value: '{"node":"evil"}' },
    ]);
    const lines: string[] = [];
    const p = new RouteProgrammer({
      source: m,
      self: 'n1',
      openTable: () => t,
      resyncMs: 0,
      log: (l) => lines.push(l),
    });
    p.start();
    await p.reconcileNow();
    expect(t.routes.map((r) => r.dst)).toEqual(['198.19.0.64/26']);
    expect(lines.join('\n')).toMatch(
      /block 198\.18\.128\.0\/17 of node evil \(network pods\) not routed: outside the pools/,
    );
    expect(lines.join('\n')).toMatch(/block 198\.19\.1\.0\/26 of node evil \(network zzz\) not routed/);
    await p.stop();
  });
});
