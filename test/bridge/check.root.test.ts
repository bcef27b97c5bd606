// CHECK notices drift in every piece of state it is responsible for (scope 5 of issue 4).
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { masqNames } from '../../src/bridge/masquerade';
import { spoofNames } from '../../src/bridge/spoofcheck';
import { Fixture, sh } from './harness';

const fx = new Fixture('h');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

interface Attached {
  ns: { name: string; path: string };
  c: Record<string, unknown>;
  result: any;
  hostVeth: string;
}

/** An ADD of `c` (by default a config with every option CHECK looks at) in a new namespace. */
async function attach(
  c: Record<string, unknown> = fx.conf({
    isDefaultGateway: true,
    ipMasq: true,
    macspoofchk: true,
    hairpinMode: true,
    portIsolation: true,
    mtu: 1400,
    ipam: fx.hostLocal([[{ subnet: '198.18.139.0/24' }]]),
  }),
): Promise<Attached> {
  const ns = fx.netns();
  const add = await fx.run({ command: 'ADD', conf: c, containerId: 'ctr1', netns: ns.path, ifname: 'eth0' });
  expect(add.code, add.stdout + add.stderr).toBe(0);
  return { ns, c, result: add.json, hostVeth: add.json.interfaces[1].name };
}

async function check(a: Attached) {
  return fx.run({
    command: 'CHECK',
    conf: { ...a.c, prevResult: a.result },
    containerId: 'ctr1',
    netns: a.ns.path,
    ifname: 'eth0',
  });
}

