// Every configuration key of berth-bridge, checked on the kernel state it produces (and on traffic where
// the option is about traffic: masquerade, spoof check).
import { readFileSync } from 'node:fs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Fixture, ipJson, nsExec, readSysctlIn, sh, trySh } from './harness';

const fx = new Fixture('o');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

const SUBNET = '198.18.133.0/24';

function conf(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return fx.conf({
    ipam: fx.hostLocal([[{ subnet: SUBNET }]]),
    ...extra,
  });
}

/** An ADD in a new namespace (or `ns`), whatever its outcome. */
async function runAdd(
  c: Record<string, unknown>,
  opts: { id?: string; ifname?: string; cniArgs?: string; ns?: ReturnType<typeof fx.netns> } = {},
) {
  const ns = opts.ns ?? fx.netns();
  const r = await fx.run({
    command: 'ADD',
    conf: c,
    containerId: opts.id ?? 'ctr1',
    netns: ns.path,
    ifname: opts.ifname ?? 'eth0',
    ...(opts.cniArgs !== undefined ? { cniArgs: opts.cniArgs } : {}),
  });
  return { ns, r };
}

async function add(
  c: Record<string, unknown>,
  opts: { id?: string; ifname?: string; cniArgs?: string } = {},
) {
  const { ns, r } = await runAdd(c, opts);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return { ns, result: r.json, hostVeth: r.json.interfaces[1].name as string };
}

const linkDetail = (dev: string, ns?: string): any =>
  ipJson([...(ns !== undefined ? ['-n', ns] : []), '-d', 'link', 'show', 'dev', dev])[0];
const bridgeVlans = (dev: string): any[] => {
  const out = JSON.parse(sh('bridge', ['-j', 'vlan', 'show', 'dev', dev]) || '[]');
  return out[0]?.vlans ?? [];
};

/** The bridge made by hand with an address of the operator's (`ip addr add` arguments), then an ADD on it. */
async function addOnBridgeWith(c: Record<string, unknown>, address: string[]) {
  sh('ip', ['link', 'add', c.bridge as string, 'type', 'bridge']);
  sh('ip', ['addr', 'add', address[0]!, 'dev', c.bridge as string, ...address.slice(1)]);
  return fx.run({ command: 'ADD', conf: c, containerId: 'ctr1', netns: fx.netns().path, ifname: 'eth0' });
}

describe('gateway options', () => {
  it('isGateway: gateway on the bridge, forwarding on, no default route', async () => {
    const c = conf({ isGateway: true });
    const { ns, result } = await add(c);
    expect(result.ips[0].gateway).toBe('198.18.133.1');
    expect(
      ipJson(['addr', 'show', 'dev', c.bridge as string])[0].addr_info.map((a: any) => a.local),
    ).toContain('198.18.133.1');
    expect(sh('sysctl', ['-n', 'net.ipv4.ip_forward']).trim()).toBe('1');
    expect(ipJson(['-n', ns.name, 'route', 'show', 'default'])).toEqual([]);
  });

  it('IPAM routes to one destination through two gateways: both in the pod (IPv6: two next hops), CHECK passes', async () => {
    const c = fx.conf({
      ipam: fx.hostLocal([[{ subnet: SUBNET }], [{ subnet: 'fd00:133::/64' }]], {
        routes: [
          { dst: '198.19.0.0/16', gw: '198.18.133.9' },
          { dst: '198.19.0.0/16', gw: '198.18.133.8' },
          { dst: 'fd00:19::/48', gw: 'fd00:133::9' },
          { dst: 'fd00:19::/48', gw: 'fd00:133::8' },
        ],
      }),
    });
    const { ns, result } = await add(c);
    const v4 = ipJson(['-n', ns.name, 'route', 'show', '198.19.0.0/16']).map((r: any) => r.gateway);
    expect(v4.sort()).toEqual(['198.18.133.8', '198.18.133.9']);
    const v6 = ipJson(['-n', ns.name, '-6', 'route', 'show', 'fd00:19::/48']).flatMap((r: any) =>
      r.nexthops !== undefined ? r.nexthops.map((h: any) => h.gateway) : [r.gateway],
    );
    expect(v6.sort()).toEqual(['fd00:133::8', 'fd00:133::9']);
    const check = await fx.check(c, result, 'ctr1', ns.path);
    expect(check.code, check.stdout + check.stderr).toBe(0);
  });

  it('without isGateway: no address on the bridge, no gateway in the result', async () => {
    const c = conf();
    const { result } = await add(c);
    expect(result.ips[0].gateway).toBe('198.18.133.1'); // host-local's own gateway is passed through
    expect(
      ipJson(['addr', 'show', 'dev', c.bridge as string])[0].addr_info.filter(
        (a: any) => a.family === 'inet',
      ),
    ).toEqual([]);
  });

  it('forceAddress: a different address on the bridge is an error without it, replaced with it', async () => {
    const c = conf({ isGateway: true });
    const refused = await addOnBridgeWith(c, ['198.18.134.1/24']);
    expect(refused.code).not.toBe(0);
    expect(refused.json.msg).toBe(
      `"${c.bridge as string}" already has an IP address different from 198.18.133.1/24`,
    );
    expect(fx.leases(c.name as string)).toEqual([]);
    const { result } = await add({ ...c, forceAddress: true });
    expect(result.ips[0].address).toMatch(/^198\.18\.133\.\d+\/24$/);
    const v4 = ipJson(['addr', 'show', 'dev', c.bridge as string])[0]
      .addr_info.filter((a: any) => a.family === 'inet')
      .map((a: any) => a.local);
    expect(v4).toEqual(['198.18.133.1']);
  });
});

