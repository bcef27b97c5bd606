// The second LeaseStore: everything in memory, so allocator and handler tests run without a disk and the
// interface is proven not to leak file-store specifics.
import { type Ip, formatIp } from '../../src/address/ip';
import type { Occupancy } from '../../src/ipam/allocator';
import { type RangeSet, ipAtOrdinal } from '../../src/ipam/range-set';
import type { Attachment, Lease, LeaseSession, LeaseStore, NewLease } from '../../src/ipam/store';

export interface MemoryStore extends LeaseStore {
  leases: Map<string, Lease>;
  cursors: Map<number, Ip>;
  /** Boot the store has last swept for. */
  sweptBoot: string | undefined;
  /** How many reserve() calls were made (probes). */
  reserveCalls: number;
}

export function memoryStore(bootId = 'boot-a'): MemoryStore {
  const store: MemoryStore = {
    leases: new Map(),
    cursors: new Map(),
    sweptBoot: undefined,
    reserveCalls: 0,
    async transact<T>(fn: (s: LeaseSession) => Promise<T>): Promise<T> {
      let seen = false;
      const session: LeaseSession = {
        async reserve(lease: NewLease, setId: number) {
          store.reserveCalls++;
          const key = formatIp(lease.ip);
          if (store.leases.has(key)) return false;
          store.leases.set(key, { ...lease });
          store.cursors.set(setId, lease.ip);
          return true;
        },
        async lastReserved(setId: number) {
          return store.cursors.get(setId);
        },
        async isTaken(ip: Ip) {
          return store.leases.has(formatIp(ip));
        },
        async occupancy(set: RangeSet): Promise<Occupancy> {
          return {
            firstFree(lo: bigint, hi: bigint) {
              for (let o = lo; o <= hi; o++) if (!store.leases.has(formatIp(ipAtOrdinal(set, o)))) return o;
              return undefined;
            },
          };
        },
        async leasesOf(a: Attachment) {
          const all = [...store.leases.values()];
          const exact = all.filter((l) => l.containerId === a.containerId && l.ifname === a.ifname);
          if (exact.length > 0 || a.ifname === '') return exact;
          return all.filter((l) => l.containerId === a.containerId && l.ifname === '');
        },
        async all() {
          return [...store.leases.values()];
        },
        async leasesFromEarlierBoots() {
          if (store.sweptBoot === bootId) return [];
          seen = true;
          return [...store.leases.values()].filter((l) => l.meta.bootId !== bootId);
        },
        async release(lease: Lease) {
          store.leases.delete(formatIp(lease.ip));
        },
      };
      const out = await fn(session);
      if (seen) store.sweptBoot = bootId;
      return out;
    },
    async unwritableReason() {
      return undefined;
    },
  };
  return store;
}
