// berth-bridge ADD/CHECK/DEL through the built executable, as a runtime runs it, on real namespaces.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { registeredTags } from '../../src/bridge/registry';
import {
  SUPPORTED_VERSIONS,
  specHasCheck,
  specHasIpVersionField,
  specHasMultipleIPs,
} from '../../src/cni-spec/versions';
import { Fixture, ipJson, nsExec, readSysctlIn, runPlugin, sh, trySh } from './harness';

const fx = new Fixture('a');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

const V4 = [{ subnet: '198.18.130.0/24' }];
const V6 = [{ subnet: 'fd00:b::/64' }];

function conf(extra: Record<string, unknown> = {}, version = '1.0.0'): Record<string, unknown> {
  return fx.conf({
    cniVersion: version,
    ipam: fx.hostLocal([V4], {}, version),
    ...extra,
  });
}

function globalAddrs(ns: string, ifname: string): string[] {
  const [link] = ipJson(['-n', ns, 'addr', 'show', 'dev', ifname]);
  return (link.addr_info as any[])
    .filter((a) => a.scope === 'global')
    .map((a) => `${a.local}/${a.prefixlen}`);
}

describe.each(SUPPORTED_VERSIONS)('[%s] ADD, CHECK, DEL', (version) => {
  it('attaches a pod and removes it again', async () => {
    const ns = fx.netns();
    const c = conf({ isDefaultGateway: true }, version);
    const br = c.bridge as string;
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.stderr).toBe('');
    expect(add.code).toBe(0);
    const r = add.json;
    expect(r.cniVersion).toBe(version);

    // The kernel state.
    expect(globalAddrs(ns.name, 'eth0')).toEqual(['198.18.130.2/24']);
    const routes = ipJson(['-n', ns.name, 'route', 'show', 'default']);
    expect(routes).toEqual([
      expect.objectContaining({ dst: 'default', gateway: '198.18.130.1', dev: 'eth0' }),
    ]);
    const ports = fx.ports(br);
    expect(ports).toHaveLength(1);
    const hostVeth = ports[0];
    expect(hostVeth.ifname).toMatch(/^veth[0-9a-f]{8}$/);
    const [detail] = ipJson(['-d', 'link', 'show', 'dev', hostVeth.ifname]);
    expect(detail.ifalias).toBe('ctr1/eth0');
    // Its MAC was set at creation (locally administered, unicast), so udev's MACAddressPolicy=persistent
    // leaves it alone and the result keeps naming the MAC the link has.
    expect(readFileSync(`/sys/class/net/${hostVeth.ifname}/addr_assign_type`, 'utf8').trim()).toBe('3');
    expect(parseInt((hostVeth.address as string).slice(0, 2), 16) & 0x03).toBe(0x02);
    const [brAddr] = ipJson(['addr', 'show', 'dev', br]);
    expect(
      (brAddr.addr_info as any[]).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`),
    ).toEqual(['198.18.130.1/24']);
    expect(readSysctlIn(ns.name, 'net.ipv4.conf.eth0.arp_notify')).toBe('1');
    expect(sh('sysctl', ['-n', 'net.ipv4.ip_forward']).trim()).toBe('1');

    // The result shape per version.
    const [contLink] = ipJson(['-n', ns.name, 'link', 'show', 'dev', 'eth0']);
    if (!specHasMultipleIPs(version)) {
      expect(r.ip4).toEqual(expect.objectContaining({ ip: '198.18.130.2/24', gateway: '198.18.130.1' }));
      expect(r.interfaces).toBeUndefined();
    } else {
      expect(r.interfaces).toEqual([
        { name: br, mac: ipJson(['link', 'show', 'dev', br])[0].address },
        { name: hostVeth.ifname, mac: hostVeth.address },
        { name: 'eth0', mac: contLink.address, sandbox: ns.path },
      ]);
      const ip = r.ips[0];
      expect(ip).toEqual(
        expect.objectContaining({ address: '198.18.130.2/24', gateway: '198.18.130.1', interface: 2 }),
      );
      if (specHasIpVersionField(version)) expect(ip.version).toBe('4');
      else expect(ip.version).toBeUndefined();
      expect(r.routes).toEqual([{ dst: '0.0.0.0/0', gw: '198.18.130.1' }]);
    }

    if (specHasCheck(version)) {
      const check = await fx.check(c, r, 'ctr1', ns.path);
      expect(check.stdout + check.stderr).toBe('');
      expect(check.code).toBe(0);
    }

    const del = await fx.run({
      command: 'DEL',
      conf: c,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(del.code).toBe(0);
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(fx.ports(br)).toEqual([]);
    expect(fx.leases(c.name as string)).toEqual([]);
  });
});

describe('dual stack', () => {
  it('configures both families, the gateways on the bridge (IPv6 not tentative), and CHECK detects drift', async () => {
    const ns = fx.netns();
    const c = conf({ isDefaultGateway: true, ipam: fx.hostLocal([V4, V6]) });
    const br = c.bridge as string;
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr2',
      netns: ns.path,
      ifname: 'eth1',
    });
    expect(add.code, add.stdout).toBe(0);
    expect(globalAddrs(ns.name, 'eth1').sort()).toEqual(['198.18.130.2/24', 'fd00:b::2/64']);
    const v6def = ipJson(['-n', ns.name, '-6', 'route', 'show', 'default']);
    expect(v6def).toEqual([expect.objectContaining({ gateway: 'fd00:b::1', dev: 'eth1' })]);
    const brAddrs = (ipJson(['addr', 'show', 'dev', br])[0].addr_info as any[]).filter(
      (a) => a.scope === 'global',
    );
    expect(brAddrs.map((a) => a.local).sort()).toEqual(['198.18.130.1', 'fd00:b::1']);
    expect(brAddrs.find((a) => a.local === 'fd00:b::1').tentative).toBeUndefined();
    // The bridge this ADD made has its link-local address without DAD too: while tentative, the host sends no
    // neighbour solicitation for what it forwards to the pods.
    const brLinkLocal = (ipJson(['addr', 'show', 'dev', br])[0].addr_info as any[]).filter(
      (a) => a.family === 'inet6' && a.scope === 'link',
    );
    expect(brLinkLocal).toEqual([expect.objectContaining({ local: expect.stringMatching(/^fe80:/) })]);
    expect(brLinkLocal[0].tentative).toBeUndefined();
    expect(readSysctlIn(ns.name, 'net.ipv6.conf.eth1.accept_dad')).toBe('0');
    expect(readSysctlIn(ns.name, 'net.ipv6.conf.eth1.disable_ipv6')).toBe('0');
    // IPv6 reachability from the pod to its gateway, right after ADD.
    nsExec(ns.name, ['ping', '-6', '-c', '1', '-W', '2', 'fd00:b::1']);
    nsExec(ns.name, ['ping', '-c', '1', '-W', '2', '198.18.130.1']);
    expect(add.json.routes).toEqual([
      { dst: '0.0.0.0/0', gw: '198.18.130.1' },
      { dst: '::/0', gw: 'fd00:b::1' },
    ]);

    const args = {
      conf: { ...c, prevResult: add.json },
      containerId: 'ctr2',
      netns: ns.path,
      ifname: 'eth1',
    };
    expect((await fx.run({ command: 'CHECK', ...args })).code).toBe(0);
    sh('ip', ['-n', ns.name, 'addr', 'del', 'fd00:b::2/64', 'dev', 'eth1']);
    const broken = await fx.run({ command: 'CHECK', ...args });
    expect(broken.code).not.toBe(0);
    expect(broken.json.msg).toContain('fd00:b::2/64');

    expect((await fx.run({ command: 'DEL', ...args })).code).toBe(0);
    expect(fx.leases(c.name as string)).toEqual([]);
  });

  it('CHECK fails when the host veth is gone', async () => {
    const ns = fx.netns();
    // isGateway pins the bridge MAC, so the failure is about the veth, not a bridge MAC that moved
    const c = conf({ isGateway: true });
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr3',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code).toBe(0);
    sh('ip', ['link', 'del', add.json.interfaces[1].name]);
    const check = await fx.check(c, add.json, 'ctr3', ns.path);
    expect(check.code).not.toBe(0);
    expect(check.json.msg).toMatch(/not found/);
  });
});

describe('ADD refusals', () => {
  it('fails when the interface already exists in the netns, and leaves nothing', async () => {
    const ns = fx.netns();
    sh('ip', ['-n', ns.name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
    const c = conf();
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr4',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code).not.toBe(0);
    expect(add.json.msg).toContain('already exists');
    expect(fx.leases(c.name as string)).toEqual([]);
    expect(fx.ports(c.bridge as string)).toEqual([]);
  });

  it.each(['0.1.0', '0.2.0'])(
    'L2 only in %s (a result without addresses it cannot print): refused before the veth, nothing made',
    async (cniVersion) => {
      const ns = fx.netns();
      const c = { ...conf(), cniVersion };
      delete c.ipam;
      const add = await fx.add(c, 'ctr9', ns.path);
      expect(add.code).not.toBe(0);
      expect(add.json).toMatchObject({
        code: 1,
        msg: `cannot express a result without IP addresses in CNI ${cniVersion}`,
      });
      expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
      expect(trySh('ip', ['link', 'show', 'dev', c.bridge as string])).toBeUndefined();
    },
  );

  it("refuses the plugin's own network namespace (code 8) for ADD, CHECK and DEL, unless CNI_NETNS_OVERRIDE", async () => {
    // A host link of ours named like the pod's interface: a DEL in the host namespace would delete it.
    const dummy = `${fx.prefix}o0`;
    sh('ip', ['link', 'add', dummy, 'type', 'veth', 'peer', 'name', `${dummy}p`]);
    try {
      const c = conf();
      for (const command of ['ADD', 'CHECK', 'DEL'] as const) {
        const r = await fx.run({
          command,
          conf: c,
          containerId: 'ctr8',
          netns: '/proc/self/ns/net',
          ifname: dummy,
        });
        expect(r.code, `${command}: ${r.stdout}`).not.toBe(0);
        expect(r.json.code).toBe(8);
        expect(r.json.msg).toMatch(/plugin's own network namespace/);
      }
      expect(trySh('ip', ['link', 'show', 'dev', dummy])).toBeDefined();
      expect(fx.leases(c.name as string)).toEqual([]);
      // As libcni's skel: CNI_NETNS_OVERRIDE lets the call through (here a DEL, which removes that link).
      const del = await fx.run({
        command: 'DEL',
        conf: c,
        containerId: 'ctr8',
        netns: '/proc/self/ns/net',
        ifname: dummy,
        env: { CNI_NETNS_OVERRIDE: 'TRUE' }, // "1", or "true" in any case, as skel
      });
      expect(del.code, del.stdout).toBe(0);
      expect(trySh('ip', ['link', 'show', 'dev', dummy])).toBeUndefined();
    } finally {
      trySh('ip', ['link', 'del', dummy]);
    }
  });

  it('fails when the bridge name is taken by a link that is not a bridge', async () => {
    const ns = fx.netns();
    const c = conf();
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'veth', 'peer', 'name', `${c.bridge as string}p`]);
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr5',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code).not.toBe(0);
    expect(add.json.msg).toContain('is not a bridge');
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
  });

  it('reuses an existing bridge (same ifindex)', async () => {
    const c = conf();
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'bridge']);
    const before = ipJson(['link', 'show', 'dev', c.bridge as string])[0].ifindex;
    const ns = fx.netns();
    expect(
      (await fx.run({ command: 'ADD', conf: c, containerId: 'ctr6', netns: ns.path, ifname: 'eth0' })).code,
    ).toBe(0);
    expect(ipJson(['link', 'show', 'dev', c.bridge as string])[0].ifindex).toBe(before);
  });

  it('pins the bridge MAC in gateway mode, also when the gateway address was there and the MAC was not pinned', async () => {
    // NET_ADDR_SET (3) in sysfs: the MAC was set explicitly and no longer follows the lowest port's.
    const assignType = (c: Record<string, unknown>): string =>
      readFileSync(`/sys/class/net/${c.bridge as string}/addr_assign_type`, 'utf8').trim();
    const addPod = async (c: Record<string, unknown>, containerId: string): Promise<number> =>
      (await fx.run({ command: 'ADD', conf: c, containerId, netns: fx.netns().path, ifname: 'eth0' })).code;

    const fresh = conf({ isGateway: true });
    expect(await addPod(fresh, 'ctr7')).toBe(0);
    expect(assignType(fresh)).toBe('3');

    // A bridge with the gateway address already on it (an ADD that died before its pin, or made by hand):
    // the ADD adds no address, and must still pin.
    const c = conf({
      name: `${fresh.name as string}2`,
      isGateway: true,
      ipam: fx.hostLocal([[{ subnet: '198.18.131.0/24' }]]),
    });
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'bridge']);
    sh('ip', ['addr', 'add', '198.18.131.1/24', 'dev', c.bridge as string]);
    expect(assignType(c)).not.toBe('3');
    expect(await addPod(c, 'ctr8')).toBe(0);
    expect(assignType(c)).toBe('3');
  });

  it.each([
    ['a bridge berth makes keeps its MAC without a gateway', true],
    ["an operator's unpinned bridge following its ports is not drift", false],
  ])('%s: CHECK of an earlier pod passes as ports come and go', async (_what, berthMakesIt) => {
    const c = conf(); // no isGateway: nothing pins the MAC but the creation
    const bridge = c.bridge as string;
    if (!berthMakesIt) sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    const ns = fx.netns();
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr9',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const assigned = readFileSync(`/sys/class/net/${bridge}/addr_assign_type`, 'utf8').trim();
    expect(assigned === '3').toBe(berthMakesIt);
    // A port with the lowest MAC there can be: an unpinned bridge takes it as its own.
    const low = `${fx.prefix}lo`;
    sh('ip', ['link', 'add', low, 'address', '02:00:00:00:00:01', 'type', 'veth', 'peer', 'name', `${low}p`]);
    try {
      sh('ip', ['link', 'set', low, 'master', bridge, 'up']);
      const mac = ipJson(['link', 'show', 'dev', bridge])[0].address;
      expect(mac === '02:00:00:00:00:01').toBe(!berthMakesIt);
      const check = await fx.check(c, add.json, 'ctr9', ns.path);
      expect(check.code, check.stdout + check.stderr).toBe(0);
    } finally {
      trySh('ip', ['link', 'del', low]);
    }
  });
});

describe('DEL is idempotent', () => {
  async function added(): Promise<{
    ns: { name: string; path: string };
    c: Record<string, unknown>;
    result: any;
  }> {
    const ns = fx.netns();
    const c = conf({ ipMasq: true, macspoofchk: true });
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr7',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code, add.stdout).toBe(0);
    expect(fx.leases(c.name as string)).toHaveLength(1);
    expect(fx.nftList('inet')).toContain('ctr7/eth0');
    expect(fx.nftList('bridge')).toContain('ctr7/eth0');
    expect(registeredTags(fx.runDir, c.name as string)).toEqual(['ctr7/eth0']);
    return { ns, c, result: add.json };
  }
  function expectAllGone(c: Record<string, unknown>): void {
    expect(fx.leases(c.name as string)).toEqual([]);
    expect(registeredTags(fx.runDir, c.name as string)).toEqual([]);
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(fx.nftList('inet')).not.toContain('ctr7');
    expect(fx.nftList('bridge')).not.toContain('ctr7');
    expect(fx.tables()).toEqual([]);
    expect(fx.runState()).toEqual([]);
  }

  it("of another network's failed ADD of the same interface name: this network's interface stays (the tag names no network)", async () => {
    const { ns, c, result } = await added();
    // Another network, its own bridge and subnet, given the same interface name (Multus given one twice).
    const other = conf({ name: `${fx.prefix}n2`, ipam: fx.hostLocal([[{ subnet: '198.18.131.0/24' }]]) });
    const args = { containerId: 'ctr7', netns: ns.path, ifname: 'eth0' };
    const failed = await fx.run({ command: 'ADD', conf: other, ...args });
    expect(failed.code).not.toBe(0);
    expect(failed.json.msg).toMatch(/container veth name provided \(eth0\) already exists/);
    // The runtime cleans up after the failed ADD.
    const del = await fx.run({ command: 'DEL', conf: other, ...args });
    expect(del.code, del.stdout).toBe(0);
    expect(del.stderr).toMatch(
      /left eth0 in .*: its host end veth[0-9a-f]{8} is another network's attachment/,
    );
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toContain('eth0');
    const check = await fx.run({ command: 'CHECK', conf: { ...c, prevResult: result }, ...args });
    expect(check.code, check.stdout).toBe(0);
    expect(fx.leases(c.name as string)).toHaveLength(1);
  });

  it('twice, without prevResult', async () => {
    const { ns, c } = await added();
    for (let i = 0; i < 2; i++) {
      const del = await fx.run({
        command: 'DEL',
        conf: c,
        containerId: 'ctr7',
        netns: ns.path,
        ifname: 'eth0',
      });
      expect(del.code, del.stdout).toBe(0);
    }
    expectAllGone(c);
  });

  it('with an empty CNI_NETNS (the pod netns still alive): host veth found by its alias', async () => {
    const { ns, c } = await added();
    const del = await fx.run({ command: 'DEL', conf: c, containerId: 'ctr7', netns: '', ifname: 'eth0' });
    expect(del.code, del.stdout).toBe(0);
    expectAllGone(c);
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
  });

  it("with an empty CNI_NETNS leaves a veth with the same tag on another bridge alone (another network's)", async () => {
    const { c } = await added();
    const otherBridge = fx.bridge();
    const other = `${fx.prefix}o0`;
    sh('ip', ['link', 'add', otherBridge, 'type', 'bridge']);
    sh('ip', ['link', 'add', other, 'type', 'veth', 'peer', 'name', `${fx.prefix}o1`]);
    sh('ip', ['link', 'set', other, 'master', otherBridge]);
    sh('ip', ['link', 'set', 'dev', other, 'alias', 'ctr7/eth0']);
    const del = await fx.run({ command: 'DEL', conf: c, containerId: 'ctr7', netns: '', ifname: 'eth0' });
    expect(del.code, del.stdout).toBe(0);
    expectAllGone(c);
    const [survivor] = ipJson(['-d', 'link', 'show', 'dev', other]);
    expect(survivor.ifalias).toBe('ctr7/eth0');
    expect(survivor.master).toBe(otherBridge);
  });

  it("with an empty CNI_NETNS after the config's bridge changed: its veth on the old bridge goes too", async () => {
    const { ns, c } = await added();
    const moved = { ...c, bridge: fx.bridge() };
    const del = await fx.run({ command: 'DEL', conf: moved, containerId: 'ctr7', netns: '', ifname: 'eth0' });
    expect(del.code, del.stdout).toBe(0);
    expectAllGone(c);
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
  });

  it("of an id never added, in another berth pod's namespace (a path reused): that pod's interface stays", async () => {
    const { ns, c, result } = await added();
    const del = await fx.run({
      command: 'DEL',
      conf: c,
      containerId: 'ctrX',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(del.code, del.stdout).toBe(0);
    expect(del.stderr).toMatch(
      /left eth0 in .*: its host end veth[0-9a-f]{8} belongs to attachment ctr7\/eth0, not ctrX\/eth0/,
    );
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo', 'eth0']);
    const check = await fx.run({
      command: 'CHECK',
      conf: { ...c, prevResult: result },
      containerId: 'ctr7',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(check.code, check.stdout + check.stderr).toBe(0);
  });

  it('after the netns was deleted, with prevResult', async () => {
    const { ns, c, result } = await added();
    fx.deleteNetns(ns.name);
    const del = await fx.run({
      command: 'DEL',
      conf: { ...c, prevResult: result },
      containerId: 'ctr7',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(del.code, del.stdout).toBe(0);
    expectAllGone(c);
  });

  it('for an attachment that never existed', async () => {
    const ns = fx.netns();
    const c = conf({ ipMasq: true });
    const del = await fx.run({
      command: 'DEL',
      conf: c,
      containerId: 'nobody',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(del.code, del.stdout).toBe(0);
  });
});

describe('nothing left behind', () => {
  it('after the last DEL of the last network: no nft table, no registry dir; STATUS and CHECK create none', async () => {
    const nets = [
      conf(
        {
          name: `${fx.prefix}n1`,
          ipMasq: true,
          macspoofchk: true,
          ipam: fx.hostLocal([[{ subnet: '198.18.131.0/24' }]], {}, '1.1.0'),
        },
        '1.1.0',
      ),
      conf(
        {
          name: `${fx.prefix}n2`,
          ipMasq: true,
          macspoofchk: true,
          ipam: fx.hostLocal([[{ subnet: '198.18.133.0/24' }]], {}, '1.1.0'),
        },
        '1.1.0',
      ),
    ];
    const pods = nets.flatMap((c, i) => ['p', 'q'].map((id) => ({ c, id: `${id}${i}`, ns: fx.netns() })));
    const adds = [];
    for (const p of pods) {
      const r = await fx.run({
        command: 'ADD',
        conf: p.c,
        containerId: p.id,
        netns: p.ns.path,
        ifname: 'eth0',
      });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      adds.push(r.json);
    }
    expect(fx.tables().sort()).toEqual([`bridge ${fx.nftTable}`, `inet ${fx.nftTable}`]);
    expect(fx.runState()).toHaveLength(2);

    // the first network's last DEL takes only its own objects: the tables stay for the second
    for (const p of pods.slice(0, 2)) {
      const del = await fx.run({
        command: 'DEL',
        conf: p.c,
        containerId: p.id,
        netns: p.ns.path,
        ifname: 'eth0',
      });
      expect(del.code, del.stdout + del.stderr).toBe(0);
    }
    expect(fx.tables()).toHaveLength(2);
    expect(fx.nftList('inet')).toContain('q1/eth0');
    expect(fx.runState()).toHaveLength(1);
    for (const p of pods.slice(2)) {
      const del = await fx.run({
        command: 'DEL',
        conf: p.c,
        containerId: p.id,
        netns: p.ns.path,
        ifname: 'eth0',
      });
      expect(del.code, del.stdout + del.stderr).toBe(0);
    }
    expect(fx.tables()).toEqual([]);
    expect(fx.runState()).toEqual([]);

    const status = await fx.run({ command: 'STATUS', conf: nets[0]! });
    expect(status.code, status.stdout + status.stderr).toBe(0);
    const check = await fx.run({
      command: 'CHECK',
      conf: { ...nets[0]!, prevResult: adds[0] },
      containerId: 'p0',
      netns: pods[0]!.ns.path,
      ifname: 'eth0',
    });
    expect(check.code).not.toBe(0);
    expect(fx.tables()).toEqual([]);
  });
});

describe('IPAM routes', () => {
  it('a route whose destination has host bits is installed as its network (the reference fails: EINVAL)', async () => {
    const ns = fx.netns();
    const c = conf({
      ipam: fx.hostLocal([V4], {
        routes: [{ dst: '198.18.250.5/24' }, { dst: 'fd00:e::5/64' }],
      }),
    });
    const add = await fx.add(c, 'ctr5', ns.path);
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const dsts = ['-4', '-6'].flatMap((f) =>
      ipJson(['-n', ns.name, f, 'route', 'show']).map((r: any) => r.dst),
    );
    expect(dsts).toContain('198.18.250.0/24');
    expect(dsts).toContain('fd00:e::/64');
  });
});

describe('chained ADD', () => {
  it('with a prevResult, prints it plus its own interfaces, IPs (indices shifted) and routes', async () => {
    const ns = fx.netns();
    const prevResult = {
      cniVersion: '1.0.0',
      interfaces: [{ name: 'lo', sandbox: ns.path }],
      ips: [{ address: '127.0.0.1/8', interface: 0 }],
    };
    const c = conf({ isDefaultGateway: true, prevResult });
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr8',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code, add.stdout).toBe(0);
    const r = add.json;
    expect(r.interfaces.map((i: any) => i.name)).toEqual([
      'lo',
      c.bridge,
      expect.stringMatching(/^veth/),
      'eth0',
    ]);
    expect(r.ips).toEqual([
      { address: '127.0.0.1/8', interface: 0 },
      expect.objectContaining({ address: '198.18.130.2/24', interface: 3 }),
    ]);
    expect(r.routes).toEqual([{ dst: '0.0.0.0/0', gw: '198.18.130.1' }]);
  });
});

/**
 * Runs the plugin standalone with an `nft` on PATH that logs its arguments and runs the real one; returns
 * the result and the logged nft calls.
 */
async function withNftLog(
  run: (env: Record<string, string>) => ReturnType<typeof runPlugin>,
): Promise<{ r: Awaited<ReturnType<typeof runPlugin>>; calls: string[] }> {
  const bin = mkdtempSync(join(tmpdir(), `${fx.prefix}-nft-`));
  try {
    const log = join(bin, 'log');
    writeFileSync(log, '');
    const nft = sh('sh', ['-c', 'command -v nft']).trim();
    writeFileSync(join(bin, 'nft'), `#!/bin/sh\necho "$*" >> ${log}\nexec ${nft} "$@"\n`, { mode: 0o755 });
    const r = await run({ ...fx.env(), PATH: `${bin}:${process.env.PATH ?? '/usr/sbin:/usr/bin'}` });
    return { r, calls: readFileSync(log, 'utf8').split('\n').filter(Boolean) };
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
}

describe('nft processes', () => {
  // Each nft process is a fork of the caller (of berthd on the warm path: ~54 ms of it on a busy machine).
  // berth's listings, setup, element changes and teardown all go over netlink in-process.
  it.each([
    ['neither masquerade nor spoof check', {}, 'plain'],
    ['ipMasq (the last attachment: the table goes too)', { ipMasq: true }, 'masq'],
    ['macspoofchk', { macspoofchk: true }, 'spoof'],
    ['no record (nothing was added)', { ipMasq: true }, undefined],
  ])('DEL starts none: %s', async (_what, extra, containerId) => {
    const ns = fx.netns();
    const c = conf(extra);
    if (containerId !== undefined) {
      const add = await fx.run({ command: 'ADD', conf: c, containerId, netns: ns.path, ifname: 'eth0' });
      expect(add.code, add.stdout + add.stderr).toBe(0);
    }
    const { r: del, calls } = await withNftLog((env) =>
      runPlugin({
        command: 'DEL',
        conf: c,
        containerId: containerId ?? 'never-added',
        netns: ns.path,
        ifname: 'eth0',
        env,
      }),
    );
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(calls).toEqual([]);
    expect(registeredTags(fx.runDir, c.name as string)).toEqual([]);
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(fx.nftList('inet')).not.toContain(`${containerId}/eth0`);
    expect(fx.nftList('bridge')).not.toContain(`${containerId}/eth0`);
    if (containerId !== undefined) expect(fx.tables()).toEqual([]);
  });

  it("ADD starts none, the network's first (which creates its chains, sets and rules) or not", async () => {
    const c = conf({ ipMasq: true, macspoofchk: true });
    for (const containerId of ['first', 'second']) {
      const { r, calls } = await withNftLog((env) =>
        runPlugin({ command: 'ADD', conf: c, containerId, netns: fx.netns().path, ifname: 'eth0', env }),
      );
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(calls).toEqual([]);
      expect(fx.nftList('inet')).toContain(`${containerId}/eth0`);
      expect(fx.nftList('bridge')).toContain(`${containerId}/eth0`);
    }
    expect(fx.nftList('inet')).toContain('masquerade');
    expect(fx.nftList('bridge')).toContain('drop');
  });
});
