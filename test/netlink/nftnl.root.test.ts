// nftables over netlink (src/netlink/nftnl.ts) against the kernel, in a private namespace: the table and
// sets are made by `nft` the way berth's masquerade and spoof check make them, elements go in and out
// through our batches, and `nft -j list` (run under `ip netns exec`) is the observer.
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { toKernelCniError } from '../../src/netlink/errors';
import { listTable, nftApply } from '../../src/netlink/nftables';
import { applyNft, nfnlApply, nfnlListTable, readNftTable } from '../../src/netlink/nftnl';
import { NftnlUnsupported } from '../../src/netlink/nftnl-codec';
import { REPO } from '../bridge/harness';
import { berthSetupCommands } from './berth-nft-setup';
import type { KernelFixture, Place } from './kernel-fixture';
import { observe, observeJson, rejection, trySh, useKernelFixture } from './kernel-fixture';

const kernel = useKernelFixture();

/** A pod namespace holding `inet <t>` and `bridge <t>` with berth's set types, made by nft itself. */
function setup(): { fx: KernelFixture; pod: Place; table: string; opts: { netns: string } } {
  const fx = kernel.fresh();
  const pod = fx.addNetns('p');
  const table = `${fx.prefix}t`;
  const script = [
    `table inet ${table} {`,
    '  set c4 { type ipv4_addr; }',
    '  set c6 { type ipv6_addr; }',
    '  set s4 { type ipv4_addr . ipv4_addr; flags interval; }',
    '  set s6 { type ipv6_addr . ipv6_addr; flags interval; }',
    '  chain masq { masquerade; }',
    '  chain postrouting {',
    '    type nat hook postrouting priority 100; policy accept;',
    '    ip saddr @c4 jump masq comment "berth masquerade: n"',
    '  }',
    '}',
    `table bridge ${table} {`,
    '  set p { type ifname; }',
    '  set a { type ifname . ether_addr; }',
    '  chain prerouting {',
    '    type filter hook prerouting priority -300; policy accept;',
    '    iifname @p iifname . ether saddr != @a drop',
    '  }',
    '}',
  ].join('\n');
  observe(pod, 'sh', ['-c', `printf '%s\\n' "$1" | nft -f -`, 'sh', script]);
  return { fx, pod, table, opts: { netns: pod.path! } };
}

function nftSet(pod: Place, family: string, table: string, name: string): unknown[] {
  const out = observeJson<{ nftables: any[] }>(pod, 'nft', ['-j', 'list', 'set', family, table, name]);
  return out.nftables.find((o) => o.set !== undefined)?.set.elem ?? [];
}

const add = (family: string, table: string, name: string, elem: unknown[]) => ({
  add: { element: { family, table, name, elem } },
});
const del = (family: string, table: string, name: string, elem: unknown[]) => ({
  delete: { element: { family, table, name, elem } },
});

