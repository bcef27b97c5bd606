// Host-routed addressing (cluster networks): IPAM hands out /32 and /128 with the pool's gateway and a
// route to the pool via it. berth-bridge gives the pod an on-link route to the gateway, puts the gateway
// on the bridge with the pool's prefix, keeps traffic inside the pool un-NATed, and nothing of the pool
// looks on-link from the pod. Debian's `static` IPAM plugin plays berth-ipam's part, so this holds for any
// IPAM that answers the same way.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Fixture, ipJson, nsExec, sh, trySh } from './harness';

const fx = new Fixture('h');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

const POOL4 = '198.19.214.0/24';
const POOL6 = 'fd00:b15:214::/64';
const GW4 = '198.19.214.1';
const GW6 = 'fd00:b15:214::1';

function conf(bridge: string, n: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: '1.0.0',
    name: `${fx.prefix}net`,
    type: 'berth-bridge',
    bridge,
    isDefaultGateway: true,
    ipMasq: true,
    ipam: {
      type: 'static',
      addresses: [
        { address: `198.19.214.${n}/32`, gateway: GW4 },
        { address: `fd00:b15:214::${n}/128`, gateway: GW6 },
      ],
      routes: [
        { dst: POOL4, gw: GW4 },
        { dst: POOL6, gw: GW6 },
      ],
    },
    ...extra,
  };
}

async function add(c: Record<string, unknown>, id: string) {
  const ns = fx.netns();
  const r = await fx.run({ command: 'ADD', conf: c, containerId: id, netns: ns.path, ifname: 'eth0' });
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return { ns, result: r.json };
}

describe('host-routed addresses (cluster networks)', () => {
  it('pods get /32 and /128, an on-link route to the gateway first, and reach each other through it', async () => {
    const bridge = fx.bridge();
    const a = await add(conf(bridge, 5), 'ctr-a');
    const b = await add(conf(bridge, 6), 'ctr-b');

    expect(a.result.ips).toEqual([
      { address: '198.19.214.5/32', gateway: GW4, interface: 2 },
      { address: 'fd00:b15:214::5/128', gateway: GW6, interface: 2 },
    ]);
    expect(a.result.routes).toEqual([
      { dst: `${GW4}/32` },
      { dst: `${GW6}/128` },
      { dst: POOL4, gw: GW4 },
      { dst: POOL6, gw: GW6 },
      { dst: '0.0.0.0/0', gw: GW4 },
      { dst: '::/0', gw: GW6 },
    ]);

    // In the pod: host prefixes only, so no other pool address is on-link.
    const addrs = ipJson(['-n', a.ns.name, 'addr', 'show', 'dev', 'eth0'])[0].addr_info.filter(
      (x: any) => x.scope === 'global',
    );
    expect(addrs.map((x: any) => `${x.local}/${x.prefixlen}`).sort()).toEqual([
      '198.19.214.5/32',
      'fd00:b15:214::5/128',
    ]);
    expect(ipJson(['-n', a.ns.name, 'route', 'get', '198.19.214.77'])[0]).toMatchObject({ gateway: GW4 });
    expect(ipJson(['-n', a.ns.name, '-6', 'route', 'get', 'fd00:b15:214::77'])[0]).toMatchObject({
      gateway: GW6,
    });
    expect(ipJson(['-n', a.ns.name, 'route', 'show', `${GW4}/32`])[0]).toMatchObject({ scope: 'link' });

    // On the host: the gateway once, with the pool's prefix; the pool is a connected route on the bridge.
    const onBridge = ipJson(['addr', 'show', 'dev', bridge])[0].addr_info.filter(
      (x: any) => x.scope === 'global',
    );
    expect(onBridge.map((x: any) => `${x.local}/${x.prefixlen}`).sort()).toEqual([`${GW4}/24`, `${GW6}/64`]);
    expect(ipJson(['route', 'show', POOL4])[0]).toMatchObject({ dev: bridge, protocol: 'kernel' });
    expect(sh('sysctl', ['-n', `net.ipv4.conf.${bridge}.send_redirects`]).trim()).toBe('0');

    // Pod to pod on one node goes through the gateway (one hop: TTL 63 in the reply), both families.
    // IPv6: the first probe is answered (`-W 1.5`). The bridge the ADD made has no tentative link-local
    // address, without which the host sends no neighbour solicitation for what it forwards and the first
    // replies came after ~2 s.
    const ping6 = nsExec(a.ns.name, ['ping', '-6', '-c', '1', '-W', '1.5', 'fd00:b15:214::6']);
    expect(ping6).toMatch(/ttl=63/);
    // `-c 1 -w 10`: one reply wanted, probes every second for up to 10 s.
    const ping4 = nsExec(a.ns.name, ['ping', '-c', '1', '-w', '10', '198.19.214.6']);
    expect(ping4).toMatch(/ttl=63/);
    expect(b.result.ips[0].address).toBe('198.19.214.6/32');

    // Masquerade exempts the whole pool, not just the pod's own /32.
    const nft = fx.nftList('inet');
    expect(nft).toContain('198.19.214.5 . 198.19.214.0/24');
    expect(nft).toContain('fd00:b15:214::5 . fd00:b15:214::/64');

    // CHECK agrees with what ADD did (the on-link route included).
    const check = await fx.run({
      command: 'CHECK',
      conf: { ...conf(bridge, 5), prevResult: a.result },
      containerId: 'ctr-a',
      netns: a.ns.path,
      ifname: 'eth0',
    });
    expect(check.code, check.stdout + check.stderr).toBe(0);
  });

  it('refuses a host-routed address without the pool route (code 7); without isGateway it is no host-routed address, and the failure says so', async () => {
    const bridge = fx.bridge();
    const noPool = conf(bridge, 7);
    (noPool.ipam as any).routes = [];
    const ns = fx.netns();
    const r = await fx.run({
      command: 'ADD',
      conf: noPool,
      containerId: 'c7',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(r.code).not.toBe(0);
    expect(r.json).toMatchObject({ code: 7, msg: expect.stringContaining('no route via 198.19.214.1') });
    const noGw = conf(bridge, 8, { isDefaultGateway: false });
    const r2 = await fx.run({
      command: 'ADD',
      conf: noGw,
      containerId: 'c8',
      netns: fx.netns().path,
      ifname: 'eth0',
    });
    // As the reference: the /32 is added like any address and the gateway is not on the bridge, so the
    // IPAM's routes via it cannot be added (the gateway is on no link of the pod). The message says why
    // (the reference's has the kernel's error alone).
    expect(r2.code).not.toBe(0);
    expect(r2.json.code).toBe(999);
    expect(r2.json.msg).toMatch(/^failed to add route .* via 198\.19\.214\.1 on "eth0": .*UNREACH/);
    expect(r2.json.msg).toContain(
      `the pod's address 198.19.214.8/32 is a host prefix, so its gateway 198.19.214.1 is on no link of the pod: host-routed addresses (a cluster network's) need "isGateway"`,
    );
    // The failed ADD's rollback took the bridge it created; had the gateway been put on it, the ADD would
    // have passed.
    expect(trySh('ip', ['-j', 'addr', 'show', 'dev', bridge]) ?? '').not.toContain('198.19.214.1');
  });
});
