// sysctls read/written inside a namespace (and not leaking into the host), and nftables objects through
// `nft -j`, in the host and in a pod namespace; observers: `sysctl` under ip netns exec, `nft -j list`.
import { describe, expect, it } from 'vitest';
import { NetlinkError } from '../../src/netlink/errors';
import {
  addChain,
  addElements,
  addSet,
  addTable,
  deleteChain,
  deleteElements,
  deleteSet,
  deleteTable,
  listTable,
  nftApply,
} from '../../src/netlink/nftables';
import { openNetlink } from '../../src/netlink/rtnetlink';
import { readSysctl, sysctlPath, writeSysctl } from '../../src/netlink/sysctl';
import type { KernelFixture } from './kernel-fixture';
import {
  HOST,
  observe,
  observeJson,
  threadNetns,
  trySh,
  useKernelFixture,
  type Place,
} from './kernel-fixture';

const kernel = useKernelFixture();
/** The test thread's namespace before any test ran: every namespace switch must come back to it. */
const original = threadNetns();
let fx: KernelFixture;

function sysctlIn(place: Place, key: string): string {
  return observe(place, 'sysctl', ['-n', key]).trim();
}

describe('sysctl', () => {
  it('maps keys to /proc/sys paths (dotted, slash form for names with dots, absolute)', () => {
    expect(sysctlPath('net.ipv4.ip_forward')).toBe('/proc/sys/net/ipv4/ip_forward');
    expect(sysctlPath('net/ipv6/conf/eth0.100/accept_ra')).toBe('/proc/sys/net/ipv6/conf/eth0.100/accept_ra');
    expect(sysctlPath('/proc/sys/net/core/somaxconn')).toBe('/proc/sys/net/core/somaxconn');
  });

  it('reads and writes inside a pod namespace without touching the host', () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    const key = 'net.ipv4.conf.all.arp_ignore';
    const hostBefore = sysctlIn(HOST, key);
    const podBefore = readSysctl(key, pod.path);
    expect(podBefore).toBe(sysctlIn(pod, key));
    const next = podBefore === '2' ? '1' : '2';
    writeSysctl(key, next, pod.path);
    expect(sysctlIn(pod, key)).toBe(next);
    expect(readSysctl(key, pod.path)).toBe(next);
    expect(sysctlIn(HOST, key)).toBe(hostBefore);
    expect(readSysctl(key)).toBe(hostBefore);
    expect(threadNetns()).toBe(original);
  });

  it('reaches per-interface keys of links that exist only in the pod, in slash form', async () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    const other = fx.addNetns('o');
    const nl = openNetlink(pod.path);
    try {
      await nl.createVethPair({ name: 'eth0.5', peerName: 'x', peerNetns: other.path! });
    } finally {
      nl.close();
    }
    writeSysctl('net/ipv6/conf/eth0.5/accept_ra', '0', pod.path);
    expect(sysctlIn(pod, 'net/ipv6/conf/eth0.5/accept_ra')).toBe('0');
    writeSysctl('net/ipv6/conf/eth0.5/accept_ra', '2', pod.path);
    expect(sysctlIn(pod, 'net/ipv6/conf/eth0.5/accept_ra')).toBe('2');
    // The host has no such interface.
    expect(() => readSysctl('net/ipv6/conf/eth0.5/accept_ra')).toThrow(
      expect.objectContaining({ code: 'ENOENT', op: 'sysctl read' }),
    );
  });

  it('restores a host sysctl it changes (host namespace write path)', () => {
    const key = 'net.ipv4.conf.lo.arp_announce';
    const before = readSysctl(key);
    expect(before).toBe(sysctlIn(HOST, key));
    const next = before === '1' ? '2' : '1';
    try {
      writeSysctl(key, next);
      expect(sysctlIn(HOST, key)).toBe(next);
    } finally {
      writeSysctl(key, before);
    }
    expect(sysctlIn(HOST, key)).toBe(before);
  });

  it('unknown keys, bad values and bad namespaces give NetlinkErrors', () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    expect(() => readSysctl('net.ipv4.no_such_key', pod.path)).toThrow(
      expect.objectContaining({ code: 'ENOENT', op: 'sysctl read' }),
    );
    expect(() => writeSysctl('net.ipv4.conf.all.arp_ignore', 'banana', pod.path)).toThrow(
      expect.objectContaining({ code: 'EINVAL', op: 'sysctl write' }),
    );
    expect(() => readSysctl('net.ipv4.ip_forward', `/var/run/netns/${fx.prefix}-gone`)).toThrow(
      expect.objectContaining({ code: 'ENOENT', op: 'open netns' }),
    );
    expect(threadNetns()).toBe(original);
  });
});

