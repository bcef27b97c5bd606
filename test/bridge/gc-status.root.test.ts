// GC and STATUS (spec 1.1.0) with berth-ipam as the delegated IPAM.
import { existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { registeredTags } from '../../src/bridge/registry';
import { Fixture, WARM, ipJson, sh } from './harness';

const fx = new Fixture('g');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

function conf(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return fx.conf({
    cniVersion: '1.1.0',
    isGateway: true,
    ipMasq: true,
    macspoofchk: true,
    ipam: { type: 'berth-ipam', dataDir: fx.dataDir, ranges: [[{ subnet: '198.18.135.0/24' }]] },
    ...extra,
  });
}

/** A pod of `c` in a new namespace: its ADD succeeded. */
async function addPod(c: Record<string, unknown>, id: string, ifname = 'eth0') {
  const ns = fx.netns();
  const r = await fx.run({ command: 'ADD', conf: c, containerId: id, netns: ns.path, ifname });
  expect(r.code, r.stdout + r.stderr).toBe(0);
  return { id, ns, result: r.json };
}

async function threePods(c: Record<string, unknown>) {
  const pods = [];
  for (const id of ['podA', 'podB', 'podC']) pods.push(await addPod(c, id));
  expect(fx.ports(c.bridge as string)).toHaveLength(3);
  return pods;
}

describe('GC', () => {
  it.each([
    ['cni.dev/valid-attachments', 'cni.dev/valid-attachments'],
    ['the legacy cni.dev/attachments', 'cni.dev/attachments'],
  ])('keeps what %s lists, removes the rest (host veths, nft entries, leases)', async (_what, key) => {
    const c = conf();
    const [a] = await threePods(c);
    // ports berth did not create are never touched: one without an alias, one (an operator's uplink) whose
    // alias has the shape of berth's `<containerID>/<ifname>` tag
    const foreign = `${fx.prefix}f`;
    sh('ip', ['link', 'add', foreign, 'type', 'veth', 'peer', 'name', `${foreign}p`]);
    sh('ip', ['link', 'set', foreign, 'master', c.bridge as string]);
    const uplink = `${fx.prefix}u`;
    sh('ip', ['link', 'add', uplink, 'type', 'veth', 'peer', 'name', `${uplink}p`]);
    sh('ip', ['link', 'set', uplink, 'master', c.bridge as string, 'alias', 'uplink/eth1']);

    const gc = await fx.run({
      command: 'GC',
      conf: { ...c, [key]: [{ containerID: 'podA', ifname: 'eth0' }] },
    });
    expect(gc.code, gc.stdout + gc.stderr).toBe(0);
    const ports = fx.ports(c.bridge as string).map((l: any) => l.ifname);
    expect(ports.sort()).toEqual([a!.result.interfaces[1].name, foreign, uplink].sort());
    expect(fx.leases(c.name as string)).toEqual(['198.18.135.2']);
    const inet = fx.nftList('inet');
    expect(inet).toContain('podA/eth0');
    expect(inet).not.toMatch(/podB|podC/);
    expect(fx.nftList('bridge')).not.toMatch(/podB|podC/);
    const check = await fx.run({
      command: 'CHECK',
      conf: { ...c, prevResult: a!.result },
      containerId: 'podA',
      netns: a!.ns.path,
      ifname: 'eth0',
    });
    expect(check.code, check.stdout).toBe(0);
    sh('ip', ['link', 'del', foreign]);
    sh('ip', ['link', 'del', uplink]);
  });

  it('without a list, nothing is valid: everything of the network goes', async () => {
    const c = conf();
    await threePods(c);
    const gc = await fx.run({ command: 'GC', conf: c });
    expect(gc.code, gc.stdout).toBe(0);
    // idempotent: a second GC finds nothing and succeeds
    expect((await fx.run({ command: 'GC', conf: c })).code).toBe(0);
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(fx.leases(c.name as string)).toEqual([]);
    expect(fx.nftList('inet')).not.toContain('pod');
    expect(fx.nftList('bridge')).not.toContain('pod');
    // the last attachments of the only network: both tables and the registry dir go too
    expect(fx.tables()).toEqual([]);
    expect(fx.runState()).toEqual([]);
  });

  it("a pod whose record was lost is left whole (it may be another network's), with a line; its DEL removes it", async () => {
    const c = conf();
    const [a] = await threePods(c);
    const [record] = readdirSync(join(fx.runDir, 'bridge')).filter((d) => d.endsWith('.attachments'));
    const dir = join(fx.runDir, 'bridge', record!);
    const aFile = readdirSync(dir).find((f) => readFileSync(join(dir, f), 'utf8').startsWith('podA/eth0'));
    rmSync(join(dir, aFile!));
    const gc = await fx.run({ command: 'GC', conf: c });
    expect(gc.code, gc.stdout).toBe(0);
    expect(gc.stderr).toMatch(
      /left host veth veth[0-9a-f]{8} \(podA\/eth0\) and its attachment's state: no record/,
    );
    expect(fx.ports(c.bridge as string).map((l: any) => l.ifname)).toEqual([a!.result.interfaces[1].name]);
    expect(fx.leases(c.name as string)).toEqual(['198.18.135.2']);
    expect(fx.nftList('inet')).toContain('podA/eth0');
    expect(fx.nftList('inet')).not.toMatch(/podB|podC/);
    const del = await fx.run({
      command: 'DEL',
      conf: c,
      containerId: 'podA',
      netns: a!.ns.path,
      ifname: 'eth0',
    });
    expect(del.code, del.stdout).toBe(0);
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(fx.leases(c.name as string)).toEqual([]);
    expect(fx.tables()).toEqual([]);
  });

  it("records lost on a shared bridge: GC of one network leaves the other's pod working", async () => {
    const bridge = fx.bridge();
    const net1 = conf({ name: `${fx.prefix}n1`, bridge });
    const net2 = conf({
      name: `${fx.prefix}n2`,
      bridge,
      isGateway: false,
      ipam: { type: 'berth-ipam', dataDir: fx.dataDir, ranges: [[{ subnet: '198.18.136.0/24' }]] },
    });
    await addPod(net1, 'podA');
    const f = await addPod(net2, 'podF');
    rmSync(join(fx.runDir, 'bridge'), { recursive: true, force: true });
    const gc = await fx.run({
      command: 'GC',
      conf: { ...net1, 'cni.dev/valid-attachments': [{ containerID: 'podA', ifname: 'eth0' }] },
    });
    expect(gc.code, gc.stdout + gc.stderr).toBe(0);
    expect(fx.ports(bridge)).toHaveLength(2);
    expect(fx.leases(net2.name as string)).toEqual(['198.18.136.2']);
    const check = await fx.run({
      command: 'CHECK',
      conf: { ...net2, prevResult: f.result },
      containerId: 'podF',
      netns: f.ns.path,
      ifname: 'eth0',
    });
    expect(check.code, check.stdout + check.stderr).toBe(0);
  });

  it("the bridge deleted: a stale pod's veth still goes with its record", async () => {
    const c = conf();
    const [a, b] = await threePods(c);
    sh('ip', ['link', 'del', c.bridge as string]);
    const gc = await fx.run({
      command: 'GC',
      conf: { ...c, 'cni.dev/valid-attachments': [{ containerID: 'podB', ifname: 'eth0' }] },
    });
    expect(gc.code, gc.stdout + gc.stderr).toBe(0);
    const left = (ns: string): string[] => ipJson(['-n', ns, 'link', 'show']).map((l: any) => l.ifname);
    expect(left(a!.ns.name)).toEqual(['lo']);
    expect(left(b!.ns.name)).toEqual(['lo', 'eth0']);
    expect(registeredTags(fx.runDir, c.name as string)).toEqual(['podB/eth0']);
    expect(fx.leases(c.name as string)).toEqual(['198.18.135.3']);
  });

  it('leaves other networks on other bridges alone', async () => {
    const c1 = conf();
    const c2 = conf({
      name: `${fx.prefix}other`,
      ipam: { type: 'berth-ipam', dataDir: fx.dataDir, ranges: [[{ subnet: '198.18.136.0/24' }]] },
    });
    const ns = fx.netns();
    expect(
      (await fx.run({ command: 'ADD', conf: c2, containerId: 'podX', netns: ns.path, ifname: 'eth0' })).code,
    ).toBe(0);
    expect((await fx.run({ command: 'GC', conf: c1 })).code).toBe(0);
    expect(fx.ports(c2.bridge as string)).toHaveLength(1);
    expect(fx.leases(c2.name as string)).toEqual(['198.18.136.2']);
    expect(fx.nftList('inet')).toContain('podX/eth0');
    // podX's network keeps the tables when the other's GC finds them otherwise empty
    expect(fx.tables()).toHaveLength(2);
    expect(fx.runState()).toHaveLength(1);
  });

  it('two networks sharing one bridge: GC of one never takes the ports of the other', async () => {
    const bridge = fx.bridge();
    const netA = conf({ name: `${fx.prefix}na`, bridge, ipam: {}, isGateway: false, ipMasq: false });
    const netB = conf({ name: `${fx.prefix}nb`, bridge, ipam: {}, isGateway: false, ipMasq: false });
    await addPod(netA, 'podA');
    const b = await addPod(netB, 'podB', 'eth1');
    expect((await fx.run({ command: 'GC', conf: netA })).code).toBe(0);
    expect(fx.ports(bridge).map((l: any) => l.ifname)).toEqual([b.result.interfaces[1].name]);
    expect((await fx.run({ command: 'GC', conf: netB })).code).toBe(0);
    expect(fx.ports(bridge)).toEqual([]);
  });

  it('reports a failing IPAM GC but still cleans up its own state', async () => {
    const c = conf();
    await threePods(c);
    const broken = { ...c, ipam: { type: `${fx.prefix}-missing-ipam` } };
    const gc = await fx.run({ command: 'GC', conf: broken });
    expect(gc.code).not.toBe(0);
    expect(gc.json.details).toContain('IPAM GC');
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(fx.nftList('inet')).not.toContain('pod');
  });
});

describe('STATUS', () => {
  it('succeeds when an ADD could be served', async () => {
    const r = await fx.run({ command: 'STATUS', conf: conf() });
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toBe('');
  });

  it('code 50 when the bridge name is taken by something that is not a bridge', async () => {
    const c = conf();
    sh('ip', ['link', 'add', c.bridge as string, 'type', 'veth', 'peer', 'name', `${c.bridge as string}p`]);
    const r = await fx.run({ command: 'STATUS', conf: c });
    expect(r.code).not.toBe(0);
    expect(r.json.code).toBe(50);
    expect(r.json.msg).toContain('not a bridge');
  });

  it('code 50 when IPAM cannot serve', async () => {
    const r = await fx.run({
      command: 'STATUS',
      conf: conf({ ipam: { type: `${fx.prefix}-missing-ipam` } }),
    });
    expect(r.json.code).toBe(50);
    expect(r.json.msg).toContain('IPAM');
  });

  // A PATH holding node but no nft binary: ADD and DEL talk nftables over netlink in-process (nft -j is
  // only the fallback for tables they cannot express), so STATUS must not call the network unready. It
  // used to answer 50 here, from an `nft list tables` process, while an ADD would have worked.
  const nodeDir = dirname(process.execPath);
  it.skipIf(WARM || existsSync(join(nodeDir, 'nft')))(
    'ipMasq without an nft binary on PATH: STATUS 0 (nftables is reached over netlink)',
    async () => {
      const r = await fx.run({ command: 'STATUS', conf: conf(), env: { PATH: nodeDir } });
      expect(r.code, r.stdout).toBe(0);
      const l2 = await fx.run({
        command: 'STATUS',
        conf: conf({ ipMasq: false, macspoofchk: false }),
        env: { PATH: nodeDir },
      });
      expect(l2.code, l2.stdout).toBe(0);
    },
  );

  it('is refused for configs older than 1.1.0 (code 1)', async () => {
    const r = await fx.run({ command: 'STATUS', conf: conf({ cniVersion: '1.0.0' }) });
    expect(r.json.code).toBe(1);
  });
});

describe('no bridge state before ADD', () => {
  it('GC on a network that never had a pod succeeds', async () => {
    const c = conf();
    const r = await fx.run({ command: 'GC', conf: c });
    expect(r.code, r.stdout).toBe(0);
    expect(ipJson(['link', 'show']).some((l: any) => l.ifname === c.bridge)).toBe(false);
  });
});
