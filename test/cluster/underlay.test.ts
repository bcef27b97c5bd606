// The underlay a node publishes, detected from the etcd endpoint's source address and its interface's
// addresses (any user: the source of a UDP "connect" towards loopback, and a scripted address list).
import { describe, expect, it } from 'vitest';
import { detectUnderlay } from '../../src/cluster/underlay';
import type { Address } from '../../src/netlink/types';

const addr = (index: number, address: string, flags = 0x80, more: Partial<Address> = {}): Address => ({
  index,
  family: address.includes(':') ? 6 : 4,
  address,
  prefixLength: address.includes(':') ? 64 : 8,
  scope: 0,
  flags,
  tentative: false,
  dadFailed: false,
  nodad: false,
  permanent: (flags & 0x80) !== 0,
  label: undefined,
  ...more,
});

describe('detectUnderlay', () => {
  it("takes the other family's stable address of the interface, never a temporary or deprecated one", async () => {
    const nl = {
      listAddresses: () =>
        Promise.resolve([
          addr(1, '127.0.0.1'),
          // Listed first, as the kernel lists the newest: a privacy address, then a deprecated one.
          addr(1, 'fd00:b::dead', 0x01),
          addr(1, 'fd00:b::beef', 0x20),
          addr(1, 'fd00:b::7', 0x40, { tentative: true }),
          addr(1, 'fd00:b::1'),
        ]),
    };
    // Towards loopback the source is 127.0.0.1: no IPv4 underlay (loopback), the stable IPv6 one.
    expect(await detectUnderlay('http://127.0.0.1:2379', nl)).toEqual({ underlay6: 'fd00:b::1' });
  });

  it('publishes nothing of a family whose only global addresses expire', async () => {
    const nl = {
      listAddresses: () => Promise.resolve([addr(1, '127.0.0.1'), addr(1, 'fd00:b::dead', 0x01)]),
    };
    expect(await detectUnderlay('http://127.0.0.1:2379', nl)).toEqual({});
  });
});