describe('nftables over netlink', () => {
  it('400 commands in one transaction (a GC of stale elements): applied, and the process survives', () => {
    // One command per element, as GC sends them. With an ACK asked for each, 400 ACKs queued in one sendmsg
    // overflowed the socket's receive buffer, and the netlink library aborted the process on ENOBUFS: run
    // in a child, so that the old code fails this test instead of killing vitest.
    const { pod, table, opts } = setup();
    const addrs = Array.from({ length: 400 }, (_, i) => `198.18.${100 + (i >> 8)}.${i & 255}`);
    const run = (commands: unknown[]) =>
      spawnSync(
        process.execPath,
        [
          '-e',
          `require(${JSON.stringify(join(REPO, 'dist/netlink/nftnl.js'))}).nfnlApply(JSON.parse(process.argv[1]), JSON.parse(process.argv[2])).then(() => console.log('applied'), (e) => { console.error(String(e)); process.exit(3); })`,
          JSON.stringify(commands),
          JSON.stringify(opts),
        ],
        { encoding: 'utf8' },
      );
    const added = run(addrs.map((a) => add('inet', table, 'c4', [a])));
    expect({ status: added.status, signal: added.signal, err: added.stderr }).toEqual({
      status: 0,
      signal: null,
      err: '',
    });
    expect(nftSet(pod, 'inet', table, 'c4')).toHaveLength(400);
    const removed = run(addrs.map((a) => del('inet', table, 'c4', [a])));
    expect({ status: removed.status, signal: removed.signal }).toEqual({ status: 0, signal: null });
    expect(nftSet(pod, 'inet', table, 'c4')).toHaveLength(0);
    // A failing command in the middle still fails the whole transaction, and names itself.
    const bad = run([
      add('inet', table, 'c4', ['198.18.9.1']),
      del('inet', table, 'c4', ['198.18.9.2']),
      add('inet', table, 'c4', ['198.18.9.3']),
    ]);
    expect(bad.status).toBe(3);
    expect(bad.stderr).toMatch(/delete element inet \S+ c4: ENOENT/);
    expect(nftSet(pod, 'inet', table, 'c4')).toHaveLength(0);
  });

  it('adds tagged elements to every kind of berth set and deletes them again (nft -j list set agrees)', async () => {
    const { pod, table, opts } = setup();
    const pair4 = { concat: ['198.18.0.5', { prefix: { addr: '198.18.0.0', len: 24 } }] };
    const pair6 = { concat: ['fd00:b15::5', { prefix: { addr: 'fd00:b15::', len: 64 } }] };
    const mac = { concat: ['veth5', '0a:58:c6:12:00:05'] };
    const tagged = (val: unknown) => [{ elem: { val, comment: 'c5/eth0' } }];
    await nfnlApply(
      [
        add('inet', table, 'c4', tagged('198.18.0.5')),
        add('inet', table, 'c6', tagged('fd00:b15::5')),
        add('inet', table, 's4', tagged(pair4)),
        add('inet', table, 's6', tagged(pair6)),
      ],
      opts,
    );
    await nfnlApply(
      [add('bridge', table, 'p', tagged('veth5')), add('bridge', table, 'a', tagged(mac))],
      opts,
    );
    expect(nftSet(pod, 'inet', table, 'c4')).toEqual(tagged('198.18.0.5'));
    expect(nftSet(pod, 'inet', table, 'c6')).toEqual(tagged('fd00:b15::5'));
    expect(nftSet(pod, 'inet', table, 's4')).toEqual(tagged(pair4));
    expect(nftSet(pod, 'inet', table, 's6')).toEqual(tagged(pair6));
    expect(nftSet(pod, 'bridge', table, 'p')).toEqual(tagged('veth5'));
    expect(nftSet(pod, 'bridge', table, 'a')).toEqual(tagged(mac));
    // Only in the namespace we asked for.
    expect(trySh('nft', ['list', 'table', 'inet', table])).toBeUndefined();

    // `add element` semantics: an element already there is no error and keeps its comment.
    await nfnlApply(
      [add('inet', table, 'c4', [{ elem: { val: '198.18.0.5', comment: 'other/eth0' } }])],
      opts,
    );
    expect(nftSet(pod, 'inet', table, 'c4')).toEqual(tagged('198.18.0.5'));

    await nfnlApply(
      [
        del('inet', table, 'c4', ['198.18.0.5']),
        del('inet', table, 's4', [pair4]),
        del('inet', table, 's6', [pair6]),
        del('bridge', table, 'a', [mac]),
      ],
      opts,
    );
    expect(nftSet(pod, 'inet', table, 'c4')).toEqual([]);
    expect(nftSet(pod, 'inet', table, 's4')).toEqual([]);
    expect(nftSet(pod, 'inet', table, 's6')).toEqual([]);
    expect(nftSet(pod, 'inet', table, 'c6')).toEqual(tagged('fd00:b15::5'));
    expect(nftSet(pod, 'bridge', table, 'a')).toEqual([]);
  });

  it('lists a table as nft -j does for everything berth reads (sets, elements, chains, rule handles, jumps, lookups)', async () => {
    const { table, opts } = setup();
    await nfnlApply(
      [
        add('inet', table, 'c4', ['198.18.0.7', { elem: { val: '198.18.0.8', comment: 'c8/eth0' } }]),
        add('inet', table, 's4', [
          {
            elem: {
              val: { concat: ['198.18.0.8', { prefix: { addr: '198.18.0.0', len: 24 } }] },
              comment: 'c8',
            },
          },
        ]),
      ],
      opts,
    );
    for (const family of ['inet', 'bridge'] as const) {
      const ours = (await nfnlListTable({ family, name: table }, opts))!;
      const nft = (await listTable({ family, name: table }, opts))!;
      // Element order is the kernel's here; nft sorts hash sets by value for display (berth's plans do not care).
      const sorted = (elem: unknown) =>
        Array.isArray(elem) ? elem.map((e) => JSON.stringify(e)).sort() : elem;
      const sets = (objs: typeof ours) =>
        objs.filter((o) => o.set !== undefined).map((o) => ({ ...o.set, elem: sorted(o.set!.elem) }));
      expect(sets(ours)).toEqual(sets(nft));
      const names = (objs: typeof ours, kind: string) =>
        objs.filter((o) => o[kind] !== undefined).map((o) => [o[kind]!.name, o[kind]!.handle]);
      expect(names(ours, 'chain')).toEqual(names(nft, 'chain'));
      const rules = (objs: typeof ours) =>
        objs.filter((o) => o.rule !== undefined).map((o) => [o.rule!.chain, o.rule!.handle]);
      expect(rules(ours)).toEqual(rules(nft));
      // What the plans look for in a rule's JSON is in ours as in nft's.
      for (const needle of ['"jump":{"target":"masq"}', '"@c4"', '"@a"', '"@p"']) {
        const has = (objs: typeof ours) =>
          objs.some((o) => JSON.stringify(o.rule?.expr ?? []).includes(needle));
        expect(has(ours), needle).toBe(has(nft));
      }
    }
    expect(await nfnlListTable({ family: 'inet', name: `${table}x` }, opts)).toBeUndefined();
  });

  it("a focused listing reads only the named sets' elements and chains' rules, and lists every chain and set", async () => {
    const { pod, table, opts } = setup();
    await nfnlApply(
      [
        add('inet', table, 'c4', [{ elem: { val: '198.18.0.8', comment: 'c8/eth0' } }]),
        add('inet', table, 'c6', [{ elem: { val: 'fd00::8', comment: 'c8/eth0' } }]),
      ],
      opts,
    );
    // Another party's set of a type this module cannot decode (which makes a whole listing go through nft).
    observe(pod, 'nft', ['add', 'set', 'inet', table, 'ports', '{ type inet_service; elements = { 53 } }']);
    const t = { family: 'inet' as const, name: table };
    const focused = (await nfnlListTable(t, opts, { sets: ['c4'], chains: ['postrouting'] }))!;
    const whole = (await listTable(t, opts))!;
    const names = (objs: typeof whole, kind: string) =>
      objs
        .filter((o) => o[kind] !== undefined)
        .map((o) => String(o[kind]!.name))
        .sort();
    expect(names(focused, 'chain')).toEqual(names(whole, 'chain'));
    expect(names(focused, 'set')).toEqual(names(whole, 'set'));
    const elems = (objs: typeof whole, set: string) => objs.find((o) => o.set?.name === set)?.set?.elem;
    expect(elems(focused, 'c4')).toEqual(elems(whole, 'c4'));
    expect(elems(whole, 'c6')).toBeDefined();
    expect(elems(focused, 'c6')).toBeUndefined();
    const rules = (objs: typeof whole) =>
      objs.filter((o) => o.rule !== undefined).map((o) => [o.rule!.chain, o.rule!.handle]);
    expect(rules(whole).some(([chain]) => chain === 'masq')).toBe(true);
    expect(rules(focused)).toEqual(rules(whole).filter(([chain]) => chain === 'postrouting'));
  });

  it('deletes a rule by handle, a chain, a set and the table in one transaction', async () => {
    const { pod, table, opts } = setup();
    const objs = (await nfnlListTable({ family: 'inet', name: table }, opts))!;
    const jump = objs.find((o) => o.rule?.chain === 'postrouting')!.rule!;
    await nfnlApply(
      [
        { delete: { rule: { family: 'inet', table, chain: 'postrouting', handle: jump.handle } } },
        { delete: { chain: { family: 'inet', table, name: 'masq' } } },
        { delete: { set: { family: 'inet', table, name: 's6' } } },
      ],
      opts,
    );
    const left = observe(pod, 'nft', ['list', 'table', 'inet', table]);
    expect(left).not.toContain('jump masq');
    expect(left).not.toContain('chain masq');
    expect(left).not.toContain('set s6');
    expect(left).toContain('set s4');
    await nfnlApply([{ delete: { table: { family: 'inet', name: table } } }], opts);
    expect(observe(pod, 'nft', ['list', 'tables'])).not.toContain(`inet ${table}`);
  });

  it('is atomic, and kernel errors keep their errno: ENOENT for a missing element, set or table', async () => {
    const { pod, table, opts } = setup();
    const err = await rejection(
      nfnlApply([add('inet', table, 'c4', ['198.18.0.9']), del('inet', table, 'c4', ['198.18.0.10'])], opts),
    );
    expect(err).toMatchObject({ code: 'ENOENT', op: 'nft' });
    expect(err.message).toContain(`delete element inet ${table} c4`);
    expect(nftSet(pod, 'inet', table, 'c4')).toEqual([]);

    const missingSet = await rejection(nfnlApply([add('inet', table, 'nope', ['198.18.0.9'])], opts));
    expect(missingSet).toMatchObject({ code: 'ENOENT', op: 'nft' });
    const missingTable = await rejection(applyNft([add('inet', `${table}x`, 'c4', ['198.18.0.9'])], opts));
    expect(missingTable).toMatchObject({ code: 'ENOENT', op: 'nft' });
    // What a handler throws for it: Internal, the errno name as details, the NetlinkError as cause.
    const cni = toKernelCniError(missingTable) as CniError;
    expect(cni).toBeInstanceOf(CniError);
    expect(cni.code).toBe(ErrorCode.Internal);
    expect(cni.details).toBe('ENOENT');
    expect(cni.cause).toBe(missingTable);
  });

  it("creates a network's table, chains, sets and rules as nft does (berth's setup in two namespaces)", async () => {
    const fx = kernel.fresh();
    const [byNft, byUs] = [fx.addNetns('n'), fx.addNetns('u')];
    const batches = await berthSetupCommands(`${fx.prefix}t`, [
      { ip: '198.18.0.2', family: 4, subnet: '198.18.0.0', prefixLen: 24 },
      { ip: 'fd00:b15::2', family: 6, subnet: 'fd00:b15::', prefixLen: 64 },
    ]);
    for (const b of batches) {
      await nftApply(b, { netns: byNft.path });
      await nfnlApply(b, { netns: byUs.path });
    }
    const ruleset = (p: Place) => observe(p, 'nft', ['list', 'ruleset']);
    expect(ruleset(byUs)).toContain('masquerade');
    expect(ruleset(byUs)).toBe(ruleset(byNft));
    const json = (p: Place) =>
      JSON.stringify(observeJson(p, 'nft', ['-j', 'list', 'ruleset']), (k, v: unknown) =>
        k === 'handle' || k === 'metainfo' ? undefined : v,
      );
    expect(json(byUs)).toBe(json(byNft));
    // Again, on the existing objects (a setup repairing a network): still the same.
    for (const b of batches) {
      await nftApply(
        b.filter((c) => !('add' in c && 'element' in (c.add as object))),
        { netns: byNft.path },
      );
      await nfnlApply(
        b.filter((c) => !('add' in c && 'element' in (c.add as object))),
        { netns: byUs.path },
      );
    }
    expect(ruleset(byUs)).toBe(ruleset(byNft));
  });

  it('leaves to nft what it cannot do: sets of other types, other expressions', async () => {
    const { pod, table, opts } = setup();
    const create = [
      { add: { set: { family: 'inet', table, name: 'ports', type: 'inet_service' } } },
      add('inet', table, 'ports', [53, 80]),
    ];
    await expect(nfnlApply(create, opts)).rejects.toBeInstanceOf(NftnlUnsupported);
    expect(observe(pod, 'nft', ['list', 'table', 'inet', table])).not.toContain('ports');
    await applyNft(create, opts);
    expect(nftSet(pod, 'inet', table, 'ports')).toEqual([53, 80]);
    // A table holding a set we cannot read is listed by nft instead, with the same answer.
    await expect(nfnlListTable({ family: 'inet', name: table }, opts)).rejects.toBeInstanceOf(
      NftnlUnsupported,
    );
    expect(await readNftTable({ family: 'inet', name: table }, opts)).toEqual(
      await listTable({ family: 'inet', name: table }, opts),
    );
  });
});