describe('a gateway refused on an existing bridge', () => {
  it('dual stack, the IPv6 one conflicting: the failed ADD takes back the IPv4 gateway it had added', async () => {
    const c = fx.conf({
      isGateway: true,
      ipam: fx.hostLocal([[{ subnet: SUBNET }], [{ subnet: 'fd00:133::/64' }]]),
    });
    const refused = await addOnBridgeWith(c, ['fd00:133::5/64', 'nodad']);
    expect(refused.code).not.toBe(0);
    expect(refused.json.msg).toBe(
      `"${c.bridge as string}" already has an IP address different from fd00:133::1/64`,
    );
    const global = ipJson(['addr', 'show', 'dev', c.bridge as string, 'scope', 'global'])[0]
      .addr_info.filter((a: any) => a.local !== undefined)
      .map((a: any) => `${a.local}/${a.prefixlen}`);
    expect(global).toEqual(['fd00:133::5/64']);
    expect(fx.leases(c.name as string)).toEqual([]);
  });
});

describe('gateway already on the bridge', () => {
  it('with another address too: ADD succeeds and keeps both, with or without forceAddress', async () => {
    const c = conf({ isGateway: true });
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'bridge']);
    // The gateway first (as an earlier ADD put it), then an address the operator added.
    sh('ip', ['addr', 'add', '198.18.133.1/24', 'dev', c.bridge as string]);
    sh('ip', ['addr', 'add', '198.18.134.1/24', 'dev', c.bridge as string]);
    const v4 = () =>
      ipJson(['addr', 'show', 'dev', c.bridge as string])[0]
        .addr_info.filter((a: any) => a.family === 'inet')
        .map((a: any) => `${a.local}/${a.prefixlen}`);
    await add(c);
    expect(v4()).toEqual(['198.18.133.1/24', '198.18.134.1/24']);
    await add({ ...c, forceAddress: true }, { id: 'ctr2' });
    expect(v4()).toEqual(['198.18.133.1/24', '198.18.134.1/24']);
  });
});

describe('ipMasq', () => {
  /** An "outside" namespace reachable from the host only; it has no route back to the pod subnet. */
  function outside(): { name: string } {
    const ext = fx.netns();
    const hostEnd = `${fx.prefix}x${ext.name.slice(-2)}`;
    sh('ip', ['link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', 'ext0', 'netns', ext.name]);
    sh('ip', ['addr', 'add', '198.18.141.1/24', 'dev', hostEnd]);
    sh('ip', ['link', 'set', hostEnd, 'up']);
    sh('ip', ['-n', ext.name, 'addr', 'add', '198.18.141.2/24', 'dev', 'ext0']);
    sh('ip', ['-n', ext.name, 'link', 'set', 'ext0', 'up']);
    return ext;
  }

  it.each([
    [true, 'iptables'],
    [true, 'nftables'],
    [true, undefined],
    [false, undefined],
  ])(
    'ipMasq %s (ipMasqBackend %s): traffic to another network leaves with the host address only when on',
    async (masq, backend) => {
      const c = conf({
        isDefaultGateway: true,
        ipMasq: masq,
        ...(backend !== undefined ? { ipMasqBackend: backend } : {}),
      });
      const { ns } = await add(c);
      const ext = outside();
      const ping = trySh('ip', ['netns', 'exec', ns.name, 'ping', '-c', '1', '-W', '1', '198.18.141.2']);
      if (masq) {
        expect(ping, 'pod reaches the outside network through the masquerade').toBeDefined();
        expect(fx.nftList('inet')).toContain('198.18.133.2 comment "ctr1/eth0"');
      } else {
        expect(ping, 'without masquerade the outside has no route back').toBeUndefined();
        expect(fx.nftList('inet')).not.toContain('198.18.133.2');
      }
      // same-subnet traffic is never masqueraded: the gateway sees the pod's own address
      nsExec(ns.name, ['ping', '-c', '1', '-W', '1', '198.18.133.1']);
      fx.deleteNetns(ext.name);
    },
  );
});

