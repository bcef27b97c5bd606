// Which ordinals of a range set are taken (allocator.ts's Occupancy), one implementation for both stores:
// the file store (whose bitmaps also live in `.berth/sets/`) and berthd's in-memory network store. A set is
// a bitmap up to BITMAP_LIMIT addresses and probed beyond, the same way in both, so a set behaves alike
// whichever store serves it.
import type { Occupancy } from './allocator';

/**
 * Range sets of up to 2^24 addresses get a bitmap: every IPv4 pool up to a /8, at 2 MiB at most (in memory,
 * and as the file store's `.berth/sets/` file). Larger sets are IPv6-sized (a /64 alone is 2^64): no
 * bitmap could hold them, and no node holds leases on more than a sliver of them, so probing from the cursor
 * finds a free address within a few steps. The file store had 2^24 and the daemon 2^22; 2^24 was kept since
 * it is what the file store already wrote on disk, and the daemon's bitmaps stay small in practice (only
 * sets that large pay 2 MiB).
 */
export const BITMAP_LIMIT = 1 << 24;
/** Probes per search in a set too large for a bitmap: far more than any real pool fills consecutively. */
export const PROBE_LIMIT = 1 << 20;

export function fitsBitmap(size: bigint): boolean {
  return size <= BigInt(BITMAP_LIMIT);
}

/**
 * Occupancy as one bit per ordinal: the address of ordinal i is taken when bit (i & 7) of byte (i >> 3) is
 * set. This is also the byte layout of the `.berth/sets/<hash>` files after their header line.
 */
export class OrdinalBitmap implements Occupancy {
  readonly bits: Uint8Array;

  constructor(
    readonly size: number,
    bits?: Uint8Array,
  ) {
    this.bits = bits ?? new Uint8Array(OrdinalBitmap.bytesFor(size));
  }

  static bytesFor(size: number): number {
    return Math.ceil(size / 8);
  }

  setOrdinal(i: number, taken: boolean): void {
    if (taken) this.bits[i >> 3]! |= 1 << (i & 7);
    else this.bits[i >> 3]! &= ~(1 << (i & 7));
  }

  clear(): void {
    this.bits.fill(0);
  }

  /** The first ordinal in [lo, hi] whose bit is clear, skipping whole full bytes. */
  firstFree(lo: bigint, hi: bigint): bigint | undefined {
    let i = Number(lo);
    const end = Number(hi);
    while (i <= end) {
      if ((i & 7) === 0 && i + 7 <= end && this.bits[i >> 3] === 0xff) {
        i += 8;
        continue;
      }
      if ((this.bits[i >> 3]! & (1 << (i & 7))) === 0) return BigInt(i);
      i++;
    }
    return undefined;
  }
}

/** Occupancy of a set too large for a bitmap: asks about each ordinal in turn, at most PROBE_LIMIT times. */
export function probeOccupancy(isTaken: (ordinal: bigint) => boolean): Occupancy {
  return {
    firstFree(lo: bigint, hi: bigint): bigint | undefined {
      let probes = 0;
      for (let o = lo; o <= hi && probes < PROBE_LIMIT; o++, probes++) {
        if (!isTaken(o)) return o;
      }
      return undefined;
    },
  };
}
