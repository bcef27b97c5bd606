// A node switched from the reference bridge to berth-bridge: pods the reference attached with ipMasq have its
// masquerade (iptables chains CNI-<hash> in the nat tables, or rules in the nftables backend's table). berth's
// DEL of such a pod, and berth's GC, remove it; nothing else in those tables is touched.
import { execFileSync } from 'node:child_process';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  referenceChainName,
  referenceIptablesComment,
  referenceNftPrefix,
} from '../../src/bridge/reference-masquerade';
import { Fixture, sh, trySh } from './harness';

const fx = new Fixture('x');
const REFERENCE = '/usr/lib/cni/bridge';
const NETWORK = `${fx.prefix}net`;
/** Chains and rules a test made outside any plugin, removed after it whatever happened. */
const made: Array<() => void> = [];

afterEach(() => {
  for (const undo of made.splice(0).reverse()) undo();
  removeReferenceChains();
  fx.cleanup();
});
afterAll(() => fx.dispose());

/** `iptables -S` of the nat table, both families: what the reference's own tools see. */
function natRules(): string {
  return `${sh('iptables', ['-t', 'nat', '-S'])}${sh('ip6tables', ['-t', 'nat', '-S'])}`;
}

/** Whatever a failed test left of this network's CNI- chains (this fixture's network names only). */
function removeReferenceChains(): void {
  for (const ipt of ['iptables', 'ip6tables']) {
    const rules = trySh(ipt, ['-t', 'nat', '-S']) ?? '';
    const ours = new Set(
      ['c1', 'c2', 'c3', 'other'].flatMap((id) =>
        [NETWORK, `${NETWORK}b`].map((n) => referenceChainName(n, id)),
      ),
    );
    for (const line of rules.split('\n')) {
      const m = /^-A POSTROUTING (.* -j (CNI-[0-9a-f]{24}))$/.exec(line);
      if (m !== null && ours.has(m[2]!)) trySh('sh', ['-c', `${ipt} -t nat -D POSTROUTING ${m[1]}`]);
    }
    for (const chain of ours) {
      trySh(ipt, ['-t', 'nat', '-F', chain]);
      trySh(ipt, ['-t', 'nat', '-X', chain]);
    }
  }
}

/** The network as the reference ran it (`bridge`) and as berth runs it; GC needs spec 1.1.0 (its IPAM too). */
function conf(type: 'bridge' | 'berth-bridge', bridge: string, version = '1.0.0') {
  return {
    cniVersion: version,
    name: NETWORK,
    type,
    bridge,
    isGateway: true,
    ipMasq: true,
    ipam: fx.hostLocal([[{ subnet: '198.18.141.0/24' }], [{ subnet: 'fd00:d::/64' }]], {}, version),
  };
}

/** berth-bridge's DEL of a pod, as the runtime sends it after the switch. */
const berthDel = (bridge: string, containerId: string, netns: string | undefined) =>
  fx.run({ command: 'DEL', conf: conf('berth-bridge', bridge), containerId, netns, ifname: 'eth0' });

/** berth-bridge's GC (spec 1.1.0) with one valid attachment; it must succeed. */
async function berthGc(bridge: string, valid: { containerID: string; ifname: string }): Promise<void> {
  const c = { ...conf('berth-bridge', bridge, '1.1.0'), 'cni.dev/valid-attachments': [valid] };
  const gc = await fx.run({ command: 'GC', conf: c });
  expect(gc.code, gc.stdout + gc.stderr).toBe(0);
}

