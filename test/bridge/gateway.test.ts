import { describe, expect, it } from 'vitest';
import { parseBridgeConf } from '../../src/bridge/config';
import { networkIp } from '../../src/address/cidr';
import { formatIp } from '../../src/address/ip';
import { parseCidr, planAddresses } from '../../src/bridge/gateway';

const conf = (extra: Record<string, unknown>) =>
  parseBridgeConf({
    config: { cniVersion: '1.0.0', name: 'n', ipam: { type: 'host-local' }, ...extra },
    cniArgs: new Map(),
    runtimeConfig: () => undefined,
  });

describe('parseCidr', () => {
  it.each([
    ['198.18.128.5/24', { family: 4, ip: '198.18.128.5', prefixLen: 24, network: '198.18.128.0' }],
    ['fd00:b:0::5/64', { family: 6, ip: 'fd00:b::5', prefixLen: 64, network: 'fd00:b::' }],
  ])('%s', (cidr, expected) => {
    const c = parseCidr(cidr);
    expect({
      family: c.ip.family,
      ip: formatIp(c.ip),
      prefixLen: c.prefix,
      network: formatIp(networkIp(c)),
    }).toEqual(expected);
  });

  it('refuses what is not an address with a prefix length, as an internal error (999)', () => {
    expect(() => parseCidr('198.18.128.5')).toThrow(/has no prefix length/);
    expect(() => parseCidr('198.18.128.5/33')).toThrow(expect.objectContaining({ code: 999 }));
    expect(() => parseCidr('fe80::1%eth0/64')).toThrow(/invalid address/);
  });
});

describe('planAddresses', () => {
  const ipam = [{ address: '198.18.128.5/24' }, { address: 'fd00:b::5/64', gateway: 'fd00:b::fe' }];

  it('without isGateway: interface 2, no gateways, routes untouched', () => {
    const p = planAddresses(conf({}), ipam, [{ dst: '198.18.0.0/15' }]);
    expect(p.ips).toEqual([
      { address: '198.18.128.5/24', interface: 2 },
      { address: 'fd00:b::5/64', gateway: 'fd00:b::fe', interface: 2 },
    ]);
    expect(p.gateways).toEqual([]);
    expect(p.routes).toEqual([{ dst: '198.18.0.0/15' }]);
    expect(p.hasV6).toBe(true);
    expect(p.masq).toEqual([
      { ip: '198.18.128.5', family: 4, subnet: '198.18.128.0', prefixLen: 24 },
      { ip: 'fd00:b::5', family: 6, subnet: 'fd00:b::', prefixLen: 64 },
    ]);
  });

  it('isGateway fills missing gateways with network + 1 and lists bridge addresses', () => {
    const p = planAddresses(conf({ isGateway: true }), ipam, []);
    expect(p.ips[0]!.gateway).toBe('198.18.128.1');
    expect(p.gateways.map((g) => g.cidr)).toEqual(['198.18.128.1/24', 'fd00:b::fe/64']);
    expect(p.routes).toEqual([]);
  });

  it('isDefaultGateway adds one default route per family', () => {
    const p = planAddresses(conf({ isDefaultGateway: true }), [...ipam, { address: '198.18.129.5/24' }], []);
    expect(p.routes).toEqual([
      { dst: '0.0.0.0/0', gw: '198.18.128.1' },
      { dst: '::/0', gw: 'fd00:b::fe' },
    ]);
    expect(p.gateways.map((g) => g.cidr)).toEqual(['198.18.128.1/24', 'fd00:b::fe/64', '198.18.129.1/24']);
  });

  it('isDefaultGateway keeps an IPAM default route that has a gateway', () => {
    const p = planAddresses(
      conf({ isDefaultGateway: true }),
      [ipam[0]!],
      [{ dst: '0.0.0.0/0', gw: '198.18.128.254' }],
    );
    expect(p.routes).toEqual([{ dst: '0.0.0.0/0', gw: '198.18.128.254' }]);
  });

  it('isDefaultGateway takes an IPAM default route without gw as its own (one route, via the gateway)', () => {
    const p = planAddresses(conf({ isDefaultGateway: true }), ipam, [{ dst: '::/0' }, { dst: '0.0.0.0/0' }]);
    expect(p.routes).toEqual([{ dst: '::/0' }, { dst: '0.0.0.0/0' }]);
  });
});

describe('planAddresses with host-routed addresses (cluster networks)', () => {
  const ipam = [
    { address: '198.19.0.70/32', gateway: '198.19.0.1' },
    { address: 'fd00:b::46/128', gateway: 'fd00:b::1' },
  ];
  const routes = [
    { dst: '198.19.0.0/24', gw: '198.19.0.1' },
    { dst: '198.19.0.0/16', gw: '198.19.0.1' },
    { dst: 'fd00:b::/64', gw: 'fd00:b::1' },
    { dst: '198.18.5.0/24', gw: '198.19.0.1' },
  ];

  it('isDefaultGateway takes an IPAM default route without gw as its own here too', () => {
    const p = planAddresses(conf({ isGateway: true, isDefaultGateway: true }), ipam, [
      ...routes,
      { dst: '0.0.0.0/0' },
    ]);
    expect(p.routes.filter((r) => r.dst === '0.0.0.0/0')).toEqual([{ dst: '0.0.0.0/0' }]);
  });

  it('puts the gateway on the bridge with the widest pool route via it, and on-link routes first', () => {
    const p = planAddresses(conf({ isGateway: true, isDefaultGateway: true }), ipam, routes);
    expect(p.gateways).toEqual([
      { family: 4, cidr: '198.19.0.1/16', ip: '198.19.0.1', prefixLen: 16, hostRouted: true },
      { family: 6, cidr: 'fd00:b::1/64', ip: 'fd00:b::1', prefixLen: 64, hostRouted: true },
    ]);
    expect(p.routes.slice(0, 2)).toEqual([{ dst: '198.19.0.1/32' }, { dst: 'fd00:b::1/128' }]);
    expect(p.routes.slice(-2)).toEqual([
      { dst: '0.0.0.0/0', gw: '198.19.0.1' },
      { dst: '::/0', gw: 'fd00:b::1' },
    ]);
    expect(p.masq).toEqual([
      { ip: '198.19.0.70', family: 4, subnet: '198.19.0.0', prefixLen: 16 },
      { ip: 'fd00:b::46', family: 6, subnet: 'fd00:b::', prefixLen: 64 },
    ]);
  });

  it('an address equal to its gateway, or a host prefix without gateway, is not host-routed', () => {
    const p = planAddresses(conf({}), [{ address: '198.19.0.9/32' }], []);
    expect(p.gateways).toEqual([]);
    expect(p.routes).toEqual([]);
  });

  it('without isGateway, a host prefix with a gateway is an address like any (the reference adds it)', () => {
    const p = planAddresses(conf({}), [{ address: '192.168.1.10/32', gateway: '192.168.1.1' }], []);
    expect(p.ips).toEqual([{ address: '192.168.1.10/32', gateway: '192.168.1.1', interface: 2 }]);
    expect(p.gateways).toEqual([]);
    expect(p.routes).toEqual([]);
  });

  it('refuses without a pool route (code 7)', () => {
    expect(() => planAddresses(conf({ isGateway: true }), ipam, [])).toThrow(/no route via 198.19.0.1/);
  });
});
