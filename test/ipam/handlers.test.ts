// The command handlers on the in-memory store: they need nothing of the file store (the daemon will run
// them on its own store), and their rules hold whatever the store.
import { describe, expect, test } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { parseRequest } from '../../src/cni-spec/request';
import { formatIp } from '../../src/address/ip';
import { type IpamDeps, add, check, del, gc, status } from '../../src/ipam/handlers';
import { type MemoryStore, memoryStore } from './memory-store';

const IPAM = {
  type: 'berth-ipam',
  dataDir: '/nonexistent-never-touched',
  ranges: [[{ subnet: '198.18.64.0/30' }], [{ subnet: 'fd00:5::/64' }]],
};

function request(
  command: string,
  opts: { id?: string; top?: Record<string, unknown>; ipam?: Record<string, unknown> } = {},
) {
  return parseRequest({
    env: {
      CNI_COMMAND: command,
      CNI_CONTAINERID: opts.id ?? 'c1',
      CNI_NETNS: '/run/netns/x',
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/x',
      CNI_ARGS: 'K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p',
    },
    stdin: JSON.stringify({
      cniVersion: '1.1.0',
      name: 'mem',
      type: 'x',
      ipam: { ...IPAM, ...opts.ipam },
      ...opts.top,
    }),
  });
}

function deps(store: MemoryStore, bootId = 'boot-a'): IpamDeps & { warnings: string[] } {
  const warnings: string[] = [];
  return { openStore: () => store, bootId, warn: (m) => warnings.push(m), now: () => new Date(0), warnings };
}

const held = (s: MemoryStore) => [...s.leases.keys()].sort();

describe('handlers on the in-memory store', () => {
  test('ADD records metadata, is idempotent, DEL releases; STATUS 50 once the v4 set is full', async () => {
    const s = memoryStore();
    const r1 = await add(request('ADD'), deps(s));
    expect(r1.ips).toEqual([
      { address: '198.18.64.2/30', gateway: '198.18.64.1' },
      { address: 'fd00:5::2/64', gateway: 'fd00:5::1' },
    ]);
    expect(s.leases.get('198.18.64.2')?.meta).toEqual({
      bootId: 'boot-a',
      netns: '/run/netns/x',
      pod: { namespace: 'ns', name: 'p' },
      createdAt: new Date(0).toISOString(),
      origin: 'berth',
    });
    expect((await add(request('ADD'), deps(s))).ips).toEqual(r1.ips);
    expect(held(s)).toEqual(['198.18.64.2', 'fd00:5::2']);
    await expect(status(request('STATUS'), deps(s))).rejects.toMatchObject({ code: 50 });
    const err = await add(request('ADD', { id: 'c2' }), deps(s)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect(held(s)).toEqual(['198.18.64.2', 'fd00:5::2']); // nothing of c2's IPv6 stayed
    await del(request('DEL'), deps(s));
    expect(held(s)).toEqual([]);
    await status(request('STATUS'), deps(s));
  });

  test('STATUS of a set probed address by address (an IPv6 /64) looks from the cursor, not past every lease', async () => {
    const s = memoryStore();
    const ipam = { ranges: [[{ subnet: 'fd00:5::/64' }]] };
    for (let i = 0; i < 50; i++) await add(request('ADD', { id: `c${i}`, ipam }), deps(s));
    expect(s.leases.size).toBe(50);
    let looks = 0;
    const has = s.leases.has.bind(s.leases);
    s.leases.has = (k: string) => (looks++, has(k));
    await status(request('STATUS', { ipam }), deps(s));
    // The address after the cursor is free: one look (from the set's start, 51: every lease, then .52).
    expect(looks).toBe(1);
  });

  test('CHECK passes for the ADD result and fails when an address differs', async () => {
    const s = memoryStore();
    const r = await add(request('ADD'), deps(s));
    await check(request('CHECK', { top: { prevResult: r } }), deps(s));
    const other = { ...r, ips: [{ address: '198.18.64.3/30' }, r.ips![1]] };
    await expect(check(request('CHECK', { top: { prevResult: other } }), deps(s))).rejects.toThrow(
      /do not match prevResult/,
    );
    // An address another plugin of the chain added is not ours to check.
    const chained = { ...r, ips: [...r.ips!, { address: '198.18.99.9/24' }] };
    await check(request('CHECK', { top: { prevResult: chained } }), deps(s));
    // After the ranges changed, a lease outside them still matches when prevResult lists it.
    await check(
      request('CHECK', { top: { prevResult: r }, ipam: { ranges: [[{ subnet: 'fd00:5::/64' }]] } }),
      deps(s),
    );
  });

  test('CHECK without prevResult passes when the attachment holds a lease and fails (3) when not, as host-local', async () => {
    const s = memoryStore();
    await add(request('ADD'), deps(s));
    await check(request('CHECK'), deps(s));
    await expect(check(request('CHECK', { id: 'c2' }), deps(s))).rejects.toMatchObject({
      code: ErrorCode.UnknownContainer,
      message: expect.stringMatching(/failed to find an address added by container c2 \(ifname eth0\)/),
    });
    await del(request('DEL'), deps(s));
    await expect(check(request('CHECK'), deps(s))).rejects.toMatchObject({
      code: ErrorCode.UnknownContainer,
    });
  });

  test('a new boot releases the old leases on ADD; releaseOnReboot: false keeps them', async () => {
    const s = memoryStore('boot-b');
    await add(request('ADD', { id: 'old' }), deps(s, 'boot-a'));
    await add(
      request('ADD', {
        id: 'new',
        ipam: { releaseOnReboot: false, ranges: [[{ subnet: '198.18.64.0/29' }]] },
      }),
      deps(s, 'boot-b'),
    );
    expect(held(s)).toHaveLength(3);
    const d = deps(s, 'boot-b');
    s.sweptBoot = undefined;
    await add(request('ADD', { id: 'new2', ipam: { ranges: [[{ subnet: '198.18.64.0/29' }]] } }), d);
    expect([...s.leases.values()].map((l) => l.containerId).sort()).toEqual(['new', 'new2']);
    expect(d.warnings.join()).toMatch(/released 2 lease/);
  });

  test('GC keeps the valid attachments and legacy leases of a valid container', async () => {
    const s = memoryStore();
    await add(request('ADD', { id: 'keep', ipam: { ranges: [[{ subnet: '198.18.64.0/29' }]] } }), deps(s));
    await add(request('ADD', { id: 'drop', ipam: { ranges: [[{ subnet: '198.18.64.0/29' }]] } }), deps(s));
    s.leases.set('198.18.64.6', {
      ip: { family: 4, value: (198n << 24n) | (18n << 16n) | (64n << 8n) | 6n },
      containerId: 'keep',
      ifname: '',
      meta: {},
    });
    await gc(
      request('GC', {
        top: { cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] },
      }),
      deps(s),
    );
    expect(
      [...s.leases.values()].map((l) => `${l.containerId}/${l.ifname}@${formatIp(l.ip)}`).sort(),
    ).toEqual(['keep/@198.18.64.6', 'keep/eth0@198.18.64.2']);
  });
});