describe('link options', () => {
  it('mtu: the new bridge and both veth ends', async () => {
    const c = conf({ mtu: 1400 });
    const { ns, hostVeth } = await add(c);
    expect(linkDetail(c.bridge as string).mtu).toBe(1400);
    expect(linkDetail(hostVeth).mtu).toBe(1400);
    expect(linkDetail('eth0', ns.name).mtu).toBe(1400);
  });

  it('hairpinMode: hairpin on the host port (off by default)', async () => {
    const on = await add(conf({ hairpinMode: true }));
    expect(linkDetail(on.hostVeth).linkinfo.info_slave_data.hairpin).toBe(true);
    const off = await add(conf(), { id: 'ctr2' });
    expect(linkDetail(off.hostVeth).linkinfo.info_slave_data.hairpin).toBe(false);
  });

  it('promiscMode: the bridge is promiscuous', async () => {
    const c = conf({ promiscMode: true });
    await add(c);
    expect(linkDetail(c.bridge as string).flags).toContain('PROMISC');
  });

  it('portIsolation ("true" as the docs write it): the host port is isolated', async () => {
    const { hostVeth } = await add(conf({ portIsolation: 'true' }));
    expect(linkDetail(hostVeth).linkinfo.info_slave_data.isolated).toBe(true);
  });

  it('enabledad: enhanced DAD on; default: accept_dad 0', async () => {
    const v6 = [[{ subnet: 'fd00:b::/64' }]];
    const on = await add(conf({ enabledad: true, ipam: fx.hostLocal(v6) }));
    expect(readSysctlIn(on.ns.name, 'net.ipv6.conf.eth0.accept_dad')).toBe('1');
    expect(readSysctlIn(on.ns.name, 'net.ipv6.conf.eth0.enhanced_dad')).toBe('1');
    // ADD waited for DAD, of the link-local address too
    const addrs = ipJson(['-n', on.ns.name, 'addr', 'show', 'dev', 'eth0'])[0].addr_info;
    expect(addrs.map((a: any) => a.scope).sort()).toEqual(['global', 'link']);
    for (const a of addrs) expect(a.tentative, a.local).toBeUndefined();
    const off = await add(conf({ ipam: fx.hostLocal(v6) }), { id: 'ctr2' });
    expect(readSysctlIn(off.ns.name, 'net.ipv6.conf.eth0.accept_dad')).toBe('0');
  });

  it('an mtu below 1280 with an IPv6 address: code 7 naming it, and nothing left', async () => {
    const c = conf({ mtu: 1200, ipam: fx.hostLocal([[{ subnet: 'fd00:b::/64' }]]) });
    const { ns, r } = await runAdd(c, { id: 'ctr-mtu' });
    expect(r.code).not.toBe(0);
    expect(r.json).toMatchObject({
      code: 7,
      msg: expect.stringMatching(/mtu 1200 is below IPv6's minimum of 1280/),
    });
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
  });

  it("an mtu below 1280 on a bridge carrying another network's IPv6 gateway: code 7, the gateway kept", async () => {
    const v6 = conf({ isGateway: true, ipam: fx.hostLocal([[{ subnet: 'fd00:b::/64' }]]) });
    await add(v6);
    const small = { ...conf({ mtu: 1200 }), name: `${fx.prefix}small`, bridge: v6.bridge };
    const { ns, r } = await runAdd(small, { id: 'ctr-small' });
    expect(r.json).toMatchObject({
      code: 7,
      msg: expect.stringMatching(
        /mtu 1200 is below IPv6's minimum of 1280, and bridge ".*" carries IPv6 addresses \(fd00:b::1\/64\)/,
      ),
    });
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(fx.leases(small.name)).toEqual([]);
    const bridgeV6 = ipJson(['-6', 'addr', 'show', 'dev', v6.bridge as string])[0].addr_info;
    expect(bridgeV6.map((a: any) => a.local)).toContain('fd00:b::1');
    expect(linkDetail(v6.bridge as string).mtu).toBe(1500);
  });

  it('an IPv6 gateway on a bridge whose IPv6 is disabled: the error names the sysctl', async () => {
    const c = conf({ isGateway: true, ipam: fx.hostLocal([[{ subnet: 'fd00:b::/64' }]]) });
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'bridge']);
    sh('sysctl', ['-qw', `net.ipv6.conf.${c.bridge as string}.disable_ipv6=1`]);
    const { ns, r } = await runAdd(c);
    expect(r.code).not.toBe(0);
    expect(r.json.msg).toMatch(
      /^could not add IP address to ".*": .*EACCES \(IPv6 is disabled on it: net\.ipv6\.conf\..*\.disable_ipv6 is 1/,
    );
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(fx.leases(c.name as string)).toEqual([]);
  });

  it('enabledad with a slow DAD (5 probes, ~5 s): the ADD waits for it and succeeds', async () => {
    const ns = fx.netns();
    sh('ip', ['netns', 'exec', ns.name, 'sysctl', '-qw', 'net.ipv6.conf.default.dad_transmits=5']);
    const { r } = await runAdd(conf({ enabledad: true, ipam: fx.hostLocal([[{ subnet: 'fd00:b::/64' }]]) }), {
      id: 'ctr-slow',
      ns,
    });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const addrs = ipJson(['-n', ns.name, 'addr', 'show', 'dev', 'eth0'])[0].addr_info;
    for (const a of addrs) expect(a.tentative, a.local).toBeUndefined();
  }, 20_000);

  it('IPAM routes at 1.1.0: priority, table, mtu and advmss are applied in the pod', async () => {
    const routes = [
      { dst: '198.18.240.0/24', priority: 300, mtu: 1300, advmss: 1260 },
      { dst: '198.18.241.0/24', table: 100 },
      { dst: 'fd00:b:240::/48', mtu: 1350 },
    ];
    const ipam = {
      type: 'berth-ipam',
      dataDir: fx.dataDir,
      ranges: [[{ subnet: SUBNET }], [{ subnet: 'fd00:b::/64' }]],
      routes,
    };
    const c = conf({ cniVersion: '1.1.0', ipam });
    const { ns, result } = await add(c);
    expect(result.routes).toEqual(routes);
    const [r1] = ipJson(['-n', ns.name, 'route', 'show', '198.18.240.0/24']);
    expect(r1).toMatchObject({ gateway: '198.18.133.1', metric: 300 });
    expect(r1.metrics).toEqual([{ mtu: 1300, advmss: 1260 }]);
    expect(ipJson(['-n', ns.name, 'route', 'show', 'table', '100'])).toMatchObject([
      { dst: '198.18.241.0/24', gateway: '198.18.133.1' },
    ]);
    expect(ipJson(['-n', ns.name, 'route', 'show', '198.18.241.0/24'])).toEqual([]);
    const [r6] = ipJson(['-n', ns.name, '-6', 'route', 'show', 'fd00:b:240::/48']);
    expect(r6.metrics).toEqual([{ mtu: 1350 }]);
    const check = await fx.check(c, result, 'ctr1', ns.path);
    expect(check.code, check.stdout + check.stderr).toBe(0);
  });

  it('IPv6 is left alone in an IPv4-only pod', async () => {
    const { ns } = await add(conf());
    // the namespace default (1 = keep addresses off on down) is not touched for IPv4-only pods
    expect(readSysctlIn(ns.name, 'net.ipv6.conf.eth0.keep_addr_on_down')).toBe('0');
  });
});

