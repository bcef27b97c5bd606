// Compatibility: the same network configuration run once with the reference bridge (Debian's
// /usr/lib/cni/bridge) and once with berth-bridge, both with host-local, gives the same kernel state in the
// pod and on the bridge (normalised `ip -j` output) and results of the same shape.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Fixture, ipJson, readSysctlIn, sh, trySh } from './harness';

const fx = new Fixture('k');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

const REFERENCE = '/usr/lib/cni/bridge';

/** Differences berth makes on purpose; each is removed from both sides before comparing. */
const DELIBERATE = [
  'the IPv6 gateway on the bridge is added with NODAD (never tentative); the reference leaves it tentative',
  'the host veth carries the alias <containerID>/<ifname>; the reference sets none',
  'an empty dns object is omitted from the result; the reference prints "dns": {}',
];

const LINK_LOCAL = /^fe80:/;

function normAddrs(addrInfo: any[]): any[] {
  return addrInfo
    .map((a) => ({
      family: a.family,
      // link-local addresses derive from the random MACs
      local: LINK_LOCAL.test(a.local) ? 'fe80::<eui64>' : a.local,
      prefixlen: a.prefixlen,
      scope: a.scope,
      ...(a.broadcast !== undefined ? { broadcast: a.broadcast } : {}),
      ...(a.dadfailed ? { dadfailed: true } : {}),
    }))
    .sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)));
}

function podState(ns: string, ifname: string): unknown {
  const links = ipJson(['-n', ns, '-d', 'addr', 'show']).map((l: any) => ({
    ifname: l.ifname,
    flags: l.flags,
    mtu: l.mtu,
    operstate: l.operstate,
    link_type: l.link_type,
    kind: l.linkinfo?.info_kind,
    addrs: normAddrs(l.addr_info ?? []),
  }));
  const routes = ['-4', '-6'].flatMap((fam) =>
    ipJson(['-n', ns, fam, 'route', 'show', 'table', 'all']).map((r: any) => ({
      dst: LINK_LOCAL.test(r.dst) && r.dst !== 'fe80::/64' ? 'fe80::<eui64>' : r.dst,
      gateway: r.gateway,
      dev: r.dev,
      table: r.table,
      type: r.type,
      protocol: r.protocol,
      scope: r.scope,
      metric: r.metric,
      prefsrc: r.prefsrc,
      flags: r.flags,
    })),
  );
  routes.sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)));
  const sysctls = Object.fromEntries(
    [
      `net.ipv4.conf.${ifname}.arp_notify`,
      `net.ipv6.conf.${ifname}.accept_dad`,
      `net.ipv6.conf.${ifname}.disable_ipv6`,
      `net.ipv6.conf.lo.disable_ipv6`,
    ].map((k) => [k, readSysctlIn(ns, k)]),
  );
  return { links, routes, sysctls };
}

function bridgeState(br: string): unknown {
  const [b] = ipJson(['-d', 'addr', 'show', 'dev', br]);
  const info = b.linkinfo.info_data;
  const ports = ipJson(['-d', 'link', 'show', 'master', br]).map((p: any) => ({
    flags: p.flags,
    mtu: p.mtu,
    operstate: p.operstate,
    kind: p.linkinfo.info_kind,
    port: (({ state, hairpin, isolated, learning, flood, guard }) => ({
      state,
      hairpin,
      isolated,
      learning,
      flood,
      guard,
    }))(p.linkinfo.info_slave_data),
  }));
  return {
    flags: b.flags,
    mtu: b.mtu,
    operstate: b.operstate,
    promiscuity: b.promiscuity,
    bridge: {
      stp_state: info.stp_state,
      vlan_filtering: info.vlan_filtering,
      vlan_protocol: info.vlan_protocol,
      mcast_snooping: info.mcast_snooping,
    },
    addrs: normAddrs((b.addr_info as any[]).filter((a) => !LINK_LOCAL.test(a.local))),
    ports,
  };
}