describe('CHECK', () => {
  it('passes right after ADD, with no output', async () => {
    const a = await attach();
    const r = await check(a);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toBe('');
  });

  it("a chained plugin's address on another interface needs no masquerade entry of berth's", async () => {
    const ns = fx.netns();
    const c = fx.conf({
      ipMasq: true,
      ipam: fx.hostLocal([[{ subnet: '198.18.139.0/24' }]]),
      prevResult: {
        cniVersion: '1.0.0',
        interfaces: [{ name: 'lo', sandbox: ns.path }],
        ips: [{ address: '198.18.9.9/32', interface: 0 }],
      },
    });
    const add = await fx.add(c, 'ctr1', ns.path);
    expect(add.code, add.stdout).toBe(0);
    expect(add.json.ips.map((i: any) => i.address)).toEqual(['198.18.9.9/32', '198.18.139.2/24']);
    const r = await check({ ns, c, result: add.json, hostVeth: add.json.interfaces[2].name });
    expect(r.code, r.stdout).toBe(0);
  });

  it('fails without prevResult', async () => {
    const a = await attach();
    const r = await fx.run({
      command: 'CHECK',
      conf: a.c,
      containerId: 'ctr1',
      netns: a.ns.path,
      ifname: 'eth0',
    });
    expect(r.code).not.toBe(0);
    expect(r.json.msg).toContain('prevResult');
  });

  it('tolerates a later plugin changing the MAC (recorded in prevResult) and adding routes', async () => {
    const a = await attach();
    sh('ip', ['-n', a.ns.name, 'link', 'set', 'eth0', 'address', '02:42:c6:12:85:77']);
    sh('ip', ['-n', a.ns.name, 'route', 'add', '198.18.240.0/24', 'via', '198.18.139.1']);
    a.result.interfaces[2].mac = '02:42:c6:12:85:77';
    // the spoof check follows the MAC the pod has now only through a new ADD; CHECK reports it
    const r = await check(a);
    expect(r.code).not.toBe(0);
    expect(r.json.msg).toMatch(
      /spoof-check entry for \S+ .* allows [0-9a-f:]{17}, not the container's 02:42:c6:12:85:77/,
    );
    const noSpoof = { ...a, c: { ...a.c, macspoofchk: false } };
    expect((await check(noSpoof)).code).toBe(0);
  });

  it("tolerates a later plugin changing the pod's MTU (tuning); not one the chain's result reports", async () => {
    const a = await attach();
    sh('ip', ['-n', a.ns.name, 'link', 'set', 'eth0', 'mtu', '1300']);
    const r = await check(a);
    expect(r.code, r.stdout).toBe(0);
    // A 1.1.0 result's interface carries its MTU (without IPAM: the fixture's host-local stops at 1.0.0).
    a.c = { ...a.c, cniVersion: '1.1.0', ipam: {}, ipMasq: false };
    a.result = { ...a.result, cniVersion: '1.1.0' };
    a.result.interfaces[2].mtu = 1400;
    const reported = await check(a);
    expect(reported.code).not.toBe(0);
    expect(reported.json.msg).toMatch(/MTU 1300 doesn't match 1400/);
  });

  it("a 1.1.0 route's table: 0 and 254 are the main one, another is looked for there", async () => {
    const a = await attach();
    // 1.1.0 without IPAM (the fixture's host-local stops at 1.0.0), as in the MTU test above.
    a.c = { ...a.c, cniVersion: '1.1.0', ipam: {}, ipMasq: false };
    const withTable = (table: number) => ({
      ...a.result,
      cniVersion: '1.1.0',
      routes: a.result.routes.map((r: Record<string, unknown>) => ({ ...r, table })),
    });
    for (const table of [0, 254]) {
      const r = await check({ ...a, result: withTable(table) });
      expect(r.code, `table ${table}: ${r.stdout}`).toBe(0);
    }
    const elsewhere = await check({ ...a, result: withTable(200) });
    expect(elsewhere.code).not.toBe(0);
    expect(elsewhere.json.msg).toMatch(/route 0\.0\.0\.0\/0/);
  });

  it.each<[string, (a: Attached) => void, RegExp]>([
    ['container interface removed', (a) => sh('ip', ['-n', a.ns.name, 'link', 'del', 'eth0']), /not found/],
    ['container interface down', (a) => sh('ip', ['-n', a.ns.name, 'link', 'set', 'eth0', 'down']), /down/],
    [
      'address removed',
      (a) => sh('ip', ['-n', a.ns.name, 'addr', 'flush', 'dev', 'eth0']),
      /198\.18\.139\.2\/24/,
    ],
    [
      'default route removed',
      (a) => sh('ip', ['-n', a.ns.name, 'route', 'del', 'default']),
      /route 0\.0\.0\.0\/0/,
    ],
    [
      // sbr moves the routes to a table of its own: the pod's main table has none (the reference fails too)
      'default route moved out of the main table',
      (a) => {
        sh('ip', ['-n', a.ns.name, 'route', 'del', 'default']);
        sh('ip', [
          '-n',
          a.ns.name,
          'route',
          'add',
          'default',
          'via',
          '198.18.139.1',
          'dev',
          'eth0',
          'table',
          '200',
        ]);
      },
      /route 0\.0\.0\.0\/0/,
    ],
    [
      'host veth MTU changed',
      (a) => sh('ip', ['link', 'set', a.hostVeth, 'mtu', '1300']),
      /MTU 1300 doesn't match configured 1400/,
    ],
    [
      'host veth detached from the bridge',
      (a) => sh('ip', ['link', 'set', a.hostVeth, 'nomaster']),
      /not attached|not a bridge port/,
    ],
    [
      'hairpin turned off',
      (a) => sh('bridge', ['link', 'set', 'dev', a.hostVeth, 'hairpin', 'off']),
      /hairpin/,
    ],
    [
      'isolation turned off',
      (a) => sh('bridge', ['link', 'set', 'dev', a.hostVeth, 'isolated', 'off']),
      /isolation/,
    ],
    [
      "the gateway address removed from the bridge (the pod's way out)",
      (a) => sh('ip', ['addr', 'del', '198.18.139.1/24', 'dev', a.c.bridge as string]),
      /Gateway 198\.18\.139\.1 is not on /,
    ],
    [
      'promiscuous mode switched on the bridge',
      (a) => sh('ip', ['link', 'set', a.c.bridge as string, 'promisc', 'on']),
      /Promisc/,
    ],
    [
      'masquerade entry removed',
      (a) =>
        sh('nft', [
          'delete',
          'element',
          'inet',
          fx.nftTable,
          masqNames(a.c.name as string).c4,
          '{ 198.18.139.2 }',
        ]),
      /masquerade entry/,
    ],
    [
      'spoof-check entry removed',
      (a) =>
        sh('nft', [
          'delete',
          'element',
          'bridge',
          fx.nftTable,
          spoofNames(a.c.name as string).allowed,
          `{ "${a.hostVeth}" . ${a.result.interfaces[2].mac} }`,
        ]),
      /spoof-check entry/,
    ],
  ])('fails when: %s', async (_what, breakIt, msg) => {
    const a = await attach();
    expect((await check(a)).code).toBe(0);
    breakIt(a);
    const r = await check(a);
    expect(r.code).not.toBe(0);
    expect(r.json.msg).toMatch(msg);
  });

  it('an IPAM gateway fe80::1 (link scope on the bridge) passes the gateway check', async () => {
    const a = await attach(
      fx.conf({ isGateway: true, ipam: fx.hostLocal([[{ subnet: 'fd00:b:139::/64', gateway: 'fe80::1' }]]) }),
    );
    const r = await check(a);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  });

  it('fails when the IPAM reservation is gone (IPAM CHECK is delegated)', async () => {
    const a = await attach();
    expect((await check(a)).code).toBe(0);
    const leases = fx.leases(a.c.name as string);
    expect(leases).toHaveLength(1);
    for (const lease of leases) sh('rm', [`${fx.dataDir}/${a.c.name as string}/${lease}`]);
    const r = await check(a);
    expect(r.code).not.toBe(0);
    expect(`${r.json.msg} ${r.json.details ?? ''}`).toMatch(/failed to find address added by container/i);
  });
});