describe.each(['host', 'pod'] as const)('nftables in the %s namespace', (label) => {
  function place(): Place {
    fx = kernel.fresh();
    return label === 'host' ? HOST : fx.addNetns('p');
  }

  it('creates a table, chains, a named set and elements in one transaction, and removes them', async () => {
    const where = place();
    const table = fx.nftTable('inet', `${fx.prefix}t`);
    const opts = { netns: where.path };
    await nftApply(
      [
        addTable({ family: 'inet', name: table }),
        addChain({
          family: 'inet',
          table,
          name: 'post',
          type: 'nat',
          hook: 'postrouting',
          prio: 100,
          policy: 'accept',
        }),
        addChain({ family: 'inet', table, name: 'plain' }),
        addSet({ family: 'inet', table, name: 'pods4', type: 'ipv4_addr' }),
        addSet({ family: 'inet', table, name: 'pods6', type: 'ipv6_addr', flags: ['interval'] }),
        addElements({
          family: 'inet',
          table,
          name: 'pods4',
          elem: ['198.18.0.2', { elem: { val: '198.18.0.3', comment: 'c1/eth0' } }],
        }),
        addElements({
          family: 'inet',
          table,
          name: 'pods6',
          elem: [{ prefix: { addr: 'fd00:b3::', len: 64 } }],
        }),
      ],
      opts,
    );

    const seen = observeJson<{ nftables: any[] }>(where, 'nft', ['list', 'table', 'inet', table]).nftables;
    const chain = (n: string) => seen.find((o) => o.chain?.name === n)?.chain;
    const set = (n: string) => seen.find((o) => o.set?.name === n)?.set;
    expect(chain('post')).toMatchObject({ type: 'nat', hook: 'postrouting', prio: 100, policy: 'accept' });
    expect(chain('plain')).toBeDefined();
    expect(set('pods4').elem).toEqual(['198.18.0.2', { elem: { val: '198.18.0.3', comment: 'c1/eth0' } }]);
    expect(set('pods6').elem).toEqual([{ prefix: { addr: 'fd00:b3::', len: 64 } }]);
    // Only in the namespace we asked for.
    const elsewhere = label === 'host' ? undefined : trySh('nft', ['list', 'table', 'inet', table]);
    expect(elsewhere).toBeUndefined();

    const ours = await listTable({ family: 'inet', name: table }, opts);
    expect(ours?.find((o) => o.set?.name === 'pods4')?.set?.elem).toEqual(set('pods4').elem);

    await nftApply(
      [
        deleteElements({ family: 'inet', table, name: 'pods4', elem: ['198.18.0.2'] }),
        deleteSet({ family: 'inet', table, name: 'pods6' }),
        deleteChain({ family: 'inet', table, name: 'plain' }),
      ],
      opts,
    );
    const after = observeJson<{ nftables: any[] }>(where, 'nft', ['list', 'table', 'inet', table]).nftables;
    expect(after.find((o) => o.set?.name === 'pods4')?.set?.elem).toEqual([
      { elem: { val: '198.18.0.3', comment: 'c1/eth0' } },
    ]);
    expect(after.find((o) => o.set?.name === 'pods6')).toBeUndefined();
    expect(after.find((o) => o.chain?.name === 'plain')).toBeUndefined();

    await nftApply([deleteTable({ family: 'inet', name: table })], opts);
    expect(await listTable({ family: 'inet', name: table }, opts)).toBeUndefined();
    expect(observe(where, 'nft', ['list', 'tables'])).not.toContain(table);
  });

  it('is atomic: a failing command leaves nothing of the batch behind, with an errno name', async () => {
    const where = place();
    const table = fx.nftTable('inet', `${fx.prefix}t`);
    const opts = { netns: where.path };
    let err: unknown;
    try {
      await nftApply(
        [
          addTable({ family: 'inet', name: table }),
          addSet({ family: 'inet', table, name: 'pods4', type: 'ipv4_addr' }),
          // Deleting an element that is not there fails the whole transaction.
          deleteElements({ family: 'inet', table, name: 'pods4', elem: ['198.18.0.9'] }),
        ],
        opts,
      );
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NetlinkError);
    expect(err).toMatchObject({ code: 'ENOENT', op: 'nft' });
    expect(observe(where, 'nft', ['list', 'tables'])).not.toContain(table);
    expect(await listTable({ family: 'inet', name: table }, opts)).toBeUndefined();
  });

  it('reports EEXIST for a create of something that exists', async () => {
    const where = place();
    const table = fx.nftTable('inet', `${fx.prefix}t`);
    const opts = { netns: where.path };
    await nftApply([addTable({ family: 'inet', name: table })], opts);
    await expect(
      nftApply([{ create: { table: { family: 'inet', name: table } } }], opts),
    ).rejects.toMatchObject({ code: 'EEXIST', op: 'nft' });
    await nftApply([deleteTable({ family: 'inet', name: table })], opts);
  });
});