/** Kernels built without CONFIG_BRIDGE_VLAN_FILTERING refuse vlan_filtering (this CI machine is one). */
function kernelHasVlanFiltering(): boolean {
  const probe = `${fx.prefix}vf`;
  const ok = trySh('ip', ['link', 'add', probe, 'type', 'bridge', 'vlan_filtering', '1']) !== undefined;
  trySh('ip', ['link', 'del', probe]);
  return ok;
}
const VLAN_OK = kernelHasVlanFiltering();

describe.skipIf(VLAN_OK)('VLANs on a kernel without bridge VLAN filtering', () => {
  it.each([{ vlan: 100 }, { vlanTrunk: [{ id: 101 }] }])(
    '%j fails clearly and leaves nothing',
    async (extra) => {
      const c = conf(extra);
      const { ns, r } = await runAdd(c);
      expect(r.code).not.toBe(0);
      expect(r.json.msg).toContain('CONFIG_BRIDGE_VLAN_FILTERING');
      expect(trySh('ip', ['link', 'show', 'dev', c.bridge as string])).toBeUndefined();
      expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
      expect(fx.leases(c.name as string)).toEqual([]);
    },
  );

  it('on an existing bridge: the same clear error, the bridge kept, nothing else left', async () => {
    const c = conf({ vlan: 100 });
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'bridge']);
    const { ns, r } = await runAdd(c);
    expect(r.code).not.toBe(0);
    expect(r.json.msg).toMatch(/^cannot set VLANs on a port of bridge ".*": .*CONFIG_BRIDGE_VLAN_FILTERING/);
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(fx.leases(c.name as string)).toEqual([]);
  });
});

