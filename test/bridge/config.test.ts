import { describe, expect, it } from 'vitest';
import { CniError } from '../../src/cni-spec/errors';
import { parseBridgeConf, parseVlanTrunk, type BridgeConf } from '../../src/bridge/config';

function parse(
  config: Record<string, unknown>,
  opts: { cniArgs?: Record<string, string>; runtime?: Record<string, unknown> } = {},
): BridgeConf {
  const runtime = opts.runtime ?? {};
  return parseBridgeConf({
    config: { cniVersion: '1.0.0', name: 'net1', type: 'berth-bridge', ...config },
    cniArgs: new Map(Object.entries(opts.cniArgs ?? {})),
    runtimeConfig: (key) => {
      const k = Object.keys(runtime).find((x) => x.toLowerCase() === key.toLowerCase());
      return k === undefined ? undefined : runtime[k];
    },
  });
}

function parseError(config: Record<string, unknown>): CniError {
  try {
    parse(config);
  } catch (err) {
    expect(err).toBeInstanceOf(CniError);
    return err as CniError;
  }
  throw new Error(`expected ${JSON.stringify(config)} to be rejected`);
}

describe('parseBridgeConf defaults', () => {
  it('matches the reference defaults', () => {
    const c = parse({ ipam: { type: 'host-local', subnet: '198.18.128.0/24' } });
    expect(c).toEqual({
      network: 'net1',
      cniVersion: '1.0.0',
      bridge: 'cni0',
      isGateway: false,
      isDefaultGateway: false,
      forceAddress: false,
      ipMasq: false,
      ipMasqBackend: undefined,
      mtu: undefined,
      hairpinMode: false,
      promiscMode: false,
      vlan: 0,
      vlanTrunk: [],
      preserveDefaultVlan: true,
      enableDad: false,
      macSpoofCheck: false,
      disableContainerInterface: false,
      portIsolation: false,
      ipamType: 'host-local',
      dns: undefined,
      mac: undefined,
    } satisfies BridgeConf);
  });

  it.each([
    [{}, undefined],
    [{ ipam: {} }, undefined],
    [{ ipam: { type: '' } }, undefined],
    [{ ipam: { type: 'berth-ipam' } }, 'berth-ipam'],
  ])('ipam %j gives ipamType %s (L2-only when no type)', (cfg, type) => {
    expect(parse(cfg).ipamType).toBe(type);
  });
});

describe('parseBridgeConf options', () => {
  it.each<[string, Record<string, unknown>, Partial<BridgeConf>]>([
    ['bridge name', { bridge: 'br-x' }, { bridge: 'br-x' }],
    ['isGateway', { isGateway: true }, { isGateway: true, isDefaultGateway: false }],
    [
      'isDefaultGateway implies isGateway',
      { isDefaultGateway: true },
      { isGateway: true, isDefaultGateway: true },
    ],
    ['forceAddress', { forceAddress: true }, { forceAddress: true }],
    ['ipMasq', { ipMasq: true }, { ipMasq: true }],
    ['ipMasqBackend nftables', { ipMasqBackend: 'nftables' }, { ipMasqBackend: 'nftables' }],
    ['ipMasqBackend iptables', { ipMasqBackend: 'iptables' }, { ipMasqBackend: 'iptables' }],
    ['mtu', { mtu: 1400 }, { mtu: 1400 }],
    ['mtu 0 means kernel default', { mtu: 0 }, { mtu: undefined }],
    ['hairpinMode', { hairpinMode: true }, { hairpinMode: true }],
    ['promiscMode', { promiscMode: true }, { promiscMode: true }],
    ['vlan', { vlan: 100 }, { vlan: 100 }],
    ['vlan 0 is none', { vlan: 0 }, { vlan: 0 }],
    [
      'vlanTrunk ids and ranges, sorted and unique',
      { vlanTrunk: [{ id: 300 }, { minID: 101, maxID: 103 }, { id: 102 }] },
      { vlanTrunk: [101, 102, 103, 300] },
    ],
    ['vlan with vlanTrunk', { vlan: 5, vlanTrunk: [{ id: 7 }] }, { vlan: 5, vlanTrunk: [7] }],
    ['preserveDefaultVlan false', { preserveDefaultVlan: false }, { preserveDefaultVlan: false }],
    ['enabledad', { enabledad: true }, { enableDad: true }],
    ['macspoofchk', { macspoofchk: true }, { macSpoofCheck: true }],
    [
      'disableContainerInterface without IPAM',
      { disableContainerInterface: true },
      { disableContainerInterface: true },
    ],
    ['portIsolation as the docs write it', { portIsolation: 'true' }, { portIsolation: true }],
    ['"false" string', { ipMasq: 'false', hairpinMode: 'true' }, { ipMasq: false, hairpinMode: true }],
    [
      'dns replaces IPAM dns',
      { dns: { nameservers: ['198.18.0.53'], search: ['a.example'] } },
      { dns: { nameservers: ['198.18.0.53'], search: ['a.example'] } },
    ],
    ['empty dns keeps IPAM dns', { dns: {} }, { dns: undefined }],
  ])('%s', (_name, cfg, expected) => {
    expect(parse(cfg)).toMatchObject(expected);
  });
});

