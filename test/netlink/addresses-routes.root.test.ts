// Addresses (v4/v6, NODAD, tentative, DAD failure) and routes (gateway, metric, table, scope, device), through
// our socket in the host and in a pod namespace, checked with `ip -j addr/route` as the observer.
import { describe, expect, it } from 'vitest';
import { openNetlink } from '../../src/netlink/rtnetlink';
import type { Netlink } from '../../src/netlink/types';
import type { KernelFixture } from './kernel-fixture';
import { HOST, observe, observeJson, rejection, sh, useKernelFixture, type Place } from './kernel-fixture';

const kernel = useKernelFixture();
let fx: KernelFixture;

interface Setup {
  place: Place;
  nl: Netlink;
  /** A veth end in `place`, up, with its peer up in a scratch namespace. */
  link: string;
  index: number;
}

/** Subnets (from 198.18.0.0/20 and fd00:b3::/48) per place, so host and pod never share one. */
const NET = {
  host: { v4: '198.18.1', v6: 'fd00:b3:0:1' },
  pod: { v4: '198.18.2', v6: 'fd00:b3:0:2' },
} as const;

async function setup(label: 'host' | 'pod'): Promise<Setup> {
  fx = kernel.fresh();
  const pod = fx.addNetns('p');
  const scratch = fx.addNetns('s');
  const place = label === 'host' ? HOST : pod;
  const nl = openNetlink(place.path);
  kernel.track(nl);
  const link = fx.name('v');
  if (label === 'host') fx.hostLink(link);
  const created = await nl.createVethPair({ name: link, peerName: 'eth0', peerNetns: scratch.path! });
  await nl.setUp(link);
  const peer = openNetlink(scratch.path);
  kernel.track(peer);
  await peer.setUp('eth0');
  return { place, nl, link, index: created.index };
}

function addrs(place: Place, link: string): any[] {
  return observeJson<any[]>(place, 'ip', ['addr', 'show', 'dev', link])[0]?.addr_info ?? [];
}

describe.each(['host', 'pod'] as const)('addresses in the %s namespace', (label) => {
  const net = NET[label];

  it('adds, lists and deletes IPv4 (with broadcast) and IPv6 with NODAD', async () => {
    const { place, nl, link, index } = await setup(label);
    await nl.addAddress({ link, address: `${net.v4}.2`, prefixLength: 24 });
    await nl.addAddress({ link: index, address: `${net.v6}::2`, prefixLength: 64, nodad: true });

    const seen = addrs(place, link);
    const v4 = seen.find((a) => a.family === 'inet');
    const v6 = seen.find((a) => a.family === 'inet6' && a.scope === 'global');
    expect(v4).toMatchObject({ local: `${net.v4}.2`, prefixlen: 24, broadcast: `${net.v4}.255` });
    expect(v6).toMatchObject({ local: `${net.v6}::2`, prefixlen: 64, nodad: true });
    expect(v6.tentative).toBeUndefined();

    const ours = await nl.listAddresses({ link });
    expect(ours.find((a) => a.family === 4)).toMatchObject({
      address: `${net.v4}.2`,
      prefixLength: 24,
      index,
      scope: 0,
      tentative: false,
    });
    expect(ours.find((a) => a.address === `${net.v6}::2`)).toMatchObject({
      family: 6,
      prefixLength: 64,
      nodad: true,
      tentative: false,
      dadFailed: false,
    });
    expect((await nl.listAddresses({ link, family: 4 })).map((a) => a.address)).toEqual([`${net.v4}.2`]);

    const dup = await rejection(nl.addAddress({ link, address: `${net.v4}.2`, prefixLength: 24 }));
    expect(dup).toMatchObject({ code: 'EEXIST', op: 'RTM_NEWADDR' });
    expect(dup.message).toContain(`${net.v4}.2/24`);

    await nl.delAddress({ link, address: `${net.v4}.2`, prefixLength: 24 });
    await nl.delAddress({ link, address: `${net.v6}::2`, prefixLength: 64 });
    expect(addrs(place, link).filter((a) => a.scope === 'global')).toEqual([]);
    expect((await rejection(nl.delAddress({ link, address: `${net.v4}.2`, prefixLength: 24 }))).code).toBe(
      'EADDRNOTAVAIL',
    );
  });

  it('reports an IPv6 address as tentative while DAD runs', async () => {
    const { place, nl, link } = await setup(label);
    await nl.addAddress({ link, address: `${net.v6}::3`, prefixLength: 64 });
    const ours = (await nl.listAddresses({ link })).find((a) => a.address === `${net.v6}::3`);
    const seen = addrs(place, link).find((a) => a.local === `${net.v6}::3`);
    // DAD takes a full retransmit interval (1 s by default), so both views still see it tentative.
    expect(seen.tentative).toBe(true);
    expect(ours).toMatchObject({ tentative: true, dadFailed: false, nodad: false });
  });

  it('reports DAD failure when another host on the link owns the address', async () => {
    const { place, nl, link } = await setup(label);
    const scratch = fx.prefix + '-s';
    // Make DAD quick on both ends (these namespaces are ours and die with the test; in the host only our veth is touched).
    observe(place, 'sysctl', ['-qw', `net.ipv6.neigh.${link}.retrans_time_ms=100`]);
    sh('ip', ['netns', 'exec', scratch, 'sysctl', '-qw', 'net.ipv6.neigh.eth0.retrans_time_ms=100']);
    sh('ip', ['-n', scratch, 'addr', 'add', `${net.v6}::7/64`, 'dev', 'eth0', 'nodad']);
    await nl.addAddress({ link, address: `${net.v6}::7`, prefixLength: 64 });
    let mine = (await nl.listAddresses({ link })).find((a) => a.address === `${net.v6}::7`);
    for (let i = 0; i < 100 && mine !== undefined && !mine.dadFailed; i++) {
      await new Promise((r) => setTimeout(r, 20));
      mine = (await nl.listAddresses({ link })).find((a) => a.address === `${net.v6}::7`);
    }
    expect(mine).toMatchObject({ dadFailed: true, tentative: true });
    expect(addrs(place, link).find((a) => a.local === `${net.v6}::7`)).toMatchObject({ dadfailed: true });
  });
});