describe.runIf(VLAN_OK)('VLANs', () => {
  it('vlan: PVID untagged on the port, vlan_filtering on the new bridge, default VLAN 1 kept (preserveDefaultVlan default)', async () => {
    const c = conf({ vlan: 100 });
    const { hostVeth } = await add(c);
    expect(linkDetail(c.bridge as string).linkinfo.info_data.vlan_filtering).toBe(1);
    const vlans = bridgeVlans(hostVeth);
    expect(vlans).toContainEqual({ vlan: 100, flags: ['PVID', 'Egress Untagged'] });
    expect(vlans.map((v) => v.vlan)).toContain(1);
  });

  it('preserveDefaultVlan false: only the configured VLAN', async () => {
    const c = conf({ vlan: 100, preserveDefaultVlan: false });
    const { hostVeth } = await add(c);
    expect(bridgeVlans(hostVeth)).toEqual([{ vlan: 100, flags: ['PVID', 'Egress Untagged'] }]);
  });

  it('vlanTrunk: tagged VLANs, native VLAN 1', async () => {
    const c = conf({ vlanTrunk: [{ id: 101 }, { minID: 200, maxID: 202 }], preserveDefaultVlan: false });
    const { hostVeth } = await add(c);
    const vlans = bridgeVlans(hostVeth);
    expect(vlans).toContainEqual({ vlan: 1, flags: ['PVID', 'Egress Untagged'] });
    const tagged = vlans
      .filter((v) => v.vlan !== 1)
      .flatMap((v) => (v.vlanEnd !== undefined ? [`${v.vlan}-${v.vlanEnd}`] : [String(v.vlan)]));
    expect(tagged).toEqual(['101', '200-202']);
  });

  it('vlan with isGateway: the gateway lives on <bridge>.<vlan>, reported as a 4th interface', async () => {
    const c = conf({ vlan: 100, isDefaultGateway: true, bridge: `${fx.prefix}v` });
    const { ns, result } = await add(c);
    const gwIf = `${c.bridge as string}.100`;
    expect(result.interfaces).toHaveLength(4);
    expect(result.interfaces[3].name).toBe(gwIf);
    expect(ipJson(['addr', 'show', 'dev', gwIf])[0].addr_info.map((a: any) => a.local)).toContain(
      '198.18.133.1',
    );
    nsExec(ns.name, ['ping', '-c', '1', '-W', '2', '198.18.133.1']);
    trySh('ip', ['link', 'del', gwIf]);
  });

  it("vlan with isGateway, portIsolation, hairpinMode and a trunk: the gateway's port takes none of them", async () => {
    const c = conf({
      vlan: 100,
      isDefaultGateway: true,
      portIsolation: true,
      hairpinMode: true,
      vlanTrunk: [{ id: 101 }],
      preserveDefaultVlan: false,
      bridge: `${fx.prefix}w`,
    });
    const { ns, hostVeth } = await add(c);
    const gwIf = `${c.bridge as string}.100`;
    try {
      // The gateway pair's bridge end: the veth on the bridge whose peer is <bridge>.100.
      const gwPeer = linkDetail(gwIf).link as string;
      const port = linkDetail(gwPeer);
      expect(port.linkinfo.info_slave_data.isolated).toBe(false);
      expect(port.linkinfo.info_slave_data.hairpin).toBe(false);
      expect(bridgeVlans(gwPeer)).toEqual([{ vlan: 100, flags: ['PVID', 'Egress Untagged'] }]);
      // The pod's own port keeps its options.
      const podPort = linkDetail(hostVeth);
      expect(podPort.linkinfo.info_slave_data.isolated).toBe(true);
      expect(podPort.linkinfo.info_slave_data.hairpin).toBe(true);
      expect(readFileSync(`/proc/sys/net/ipv6/conf/${gwIf}/accept_ra`, 'utf8').trim()).toBe('0');
      // An isolated pod still reaches its gateway.
      nsExec(ns.name, ['ping', '-c', '1', '-W', '2', '198.18.133.1']);
    } finally {
      trySh('ip', ['link', 'del', gwIf]);
    }
  });
});