/** Pods attached by the reference bridge, with its masquerade; returns their netns paths by container ID. */
async function referencePods(bridge: string, ids: string[]): Promise<Record<string, string>> {
  const netns: Record<string, string> = {};
  for (const id of ids) {
    const ns = fx.netns();
    const add = await fx.run({
      plugin: REFERENCE,
      command: 'ADD',
      conf: conf('bridge', bridge),
      containerId: id,
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code, add.stdout + add.stderr).toBe(0);
    netns[id] = ns.path;
    // Both families: a chain with its two rules, and the jump from POSTROUTING.
    const chain = referenceChainName(NETWORK, id);
    expect(
      natRules()
        .split('\n')
        .filter((l) => l.includes(chain)),
    ).toHaveLength(2 * 4);
  }
  return netns;
}

describe("berth-bridge removes the reference bridge's masquerade", () => {
  it('DEL of a pod the reference attached: its chains and jumps go, in both families, and nothing else', async () => {
    const br = fx.bridge();
    const netns = await referencePods(br, ['c1', 'c2']);
    const before = natRules();
    const c1 = referenceChainName(NETWORK, 'c1');
    const c2 = referenceChainName(NETWORK, 'c2');

    const del = await berthDel(br, 'c1', netns.c1);
    expect(del.code, del.stdout + del.stderr).toBe(0);
    const after = natRules();
    expect(after).not.toContain(c1);
    // c2's chains and jumps are untouched: the listing is the one before, less c1's lines.
    expect(after.split('\n')).toEqual(before.split('\n').filter((l) => !l.includes(c1)));
    expect(after.split('\n').filter((l) => l.includes(c2))).toHaveLength(8);
    expect(after).toContain(`--comment "${referenceIptablesComment(NETWORK, 'c2').replace(/"/g, '\\"')}"`);
    expect(fx.leases(NETWORK)).toHaveLength(2);

    // A repeated DEL (the runtime retries) finds nothing and succeeds.
    const again = await berthDel(br, 'c1', netns.c1);
    expect(again.code, again.stdout).toBe(0);
    expect(natRules()).toBe(after);

    // The pod's namespace gone before its DEL: the reference's own teardown needs the pod's addresses and
    // leaks the chain then; berth's finds it by name.
    fx.deleteNetns(netns.c2!.split('/').pop()!);
    const gone = await berthDel(br, 'c2', netns.c2);
    expect(gone.code, gone.stdout + gone.stderr).toBe(0);
    expect(natRules()).not.toMatch(new RegExp(`${c1}|${c2}`));
    expect(fx.leases(NETWORK)).toEqual([]);
  });

  it("CHECK of a pod the reference attached passes on its masquerade, and fails once a family's is gone", async () => {
    const br = fx.bridge();
    const ns = fx.netns();
    const add = await fx.run({
      plugin: REFERENCE,
      command: 'ADD',
      conf: conf('bridge', br),
      containerId: 'c1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code, add.stdout + add.stderr).toBe(0);
    const check = () =>
      fx.run({
        command: 'CHECK',
        conf: { ...conf('berth-bridge', br), prevResult: add.json },
        containerId: 'c1',
        netns: ns.path,
        ifname: 'eth0',
      });
    const ok = await check();
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    // The IPv4 jump gone (the chain left): the IPv4 address has no masquerade any more.
    const chain = referenceChainName(NETWORK, 'c1');
    const jump = sh('iptables', ['-t', 'nat', '-S', 'POSTROUTING'])
      .split('\n')
      .find((l) => l.endsWith(`-j ${chain}`))!;
    sh('sh', ['-c', `iptables -t nat ${jump.replace(/^-A /, '-D ')}`]);
    const drift = await check();
    expect(drift.code).not.toBe(0);
    expect(drift.json.msg).toMatch(/masquerade entry for 198\.18\.141\.\d+ \(c1\/eth0\) is missing/);
  });

  it("the reference's macspoofchk (both of its layouts): CHECK passes on it, DEL removes it, nothing else", async () => {
    const br = fx.bridge();
    const ns = fx.netns();
    const spoofConf = (type: 'bridge' | 'berth-bridge') => ({ ...conf(type, br), macspoofchk: true });
    // c1 by Debian's reference (plugins 1.1.1: table bridge nat, base chain PREROUTING)
    const add = await fx.run({
      plugin: REFERENCE,
      command: 'ADD',
      conf: spoofConf('bridge'),
      containerId: 'c1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code, add.stdout + add.stderr).toBe(0);
    made.push(() => {
      for (const c of ['cni-br-iface-c1-eth0', 'cni-br-iface-c1-eth0-mac']) {
        trySh('nft', ['flush', 'chain', 'bridge', 'nat', c]);
        trySh('nft', ['delete', 'chain', 'bridge', 'nat', c]);
      }
    });
    const natBridge = () => trySh('nft', ['list', 'table', 'bridge', 'nat']) ?? '';
    expect(natBridge()).toMatch(/jump cni-br-iface-c1-eth0 comment "macspoofchk-c1-eth0"/);
    // c2 as plugins 1.5+ leave it (knftables: table bridge cni_spoofcheck, base chain prerouting), and
    // another pod's (c3) there, which stays
    made.push(() => trySh('nft', ['delete', 'table', 'bridge', 'cni_spoofcheck']));
    const knft = (id: string, port: string) => `
      add chain bridge cni_spoofcheck cni-br-iface-${id}-eth0
      add chain bridge cni_spoofcheck cni-br-iface-${id}-eth0-mac
      add rule bridge cni_spoofcheck prerouting iifname "${port}" jump cni-br-iface-${id}-eth0 comment "macspoofchk-${id}-eth0"
      add rule bridge cni_spoofcheck cni-br-iface-${id}-eth0 jump cni-br-iface-${id}-eth0-mac comment "macspoofchk-${id}-eth0"
      add rule bridge cni_spoofcheck cni-br-iface-${id}-eth0-mac ether saddr 02:00:00:00:00:01 return comment "macspoofchk-${id}-eth0"
      add rule bridge cni_spoofcheck cni-br-iface-${id}-eth0-mac drop comment "macspoofchk-${id}-eth0"`;
    execFileSync('nft', ['-f', '-'], {
      input: `add table bridge cni_spoofcheck
      add chain bridge cni_spoofcheck prerouting { type filter hook prerouting priority -300; policy accept; }
      ${knft('c2', 'vethc2')}${knft('c3', 'vethc3')}\n`,
    });
    const knftables = () => trySh('nft', ['list', 'table', 'bridge', 'cni_spoofcheck']) ?? '';
    const check = await fx.run({
      command: 'CHECK',
      conf: { ...spoofConf('berth-bridge'), prevResult: add.json },
      containerId: 'c1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(check.code, check.stdout + check.stderr).toBe(0);
    const del = await fx.run({
      command: 'DEL',
      conf: spoofConf('berth-bridge'),
      containerId: 'c1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(natBridge()).not.toMatch(/c1-eth0/);
    expect(natBridge()).toMatch(/chain PREROUTING/); // the reference's own table and base chain stay
    expect(knftables()).toMatch(/c2-eth0/);
    // The same network config as the pod's (the reference's spoof check is looked for with macspoofchk).
    const del2 = await fx.run({
      command: 'DEL',
      conf: spoofConf('berth-bridge'),
      containerId: 'c2',
      ifname: 'eth0',
    });
    expect(del2.code, del2.stdout + del2.stderr).toBe(0);
    expect(knftables()).not.toMatch(/c2-eth0/);
    expect(knftables().match(/macspoofchk-c3-eth0/g)).toHaveLength(4);
  });

  it('a chain left without its jump (a teardown cut short) goes at DEL too', async () => {
    const br = fx.bridge();
    const netns = await referencePods(br, ['c1']);
    const chain = referenceChainName(NETWORK, 'c1');
    for (const ipt of ['iptables', 'ip6tables']) {
      const jump = sh(ipt, ['-t', 'nat', '-S', 'POSTROUTING'])
        .split('\n')
        .find((l) => l.endsWith(`-j ${chain}`))!;
      sh('sh', ['-c', `${ipt} -t nat ${jump.replace(/^-A /, '-D ')}`]);
    }
    expect(
      natRules()
        .split('\n')
        .filter((l) => l.includes(chain)),
    ).toHaveLength(6);
    const del = await berthDel(br, 'c1', netns.c1);
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(natRules()).not.toContain(chain);
  });

  it("GC removes the chains of this network's containers the runtime no longer lists, and only those", async () => {
    const br = fx.bridge();
    await referencePods(br, ['c1', 'c2', 'c3']);
    // Not the reference's, or another network's: an operator's rule, and a chain with another network's
    // comment (its name computed for that network).
    sh('iptables', ['-t', 'nat', '-A', 'POSTROUTING', '-s', '198.18.142.0/24', '-j', 'MASQUERADE']);
    made.push(() =>
      trySh('iptables', ['-t', 'nat', '-D', 'POSTROUTING', '-s', '198.18.142.0/24', '-j', 'MASQUERADE']),
    );
    const other = referenceChainName(`${NETWORK}b`, 'other');
    const otherComment = referenceIptablesComment(`${NETWORK}b`, 'other');
    sh('iptables', ['-t', 'nat', '-N', other]);
    sh('iptables', ['-t', 'nat', '-A', other, '-j', 'MASQUERADE']);
    const jump = [
      'POSTROUTING',
      '-s',
      '198.18.142.9',
      '-j',
      other,
      '-m',
      'comment',
      '--comment',
      otherComment,
    ];
    sh('iptables', ['-t', 'nat', '-A', ...jump]);
    const before = natRules();

    await berthGc(br, { containerID: 'c2', ifname: 'eth0' });
    const gone = [referenceChainName(NETWORK, 'c1'), referenceChainName(NETWORK, 'c3')];
    expect(natRules().split('\n')).toEqual(
      before.split('\n').filter((l) => !gone.some((chain) => l.includes(chain))),
    );
    expect(natRules()).toContain(referenceChainName(NETWORK, 'c2'));
    expect(natRules()).toContain(other);
    expect(natRules()).toContain('-A POSTROUTING -s 198.18.142.0/24 -j MASQUERADE');
  });

  it("a chain an operator's rule still jumps to stays (EBUSY); everything else still goes, at DEL and GC", async () => {
    const br = fx.bridge();
    const netns = await referencePods(br, ['c1', 'c2', 'c3']);
    const [c1, c2, c3] = ['c1', 'c2', 'c3'].map((id) => referenceChainName(NETWORK, id));
    const operator = `${fx.prefix}OP`;
    const pin = (chain: string) => {
      sh('iptables', ['-t', 'nat', '-A', operator, '-j', chain]);
      made.push(() => trySh('iptables', ['-t', 'nat', '-D', operator, '-j', chain]));
    };
    sh('iptables', ['-t', 'nat', '-N', operator]);
    made.push(() => {
      trySh('iptables', ['-t', 'nat', '-F', operator]);
      trySh('iptables', ['-t', 'nat', '-X', operator]);
    });
    pin(c1!);
    pin(c2!);
    const lines = (chain: string, ipt: string) =>
      sh(ipt, ['-t', 'nat', '-S'])
        .split('\n')
        .filter((l) => l.startsWith(`-N ${chain}`)).length;

    const del = await berthDel(br, 'c1', netns.c1);
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(del.stderr).toMatch(/rules could not all be removed: .*ip nat CNI-[0-9a-f]{24}.*EBUSY/);
    // The IPv4 chain stays (the operator's rule needs it); the IPv6 one went all the same.
    expect([lines(c1!, 'iptables'), lines(c1!, 'ip6tables')]).toEqual([1, 0]);

    // GC, nothing valid: c2's IPv4 chain is pinned too; c3's chains and c2's IPv6 one go all the same, and GC
    // reports the one that could not.
    const gc = await fx.run({ command: 'GC', conf: conf('berth-bridge', br, '1.1.0') });
    expect(gc.code).not.toBe(0);
    expect(gc.stdout).toContain(`ip nat ${c2}`);
    expect(gc.stdout).toContain('EBUSY');
    expect([lines(c2!, 'iptables'), lines(c2!, 'ip6tables')]).toEqual([1, 0]);
    expect([lines(c3!, 'iptables'), lines(c3!, 'ip6tables')]).toEqual([0, 0]);
  });

  it('DEL and GC of the same network at once: both succeed, nothing is left', async () => {
    const br = fx.bridge();
    const netns = await referencePods(br, ['c1', 'c2', 'c3']);
    const [del, gc] = await Promise.all([
      berthDel(br, 'c1', netns.c1),
      fx.run({ command: 'GC', conf: conf('berth-bridge', br, '1.1.0') }),
    ]);
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(del.stderr).not.toContain('could not');
    expect(gc.code, gc.stdout + gc.stderr).toBe(0);
    expect(natRules()).not.toMatch(/CNI-/);
  });

  it("the nftables backend's rules (plugins 1.5+): DEL and GC remove this attachment's, by comment", async () => {
    // Made by hand in the reference's layout (Debian's reference plugins predate that backend).
    const table = 'inet cni_plugins_masquerade';
    const existed = trySh('nft', ['list', 'table', ...table.split(' ')]) !== undefined;
    if (!existed) made.push(() => trySh('nft', ['delete', 'table', ...table.split(' ')]));
    const comment = (id: string, ifname = 'eth0') =>
      `${referenceNftPrefix(NETWORK, ifname, id)}, net: ${NETWORK}, if: ${ifname}, id: ${id}`;
    const rules = [
      ['c1', '198.18.141.2', comment('c1')],
      ['c1', '198.18.141.3', comment('c1')],
      ['c2', '198.18.141.4', comment('c2')],
      ['c1 on eth1', '198.18.141.5', comment('c1', 'eth1')],
      ['foreign', '198.18.141.6', 'an operator rule'],
    ];
    const script = [
      `add table ${table}`,
      `add chain ${table} masq_checks`,
      ...rules.map(
        ([, ip, c]) =>
          `add rule ${table} masq_checks ip saddr ${ip} ip daddr != 198.18.141.0/24 masquerade comment "${c}"`,
      ),
    ].join('\n');
    sh('sh', ['-c', `nft -f - <<'EOF'\n${script}\nEOF`]);
    made.push(() => {
      const listing = trySh('nft', ['-a', 'list', 'chain', ...table.split(' '), 'masq_checks']) ?? '';
      for (const m of listing.matchAll(/comment "([^"]*)" # handle (\d+)/g))
        if (rules.some(([, , c]) => c === m[1]))
          trySh('nft', ['delete', 'rule', ...table.split(' '), 'masq_checks', 'handle', m[2]!]);
    });
    const listed = () => sh('nft', ['list', 'chain', ...table.split(' '), 'masq_checks']);

    const br = fx.bridge();
    const del = await berthDel(br, 'c1', '');
    expect(del.code, del.stdout + del.stderr).toBe(0);
    const afterDel = listed();
    expect(afterDel).not.toContain('198.18.141.2 ');
    expect(afterDel).not.toContain('198.18.141.3 ');
    for (const ip of ['198.18.141.4', '198.18.141.5', '198.18.141.6']) expect(afterDel).toContain(`${ip} `);

    await berthGc(br, { containerID: 'c1', ifname: 'eth1' });
    const afterGc = listed();
    expect(afterGc).not.toContain('198.18.141.4 ');
    expect(afterGc).toContain('198.18.141.5 ');
    expect(afterGc).toContain('198.18.141.6 ');
  });
});
