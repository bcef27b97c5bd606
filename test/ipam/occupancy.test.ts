// The one occupancy implementation both stores use: the bitmap's bit layout (it is also the file format of
// `.berth/sets/`), its search, the shared limit, and probing beyond it.
import { describe, expect, test } from 'vitest';
import {
  BITMAP_LIMIT,
  OrdinalBitmap,
  PROBE_LIMIT,
  fitsBitmap,
  probeOccupancy,
} from '../../src/ipam/occupancy';

describe('OrdinalBitmap', () => {
  test('bitmap layout: ordinal i is bit i&7 of byte i>>3; the search skips full bytes', () => {
    const b = new OrdinalBitmap(32);
    for (let i = 0; i < 19; i++) b.setOrdinal(i, true);
    expect([...b.bits]).toEqual([0xff, 0xff, 0x07, 0]);
    expect(b.firstFree(0n, 31n)).toBe(19n);
    b.setOrdinal(9, false);
    expect(b.bits[1]).toBe(0xfd);
    expect(b.firstFree(0n, 31n)).toBe(9n);
    expect(b.firstFree(10n, 18n)).toBeUndefined();
    b.clear();
    expect(b.firstFree(0n, 31n)).toBe(0n);
  });

  test('sizes round up to whole bytes; given bits are used as they are', () => {
    expect(new OrdinalBitmap(9).bits.length).toBe(2);
    const bits = Uint8Array.of(0xff, 0x01);
    expect(new OrdinalBitmap(9, bits).firstFree(0n, 8n)).toBeUndefined();
  });
});

test('one limit: every IPv4 pool up to a /8 fits a bitmap, more does not', () => {
  expect(BITMAP_LIMIT).toBe(2 ** 24);
  expect(fitsBitmap(2n ** 24n)).toBe(true);
  expect(fitsBitmap(2n ** 24n + 1n)).toBe(false);
  expect(fitsBitmap(2n ** 64n)).toBe(false);
});

describe('probeOccupancy', () => {
  test('returns the first ordinal not taken, within lo..hi', () => {
    const taken = new Set([5n, 6n, 7n]);
    const occ = probeOccupancy((o) => taken.has(o));
    expect(occ.firstFree(5n, 100n)).toBe(8n);
    expect(occ.firstFree(5n, 7n)).toBeUndefined();
  });

  test(`gives up after PROBE_LIMIT (${PROBE_LIMIT}) taken ordinals in a row`, () => {
    let asked = 0;
    const occ = probeOccupancy(() => {
      asked++;
      return true;
    });
    expect(occ.firstFree(0n, 2n ** 64n)).toBeUndefined();
    expect(asked).toBe(PROBE_LIMIT);
  });
});