describe('L2 and container options', () => {
  it('no IPAM: L2-only attachment, interface up, no ips in the result; CHECK works without IPAM', async () => {
    const c = conf({ ipam: {} });
    const { ns, result } = await add(c);
    expect(result.ips).toBeUndefined();
    expect(linkDetail('eth0', ns.name).operstate).toBe('UP');
    const check = await fx.check(c, result, 'ctr1', ns.path);
    expect(check.code, check.stdout).toBe(0);
  });

  it('disableContainerInterface: the container end stays down', async () => {
    const c = conf({ ipam: undefined, disableContainerInterface: true });
    const { ns } = await add(c);
    expect(linkDetail('eth0', ns.name).flags).not.toContain('UP');
  });

  it('disableContainerInterface with IPAM is refused (code 7)', async () => {
    const ns = fx.netns();
    const r = await fx.run({
      command: 'ADD',
      conf: conf({ disableContainerInterface: true }),
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(r.json.code).toBe(7);
    expect(r.json.msg).toContain('disableContainerInterface');
  });

  it('dns from the config replaces the IPAM dns', async () => {
    const { result } = await add(conf({ dns: { nameservers: ['198.18.0.53'], search: ['pods.example'] } }));
    expect(result.dns).toEqual({ nameservers: ['198.18.0.53'], search: ['pods.example'] });
  });

  it.each([
    ['CNI_ARGS MAC=', {}, { cniArgs: 'IgnoreUnknown=1;MAC=02:42:c6:12:85:01' }, '02:42:c6:12:85:01'],
    [
      'args.cni.mac',
      { args: { cni: { mac: '02:42:c6:12:85:02' } } },
      { cniArgs: 'IgnoreUnknown=1;MAC=02:42:c6:12:85:01' },
      '02:42:c6:12:85:02',
    ],
    [
      'runtimeConfig.mac',
      { runtimeConfig: { mac: '02:42:c6:12:85:03' }, args: { cni: { mac: '02:42:c6:12:85:02' } } },
      {},
      '02:42:c6:12:85:03',
    ],
  ])('container MAC from %s', async (_what, extra, opts, mac) => {
    const { ns, result } = await add(conf(extra), opts);
    expect(linkDetail('eth0', ns.name).address).toBe(mac);
    expect(result.interfaces[2].mac).toBe(mac);
  });
});

describe('macspoofchk', () => {
  it('frames from the pod with another source MAC are dropped', async () => {
    const c = conf({ isGateway: true, macspoofchk: true });
    const { ns, hostVeth, result } = await add(c);
    expect(fx.nftList('bridge')).toContain(`"${hostVeth}" . ${result.interfaces[2].mac} comment "ctr1/eth0"`);
    nsExec(ns.name, ['ping', '-c', '1', '-W', '1', '198.18.133.1']);
    sh('ip', ['-n', ns.name, 'link', 'set', 'eth0', 'address', '02:42:c6:12:85:99']);
    sh('ip', ['neigh', 'flush', 'dev', c.bridge as string]);
    expect(
      trySh('ip', ['netns', 'exec', ns.name, 'ping', '-c', '1', '-W', '1', '198.18.133.1']),
    ).toBeUndefined();
  });
});
