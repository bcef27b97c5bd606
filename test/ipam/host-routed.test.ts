import { describe, expect, it } from 'vitest';
import { hostRoutedAddressing } from '../../src/ipam/host-routed';
import { canonicalizeRangeSet } from '../../src/ipam/range-set';

describe('hostRoutedAddressing (cluster networks)', () => {
  const sets = [
    canonicalizeRangeSet([{ subnet: '198.19.0.0/16' }], 'v4'),
    canonicalizeRangeSet([{ subnet: 'fd00:b::/64', gateway: 'fd00:b::1' }], 'v6'),
  ];

  it('answers host prefixes with the pool gateway, and one route to each pool via it', () => {
    const r = hostRoutedAddressing(sets, [
      { address: '198.19.0.70/16', gateway: '198.19.0.1' },
      { address: 'fd00:b::46/64', gateway: 'fd00:b::1' },
    ]);
    expect(r.ips).toEqual([
      { address: '198.19.0.70/32', gateway: '198.19.0.1' },
      { address: 'fd00:b::46/128', gateway: 'fd00:b::1' },
    ]);
    expect(r.poolRoutes).toEqual([
      { dst: '198.19.0.0/16', gw: '198.19.0.1' },
      { dst: 'fd00:b::/64', gw: 'fd00:b::1' },
    ]);
  });

  it('leaves an address outside every pool as it is', () => {
    const r = hostRoutedAddressing(sets, [{ address: '10.1.2.3/8' }]);
    expect(r).toEqual({ ips: [{ address: '10.1.2.3/8' }], poolRoutes: [] });
  });
});