describe('parseBridgeConf rejects invalid configs with code 7 naming the key', () => {
  it.each<[Record<string, unknown>, string]>([
    [{ hairpinMode: true, promiscMode: true }, 'hairpinMode'],
    [{ ipam: { type: 'host-local' }, disableContainerInterface: true }, 'disableContainerInterface'],
    [{ vlan: -1 }, 'vlan'],
    [{ vlan: 4095 }, 'vlan'],
    [{ vlan: 1.5 }, 'vlan'],
    [{ vlan: '10' }, 'vlan'],
    [{ vlanTrunk: [{ id: 0 }] }, 'vlanTrunk'],
    [{ vlanTrunk: [{ id: 4095 }] }, 'vlanTrunk'],
    [{ vlanTrunk: [{ minID: 10 }] }, 'vlanTrunk'],
    [{ vlanTrunk: [{ maxID: 10 }] }, 'vlanTrunk'],
    [{ vlanTrunk: [{ minID: 20, maxID: 10 }] }, 'vlanTrunk'],
    [{ vlanTrunk: [{ minID: 0, maxID: 10 }] }, 'vlanTrunk'],
    [{ vlanTrunk: { id: 1 } }, 'vlanTrunk'],
    [{ ipMasq: 'yes' }, 'ipMasq'],
    [{ isGateway: 1 }, 'isGateway'],
    [{ ipMasqBackend: 'pf' }, 'ipMasqBackend'],
    [{ mtu: -5 }, 'mtu'],
    [{ mtu: 70000 }, 'mtu'],
    [{ mtu: 40 }, 'mtu'],
    [{ mtu: '1500' }, 'mtu'],
    [{ bridge: 'a-name-longer-than-15' }, 'bridge'],
    [{ bridge: 'a/b' }, 'bridge'],
    [{ bridge: 'x%d' }, 'bridge'],
    [{ bridge: 'cni0\u0000x' }, 'bridge'],
    [{ bridge: 'br\u001b' }, 'bridge'],
    // The same rule as CNI_IFNAME (cni-spec/identifiers.ts): bytes, not characters, count.
    [{ bridge: '' }, 'bridge'],
    [{ bridge: '..' }, 'bridge'],
    [{ bridge: 'br:0' }, 'bridge'],
    [{ bridge: 'br 0' }, 'bridge'],
    [{ bridge: 'brücke-ééééé' }, 'bridge'],
    [{ bridge: 3 }, 'bridge'],
    [{ ipam: { type: '../x' } }, 'ipam'],
    [{ ipam: 'host-local' }, 'ipam'],
    [{ dns: { nameservers: '1.1.1.1' } }, 'dns'],
    [{ name: '' }, 'name'],
  ])('%j → %s', (cfg, key) => {
    const err = parseError(cfg);
    expect(err.code).toBe(7);
    expect(err.message).toContain(key);
  });
});

describe('container MAC', () => {
  it('CNI_ARGS MAC= is the lowest precedence', () => {
    expect(parse({}, { cniArgs: { MAC: '02:00:00:00:00:AA' } }).mac).toBe('02:00:00:00:00:aa');
  });
  it('args.cni.mac overrides CNI_ARGS', () => {
    expect(
      parse({ args: { cni: { mac: '02:00:00:00:00:bb' } } }, { cniArgs: { MAC: '02:00:00:00:00:aa' } }).mac,
    ).toBe('02:00:00:00:00:bb');
  });
  it('runtimeConfig.mac overrides both (key case-insensitive)', () => {
    expect(
      parse(
        { args: { cni: { mac: '02:00:00:00:00:bb' } } },
        { cniArgs: { MAC: '02:00:00:00:00:aa' }, runtime: { Mac: '02:00:00:00:00:cc' } },
      ).mac,
    ).toBe('02:00:00:00:00:cc');
  });
  it.each(['nonsense', '02:00:00:00:00', '01:00:5e:00:00:01'])('rejects %s with code 7', (mac) => {
    expect(() => parse({}, { runtime: { mac } })).toThrowError(/MAC/);
  });
});

describe('parseVlanTrunk', () => {
  it('is empty without a trunk', () => {
    expect(parseVlanTrunk(undefined)).toEqual([]);
  });
  it('expands a full range', () => {
    expect(parseVlanTrunk([{ minID: 4090, maxID: 4094 }])).toEqual([4090, 4091, 4092, 4093, 4094]);
  });
});