describe.each(['host', 'pod'] as const)('routes in the %s namespace', (label) => {
  const net = NET[label];
  const table = 4200 + (label === 'host' ? 1 : 2);

  it('adds routes with gateway, metric, device scope and table; lists and deletes them', async () => {
    const { place, nl, link, index } = await setup(label);
    await nl.addAddress({ link, address: `${net.v4}.2`, prefixLength: 24 });
    await nl.addAddress({ link, address: `${net.v6}::2`, prefixLength: 64, nodad: true });

    await nl.addRoute({ dst: '198.18.8.0/24', gateway: `${net.v4}.1`, priority: 50 });
    await nl.addRoute({ dst: '198.18.9.0/24', link });
    await nl.addRoute({ dst: '0.0.0.0/0', gateway: `${net.v4}.1`, table });
    await nl.addRoute({ dst: 'fd00:b3:8::/64', gateway: `${net.v6}::1`, link, priority: 77 });
    await nl.addRoute({ dst: '198.18.10.0/24', link, scope: 'host', table });

    const main4 = observeJson<any[]>(place, 'ip', ['route', 'show', 'table', 'main']);
    expect(main4.find((r) => r.dst === '198.18.8.0/24')).toMatchObject({
      gateway: `${net.v4}.1`,
      dev: link,
      metric: 50,
    });
    expect(main4.find((r) => r.dst === '198.18.9.0/24')).toMatchObject({ dev: link, scope: 'link' });
    const tbl = observeJson<any[]>(place, 'ip', ['route', 'show', 'table', String(table)]);
    expect(tbl.find((r) => r.dst === 'default')).toMatchObject({ gateway: `${net.v4}.1`, dev: link });
    expect(tbl.find((r) => r.dst === '198.18.10.0/24')).toMatchObject({ dev: link, scope: 'host' });
    const main6 = observeJson<any[]>(place, 'ip', ['-6', 'route', 'show', 'table', 'main']);
    expect(main6.find((r) => r.dst === 'fd00:b3:8::/64')).toMatchObject({
      gateway: `${net.v6}::1`,
      dev: link,
      metric: 77,
    });

    const ours = await nl.listRoutes({ link });
    expect(ours.find((r) => r.dst === '198.18.8.0/24')).toMatchObject({
      family: 4,
      gateway: `${net.v4}.1`,
      oif: index,
      priority: 50,
      table: 254,
      scope: 0,
      protocol: 3,
    });
    expect(ours.find((r) => r.dst === '198.18.9.0/24')).toMatchObject({ scope: 253, gateway: undefined });
    expect(ours.find((r) => r.dst === 'fd00:b3:8::/64')).toMatchObject({
      family: 6,
      gateway: `${net.v6}::1`,
      priority: 77,
    });
    const inTable = await nl.listRoutes({ table });
    expect(inTable.map((r) => r.dst).sort()).toEqual(['0.0.0.0/0', '198.18.10.0/24']);
    expect(inTable.find((r) => r.dst === '198.18.10.0/24')?.scope).toBe(254);
    expect(await nl.listRoutes({ family: 6, table })).toEqual([]);

    const dup = await rejection(nl.addRoute({ dst: '198.18.8.0/24', gateway: `${net.v4}.1`, priority: 50 }));
    expect(dup).toMatchObject({ code: 'EEXIST', op: 'RTM_NEWROUTE' });
    expect(dup.message).toContain('198.18.8.0/24 via');

    await nl.delRoute({ dst: '198.18.8.0/24', gateway: `${net.v4}.1`, priority: 50 });
    await nl.delRoute({ dst: '0.0.0.0/0', table });
    await nl.delRoute({ dst: 'fd00:b3:8::/64', gateway: `${net.v6}::1`, link });
    expect(
      observeJson<any[]>(place, 'ip', ['route', 'show', 'table', 'main']).find(
        (r) => r.dst === '198.18.8.0/24',
      ),
    ).toBeUndefined();
    expect(
      observeJson<any[]>(place, 'ip', ['route', 'show', 'table', String(table)]).map((r) => r.dst),
    ).toEqual(['198.18.10.0/24']);
    expect(
      observeJson<any[]>(place, 'ip', ['-6', 'route', 'show', 'table', 'main']).find(
        (r) => r.dst === 'fd00:b3:8::/64',
      ),
    ).toBeUndefined();
    expect((await rejection(nl.delRoute({ dst: '198.18.8.0/24', gateway: `${net.v4}.1` }))).code).toBe(
      'ESRCH',
    );
    // A gateway that is not on any link is refused by the kernel.
    expect((await rejection(nl.addRoute({ dst: '198.18.11.0/24', gateway: '198.18.15.1' }))).code).toBe(
      'ENETUNREACH',
    );
  });
});

