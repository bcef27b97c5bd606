// The allocator against the in-memory store: host-local's round-robin order, gateway skipping, wrap-around
// across ranges, berth's exclude list and `lowest` policy, requested addresses and exhaustion.
import { describe, expect, test } from 'vitest';
import { CniError } from '../../src/cni-spec/errors';
import { parseCidr } from '../../src/address/cidr';
import { type Ip, formatIp, parseIp } from '../../src/address/ip';
import {
  type Policy,
  allocateFromSet,
  blockedOrdinals,
  nextCandidate,
  startOrdinal,
} from '../../src/ipam/allocator';
import { type RawRange, type Range, canonicalizeRangeSet, ipAtOrdinal } from '../../src/ipam/range-set';
import { memoryStore } from './memory-store';

const ip = (t: string): Ip => parseIp(t)!;
const set = (...ranges: RawRange[]): Range[] => canonicalizeRangeSet(ranges, 'test');

async function allocN(opts: {
  ranges: Range[];
  n: number;
  store?: ReturnType<typeof memoryStore>;
  policy?: Policy;
  exclude?: string[];
  requested?: string;
}): Promise<string[]> {
  const store = opts.store ?? memoryStore();
  const out: string[] = [];
  for (let i = 0; i < opts.n; i++) {
    const got = await store.transact((session) =>
      allocateFromSet({
        session,
        set: opts.ranges,
        setId: 0,
        containerId: `c${out.length}-${Math.random().toString(36).slice(2, 6)}`,
        ifname: 'eth0',
        meta: {},
        policy: opts.policy ?? 'round-robin',
        exclude: (opts.exclude ?? []).map((e) =>
          parseCidr(e.includes('/') ? e : `${e}/${e.includes(':') ? 128 : 32}`)!,
        ),
        ...(opts.requested === undefined ? {} : { requested: ip(opts.requested) }),
      }),
    );
    out.push(formatIp(got));
  }
  return out;
}

describe('round-robin (host-local order)', () => {
  test('a /24 starts at .2 (the .1 gateway is skipped) and goes up', async () => {
    expect(await allocN({ ranges: set({ subnet: '198.18.64.0/24' }), n: 3 })).toEqual([
      '198.18.64.2',
      '198.18.64.3',
      '198.18.64.4',
    ]);
  });

  test('continues after last_reserved_ip, and restarts at rangeStart when the cursor left the set', async () => {
    const store = memoryStore();
    store.cursors.set(0, ip('198.18.64.9'));
    expect(await allocN({ ranges: set({ subnet: '198.18.64.0/24' }), n: 1, store })).toEqual([
      '198.18.64.10',
    ]);
    store.cursors.set(0, ip('198.18.99.9'));
    expect(await allocN({ ranges: set({ subnet: '198.18.64.0/24' }), n: 1, store })).toEqual(['198.18.64.2']);
  });

  test('wraps from rangeEnd to rangeStart and walks ranges in order, then reports exhaustion', async () => {
    const ranges = set(
      { subnet: '198.18.64.0/24', rangeStart: '198.18.64.10', rangeEnd: '198.18.64.11' },
      { subnet: '198.18.65.0/24', rangeStart: '198.18.65.1', rangeEnd: '198.18.65.3' },
    );
    const store = memoryStore();
    store.cursors.set(0, ip('198.18.64.10'));
    // 65.1 is range 1's gateway (default), skipped only there.
    expect(await allocN({ ranges, n: 3, store })).toEqual(['198.18.64.11', '198.18.65.2', '198.18.65.3']);
    expect(await allocN({ ranges, n: 1, store })).toEqual(['198.18.64.10']);
    await expect(allocN({ ranges, n: 1, store })).rejects.toThrow(
      'no IP addresses available in range set: 198.18.64.10-198.18.64.11,198.18.65.1-198.18.65.3',
    );
  });

  test('a released address is not reused before the whole set has been used', async () => {
    const ranges = set({ subnet: '198.18.64.0/29' });
    const store = memoryStore();
    const first = await allocN({ ranges, n: 3, store });
    store.leases.delete(first[0]!);
    expect(await allocN({ ranges, n: 3, store })).toEqual(['198.18.64.5', '198.18.64.6', '198.18.64.2']);
  });

  test('a reserve the store refuses moves on to the next candidate; a store that keeps offering it is an error', async () => {
    const ranges = set({ subnet: '198.18.64.0/24' });
    const store = memoryStore();
    // .2 is held but the occupancy view does not know: reserve refuses it, the allocator takes .3.
    const hidden = { ip: ip('198.18.64.2'), containerId: 'x', ifname: 'eth0', meta: {} };
    const run = (stale: boolean) =>
      store.transact(async (s) => {
        const taken = new Set<bigint>();
        const view = {
          ...s,
          occupancy: async () => ({
            firstFree: (lo: bigint, hi: bigint) => {
              for (let o = lo; o <= hi; o++) if (stale || !taken.has(o)) return o;
              return undefined;
            },
          }),
          reserve: async (l: Parameters<typeof s.reserve>[0], id: number) => {
            const ok = await s.reserve(l, id);
            if (!ok) taken.add(BigInt(Number(l.ip.value - ranges[0]!.start)));
            return ok;
          },
        };
        return allocateFromSet({
          session: view,
          set: ranges,
          setId: 0,
          containerId: 'c',
          ifname: 'eth0',
          meta: {},
          policy: 'lowest',
          exclude: [],
        });
      });
    store.leases.set('198.18.64.2', hidden);
    expect(formatIp(await run(false))).toBe('198.18.64.3');
    store.leases.delete('198.18.64.3');
    await expect(run(true)).rejects.toThrow(/still reports 198\.18\.64\.2 free after refusing it/);
  });
});