/** The result's shape: keys and types everywhere; values where they must agree. */
function shape(r: any, netnsPath: string): unknown {
  const copy = JSON.parse(JSON.stringify(r));
  if (copy.dns !== undefined && Object.keys(copy.dns).length === 0) delete copy.dns;
  for (const i of copy.interfaces ?? []) {
    if (typeof i.mac === 'string') i.mac = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(i.mac) ? '<mac>' : i.mac;
    if (/^veth[0-9a-f]{8}$/.test(i.name)) i.name = 'veth<8 hex>';
    if (i.sandbox === netnsPath) i.sandbox = '<CNI_NETNS>';
  }
  return copy;
}

async function attach(plugin: string, c: Record<string, unknown>) {
  const ns = fx.netns();
  const br = c.bridge as string;
  const add = await fx.run({
    plugin,
    command: 'ADD',
    conf: c,
    containerId: 'compat1',
    netns: ns.path,
    ifname: 'eth0',
  });
  expect(add.code, `${plugin}: ${add.stdout}${add.stderr}`).toBe(0);
  // The bridge's operstate follows its ports through the kernel's linkwatch, up to a second later than the
  // port: wait for it the same way for both plugins before taking the snapshot.
  for (let i = 0; i < 40 && ipJson(['link', 'show', 'dev', br])[0].operstate !== 'UP'; i++)
    await new Promise((r) => setTimeout(r, 50));
  const state = { pod: podState(ns.name, 'eth0'), bridge: bridgeState(br), result: shape(add.json, ns.path) };
  const del = await fx.run({
    plugin,
    command: 'DEL',
    conf: c,
    containerId: 'compat1',
    netns: ns.path,
    ifname: 'eth0',
  });
  expect(del.code, `${plugin} DEL: ${del.stdout}`).toBe(0);
  fx.deleteNetns(ns.name);
  trySh('ip', ['link', 'del', br]);
  return state;
}

describe.each(['0.3.1', '0.4.0', '1.0.0'])(
  '[%s] reference bridge vs berth-bridge, both with host-local',
  (version) => {
    it.each([
      [
        'dual stack, default gateway, mtu, hairpin',
        { isDefaultGateway: true, mtu: 1450, hairpinMode: true },
        true,
      ],
      ['IPv4, isGateway only, promiscMode', { isGateway: true, promiscMode: true }, false],
      ['IPv4, no gateway', {}, false],
    ])('%s: same pod, same bridge, same result shape', async (_what, options, dual) => {
      const br = fx.bridge();
      const base = {
        cniVersion: version,
        name: `${fx.prefix}net`,
        bridge: br,
        ...options,
        ipam: fx.hostLocal(
          dual
            ? [[{ subnet: '198.18.137.0/24' }], [{ subnet: 'fd00:b::/64' }]]
            : [[{ subnet: '198.18.137.0/24' }]],
        ),
      };
      const ref = await attach(REFERENCE, { ...base, type: 'bridge' });
      fx.cleanup();
      const ours = await attach(fx.berthBridge, { ...base, type: 'berth-bridge' });
      expect(ours.pod).toEqual(ref.pod);
      expect(ours.bridge).toEqual(ref.bridge);
      expect(ours.result).toEqual(ref.result);
      expect(DELIBERATE).toHaveLength(3);
    });
  },
);

describe('state both leave behind after DEL', () => {
  it('neither removes the bridge; both release the lease', async () => {
    for (const [plugin, type] of [
      [REFERENCE, 'bridge'],
      [fx.berthBridge, 'berth-bridge'],
    ] as const) {
      const br = fx.bridge();
      const c = {
        cniVersion: '1.0.0',
        name: `${fx.prefix}net`,
        type,
        bridge: br,
        isGateway: true,
        ipam: fx.hostLocal([[{ subnet: '198.18.137.0/24' }]]),
      };
      const ns = fx.netns();
      expect(
        (await fx.run({ plugin, command: 'ADD', conf: c, containerId: 'c', netns: ns.path, ifname: 'eth0' }))
          .code,
      ).toBe(0);
      expect(
        (await fx.run({ plugin, command: 'DEL', conf: c, containerId: 'c', netns: ns.path, ifname: 'eth0' }))
          .code,
      ).toBe(0);
      expect(trySh('ip', ['link', 'show', 'dev', br])).toBeDefined();
      expect(fx.leases(c.name)).toEqual([]);
      sh('ip', ['link', 'del', br]);
    }
  });
});