describe('routes in a pod namespace only', () => {
  it('sets the pod default route in the main table (lo up, address, default via the gateway)', async () => {
    const net = NET.pod;
    const { place, nl, link } = await setup('pod');
    await nl.setUp('lo');
    await nl.addAddress({ link, address: `${net.v4}.2`, prefixLength: 24 });
    await nl.addRoute({ dst: '0.0.0.0/0', gateway: `${net.v4}.1` });
    expect(observeJson<any[]>(place, 'ip', ['link', 'show', 'dev', 'lo'])[0].flags).toContain('UP');
    expect(observeJson<any[]>(place, 'ip', ['route', 'show', 'default'])).toMatchObject([
      { dst: 'default', gateway: `${net.v4}.1`, dev: link },
    ]);
  });
});

describe('route ownership by protocol, replace, and next hops of the other family', () => {
  it('adds with a protocol, lists by it, deletes only a matching one, replaces in place', async () => {
    const net = NET.pod;
    const { place, nl, link } = await setup('pod');
    await nl.addAddress({ link, address: `${net.v4}.2`, prefixLength: 24 });
    await nl.addAddress({ link, address: `${net.v6}::2`, prefixLength: 64, nodad: true });
    // An operator's route and berthd's (protocol 190) side by side.
    await nl.addRoute({ dst: '198.18.20.0/26', gateway: `${net.v4}.1` });
    await nl.addRoute({ dst: '198.18.20.64/26', gateway: `${net.v4}.3`, protocol: 190 });
    // An IPv4 block via an IPv6 neighbour (RTA_VIA, RFC 5549; the kernel has no IPv6-via-IPv4 route).
    await nl.addRoute({ dst: '198.18.22.0/26', gateway: `${net.v6}::3`, protocol: 190 });

    const seen = observeJson<any[]>(place, 'ip', ['route', 'show', 'proto', '190']);
    expect(seen).toEqual([
      expect.objectContaining({ dst: '198.18.20.64/26', gateway: `${net.v4}.3` }),
      expect.objectContaining({ dst: '198.18.22.0/26', via: { family: 'inet6', host: `${net.v6}::3` } }),
    ]);

    const ours = await nl.listRoutes({ protocol: 190 });
    expect(ours.map((r) => [r.dst, r.gateway, r.protocol]).sort()).toEqual([
      ['198.18.20.64/26', `${net.v4}.3`, 190],
      ['198.18.22.0/26', `${net.v6}::3`, 190],
    ]);

    // A delete naming protocol 190 does not match the operator's route of the same destination.
    await nl.addRoute({ dst: '198.18.21.0/26', gateway: `${net.v4}.1` });
    expect((await rejection(nl.delRoute({ dst: '198.18.21.0/26', protocol: 190 }))).code).toBe('ESRCH');
    expect(observeJson<any[]>(place, 'ip', ['route', 'show', '198.18.21.0/26'])).toHaveLength(1);

    await nl.replaceRoute({ dst: '198.18.20.64/26', gateway: `${net.v4}.4`, protocol: 190 });
    expect(observeJson<any[]>(place, 'ip', ['route', 'show', '198.18.20.64/26'])).toEqual([
      expect.objectContaining({ gateway: `${net.v4}.4`, protocol: '190' }),
    ]);
    await nl.delRoute({ dst: '198.18.20.64/26', protocol: 190 });
    await nl.delRoute({ dst: '198.18.22.0/26', protocol: 190 });
    expect(await nl.listRoutes({ protocol: 190 })).toEqual([]);
    expect(observeJson<any[]>(place, 'ip', ['route', 'show', '198.18.20.0/26'])).toHaveLength(1);
  });
});