describe('berth additions', () => {
  test('exclude skips single addresses and CIDRs', async () => {
    expect(
      await allocN({
        ranges: set({ subnet: '198.18.64.0/24' }),
        n: 3,
        exclude: ['198.18.64.2', '198.18.64.4/30'],
      }),
    ).toEqual(['198.18.64.3', '198.18.64.8', '198.18.64.9']);
  });

  test('lowest takes the lowest free address whatever the cursor says', async () => {
    const ranges = set({ subnet: '198.18.64.0/24' });
    const store = memoryStore();
    const got = await allocN({ ranges, n: 4, store, policy: 'lowest' });
    expect(got).toEqual(['198.18.64.2', '198.18.64.3', '198.18.64.4', '198.18.64.5']);
    store.leases.delete('198.18.64.3');
    expect(await allocN({ ranges, n: 1, store, policy: 'lowest' })).toEqual(['198.18.64.3']);
  });
});

describe('requested addresses', () => {
  const ranges = set({ subnet: '198.18.64.0/24' });
  test('honoured, and the cursor moves to it', async () => {
    const store = memoryStore();
    expect(await allocN({ ranges, n: 1, store, requested: '198.18.64.77' })).toEqual(['198.18.64.77']);
    expect(formatIp(store.cursors.get(0)!)).toBe('198.18.64.77');
    expect(await allocN({ ranges, n: 1, store })).toEqual(['198.18.64.78']);
  });
  test.each([
    ['198.18.64.1', /is subnet's gateway/],
    ['198.18.64.9', /excluded/],
    ['198.18.65.1', /not in range set/],
  ])('%s refused (%s)', async (req, msg) => {
    await expect(allocN({ ranges, n: 1, requested: req, exclude: ['198.18.64.9'] })).rejects.toThrow(msg);
  });
  test('taken → not available', async () => {
    const store = memoryStore();
    await allocN({ ranges, n: 1, store, requested: '198.18.64.50' });
    const err = await allocN({ ranges, n: 1, store, requested: '198.18.64.50' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).message).toBe(
      'requested IP address 198.18.64.50 is not available in range set 198.18.64.1-198.18.64.254',
    );
  });
});

describe('nextCandidate (pure)', () => {
  const ranges = set({ subnet: '198.18.64.0/29' }); // .1-.6, gateway .1
  const occ = (taken: string[]) => ({
    firstFree(lo: bigint, hi: bigint) {
      for (let o = lo; o <= hi; o++) if (!taken.includes(formatIp(ipAtOrdinal(ranges, o)))) return o;
      return undefined;
    },
  });
  test.each<[string | undefined, string[], string | undefined]>([
    [undefined, [], '198.18.64.2'],
    ['198.18.64.6', [], '198.18.64.2'],
    ['198.18.64.3', ['198.18.64.4', '198.18.64.5'], '198.18.64.6'],
    ['198.18.64.5', ['198.18.64.6', '198.18.64.2'], '198.18.64.3'],
    ['198.18.64.4', ['198.18.64.2', '198.18.64.3', '198.18.64.5', '198.18.64.6'], '198.18.64.4'],
    ['198.18.64.4', ['198.18.64.2', '198.18.64.3', '198.18.64.4', '198.18.64.5', '198.18.64.6'], undefined],
  ])('cursor %s, taken %j → %s', (cursor, taken, want) => {
    const start = startOrdinal({
      set: ranges,
      cursor: cursor === undefined ? undefined : ip(cursor),
      policy: 'round-robin',
    });
    const got = nextCandidate({
      set: ranges,
      start,
      occupancy: occ(taken),
      blocked: blockedOrdinals(ranges),
    });
    expect(got === undefined ? undefined : formatIp(ipAtOrdinal(ranges, got))).toBe(want);
  });
});