/** Inodes of the nfnetlink sockets this process holds (protocol 12 in /proc/self/net/netlink). */
function nfnetlinkSocketsHeld(): Set<string> {
  const rows = readFileSync('/proc/self/net/netlink', 'utf8').trim().split('\n').slice(1);
  const netfilter = new Set(
    rows
      .map((r) => r.trim().split(/\s+/))
      .filter((c) => c[1] === '12')
      .map((c) => c[9]),
  );
  const held = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode !== undefined && netfilter.has(inode)) held.add(inode);
  }
  return held;
}

describe("nfnetlink sockets in berth's own namespace", () => {
  it('are kept for the next call (closing one waits for the kernel after a deletion); no more than ran at once', async () => {
    const fx = kernel.fresh();
    const table = `${fx.prefix}t`;
    const t = { family: 'inet', name: table };
    const elem = (op: 'add' | 'delete', ip: string) => ({
      [op]: {
        element: { family: 'inet', table, name: 'c4', elem: [{ elem: { val: ip, comment: 'x/eth0' } }] },
      },
    });
    try {
      await applyNft([
        { add: { table: { family: 'inet', name: table } } },
        { add: { set: { family: 'inet', table, name: 'c4', type: 'ipv4_addr' } } },
      ]);
      const kept = nfnetlinkSocketsHeld();
      expect(kept.size).toBeGreaterThanOrEqual(1);
      // One after another, deletions included: the same sockets serve every call.
      for (let i = 1; i <= 5; i++) {
        await applyNft([elem('add', `198.18.0.${i}`)]);
        expect((await readNftTable(t))?.some((o) => o.set?.name === 'c4')).toBe(true);
        await applyNft([elem('delete', `198.18.0.${i}`)]);
        expect(nfnetlinkSocketsHeld()).toEqual(kept);
      }
      // Three at once need three sockets; afterwards no call opens another.
      await Promise.all([readNftTable(t), readNftTable(t), readNftTable(t)]);
      const peak = nfnetlinkSocketsHeld();
      expect(peak.size).toBeLessThanOrEqual(kept.size + 2);
      await readNftTable(t);
      await applyNft([elem('add', '198.18.0.9'), elem('delete', '198.18.0.9')]);
      expect(nfnetlinkSocketsHeld()).toEqual(peak);
    } finally {
      trySh('nft', ['delete', 'table', 'inet', table]);
    }
  });
});
