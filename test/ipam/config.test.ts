// Config parsing: host-local's keys, merge order and defaults, berth's keys, and code-7 validation naming the problem.
import { describe, expect, test } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { formatIp } from '../../src/address/ip';
import {
  type ConfigInput,
  DEFAULT_DATA_DIR,
  normalDataDir,
  parseIpamConfig,
  parseStoreLocation,
} from '../../src/ipam/config';
import { describeRangeSet } from '../../src/ipam/range-set';

function input(
  ipam: Record<string, unknown>,
  extra: Partial<ConfigInput> & { top?: Record<string, unknown> } = {},
): ConfigInput {
  const runtime = (extra.top?.runtimeConfig ?? {}) as Record<string, unknown>;
  return {
    config: {
      cniVersion: '1.1.0',
      name: 'net1',
      type: 'berth-ipam',
      ipam: { type: 'berth-ipam', ...ipam },
      ...extra.top,
    },
    cniVersion: extra.cniVersion ?? '1.1.0',
    cniArgs: extra.cniArgs ?? new Map(),
    args: extra.args ?? {},
    runtimeConfig: extra.runtimeConfig ?? ((k) => runtime[k]),
  };
}

function failure(i: ConfigInput): CniError {
  try {
    parseIpamConfig(i);
  } catch (err) {
    return err as CniError;
  }
  throw new Error('expected a failure');
}

describe('defaults (host-local semantics)', () => {
  test('IPv4 /24: start .1, end .254, gateway .1; dataDir default; round-robin; releaseOnReboot', () => {
    const c = parseIpamConfig(input({ subnet: '198.18.64.0/24' }));
    expect(describeRangeSet(c.rangeSets[0]!)).toBe('198.18.64.1-198.18.64.254');
    expect(formatIp(c.rangeSets[0]![0]!.gateway)).toBe('198.18.64.1');
    expect(c.dataDir).toBe(DEFAULT_DATA_DIR);
    expect(c.policy).toBe('round-robin');
    expect(c.releaseOnReboot).toBe(true);
    expect(c.routes).toEqual([]);
    expect(c.requested).toEqual([]);
  });
  test('an empty dataDir is the default, as in host-local (ADD and the DEL-only parse alike)', () => {
    expect(parseIpamConfig(input({ subnet: '198.18.64.0/24', dataDir: '' })).dataDir).toBe(DEFAULT_DATA_DIR);
    expect(parseStoreLocation({ name: 'n', ipam: { type: 'berth-ipam', dataDir: '' } }).dataDir).toBe(
      DEFAULT_DATA_DIR,
    );
  });
  test('IPv6 /64 runs to the last address of the subnet', () => {
    const c = parseIpamConfig(input({ ranges: [[{ subnet: 'fd00:5::/64' }]] }));
    expect(describeRangeSet(c.rangeSets[0]!)).toBe('fd00:5::1-fd00:5::ffff:ffff:ffff:ffff');
  });
  test('explicit rangeStart/rangeEnd/gateway are kept', () => {
    const c = parseIpamConfig(
      input({
        ranges: [
          [
            {
              subnet: '198.18.64.0/24',
              rangeStart: '198.18.64.10',
              rangeEnd: '198.18.64.20',
              gateway: '198.18.64.254',
            },
          ],
        ],
      }),
    );
    expect(describeRangeSet(c.rangeSets[0]!)).toBe('198.18.64.10-198.18.64.20');
    expect(formatIp(c.rangeSets[0]![0]!.gateway)).toBe('198.18.64.254');
  });
});

describe('merge order', () => {
  test('runtimeConfig.ipRanges, then legacy subnet, then ranges', () => {
    const c = parseIpamConfig(
      input(
        { subnet: '198.18.65.0/24', ranges: [[{ subnet: 'fd00:5::/64' }]] },
        { top: { runtimeConfig: { ipRanges: [[{ subnet: '198.18.66.0/24' }]] } } },
      ),
    );
    expect(c.rangeSets.map((s) => describeRangeSet(s))).toEqual([
      '198.18.66.1-198.18.66.254',
      '198.18.65.1-198.18.65.254',
      'fd00:5::1-fd00:5::ffff:ffff:ffff:ffff',
    ]);
  });
  test('requested IPs: CNI_ARGS IP, then args.cni.ips, then runtimeConfig.ips; prefixes ignored; duplicates merged', () => {
    const c = parseIpamConfig(
      input(
        { ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]] },
        {
          cniArgs: new Map([['IP', '198.18.64.7/24']]),
          args: { ips: ['fd00:5::7', '198.18.64.7'] },
          top: { runtimeConfig: { ips: ['198.18.64.8/24'] } },
        },
      ),
    );
    expect(c.requested.map(formatIp)).toEqual(['198.18.64.7', 'fd00:5::7', '198.18.64.8']);
  });
  test('berth keys', () => {
    const c = parseIpamConfig(
      input({
        subnet: '198.18.64.0/24',
        exclude: ['198.18.64.5', '198.18.64.16/28'],
        allocation: 'lowest',
        releaseOnReboot: false,
        dataDir: '/run/x',
        resolvConf: '/etc/resolv.conf',
        routes: [{ dst: '0.0.0.0/0' }, { dst: '198.18.0.0/15', gw: '198.18.64.1' }],
      }),
    );
    expect(c.exclude.map((e) => `${formatIp(e.ip)}/${e.prefix}`)).toEqual([
      '198.18.64.5/32',
      '198.18.64.16/28',
    ]);
    expect(c.policy).toBe('lowest');
    expect(c.releaseOnReboot).toBe(false);
    expect(c.dataDir).toBe('/run/x');
    expect(c.resolvConf).toBe('/etc/resolv.conf');
    expect(c.routes).toEqual([{ dst: '0.0.0.0/0' }, { dst: '198.18.0.0/15', gw: '198.18.64.1' }]);
  });
});

describe('validation: code 7 naming the problem', () => {
  test.each<[string, Record<string, unknown>, RegExp, Partial<ConfigInput>?]>([
    ['no ipam key', { __drop: true }, /'ipam' key/],
    ['no ranges', {}, /no IP ranges specified/],
    ['host bits set', { subnet: '198.18.64.5/24' }, /host bits set.*network address is 198\.18\.64\.0/],
    ['too small v4', { subnet: '198.18.64.0/31' }, /too small/],
    ['too small v6', { ranges: [[{ subnet: 'fd00:5::/127' }]] }, /too small/],
    ['not a cidr', { subnet: 'banana' }, /not a CIDR/],
    [
      'rangeStart outside',
      { ranges: [[{ subnet: '198.18.64.0/24', rangeStart: '198.18.65.1' }]] },
      /rangeStart 198\.18\.65\.1 not in network 198\.18\.64\.0\/24/,
    ],
    [
      'rangeEnd outside',
      { ranges: [[{ subnet: '198.18.64.0/24', rangeEnd: '198.18.63.1' }]] },
      /rangeEnd 198\.18\.63\.1 not in network/,
    ],
    [
      'start after end',
      { ranges: [[{ subnet: '198.18.64.0/24', rangeStart: '198.18.64.9', rangeEnd: '198.18.64.3' }]] },
      /is after rangeEnd/,
    ],
    [
      'mixed families',
      { ranges: [[{ subnet: '198.18.64.0/24' }, { subnet: 'fd00:5::/64' }]] },
      /mixed address families/,
    ],
    [
      'overlap in a set',
      { ranges: [[{ subnet: '198.18.64.0/24' }, { subnet: '198.18.64.0/25' }]] },
      /overlap/,
    ],
    [
      'overlap between sets',
      { ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: '198.18.64.128/25' }]] },
      /range set 0 overlaps with 1/,
    ],
    [
      'gateway of another family',
      { ranges: [[{ subnet: '198.18.64.0/24', gateway: 'fd00:5::1' }]] },
      /gateway fd00:5::1 is not of the subnet's family/,
    ],
    // host-local decodes the old-style keys whatever else is present (issue 12 item 2).
    [
      'rangeStart of the wrong type beside ranges',
      { rangeStart: {}, gateway: true, ranges: [[{ subnet: '198.18.64.0/24' }]] },
      /ipam\.rangeStart must be an IP address, got \{\}/,
    ],
    [
      'gateway of the wrong type beside ranges',
      { gateway: true, ranges: [[{ subnet: '198.18.64.0/24' }]] },
      /ipam\.gateway must be an IP address, got true/,
    ],
    [
      'rangeEnd not an IP beside ranges',
      { rangeEnd: 'foo', ranges: [[{ subnet: '198.18.64.0/24' }]] },
      /ipam\.rangeEnd must be an IP address, got "foo"/,
    ],
    [
      'subnet of the wrong type beside ranges',
      { subnet: 5, ranges: [[{ subnet: '198.18.64.0/24' }]] },
      /ipam\.subnet must be a CIDR.*got 5/,
    ],
    ['ranges not a list', { ranges: { subnet: '198.18.64.0/24' } }, /ipam\.ranges must be a list/],
    ['empty range set', { ranges: [[]] }, /non-empty list/],
    ['relative dataDir', { subnet: '198.18.64.0/24', dataDir: 'data' }, /dataDir must be an absolute path/],
    ['bad exclude', { subnet: '198.18.64.0/24', exclude: ['x'] }, /exclude.*not an IP address or CIDR/],
    ['bad allocation', { subnet: '198.18.64.0/24', allocation: 'random' }, /allocation must be/],
    [
      'bad releaseOnReboot',
      { subnet: '198.18.64.0/24', releaseOnReboot: 'no' },
      /releaseOnReboot must be true or false/,
    ],
    [
      'bad route',
      { subnet: '198.18.64.0/24', routes: [{ dst: '0.0.0.0' }] },
      /routes\[0\]\.dst must be a CIDR/,
    ],
    [
      'bad route gw',
      { subnet: '198.18.64.0/24', routes: [{ dst: '0.0.0.0/0', gw: 'x' }] },
      /routes\[0\]\.gw must be an IP/,
    ],
    [
      'bad runtime ip',
      { subnet: '198.18.64.0/24' },
      /runtimeConfig\.ips\[0\]: cannot understand ip/,
      { runtimeConfig: (k) => (k === 'ips' ? ['nope'] : undefined) },
    ],
    [
      'bad args ip',
      { subnet: '198.18.64.0/24' },
      /args\.cni\.ips\[0\]: cannot understand ip/,
      { args: { ips: ['1.2.3'] } },
    ],
    [
      'two v4 sets before 0.3.0',
      { ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: '198.18.65.0/24' }]] },
      /CNI version 0\.2\.0 does not support more than 1 address per family/,
      { cniVersion: '0.2.0' },
    ],
  ])('%s', (_name, ipam, msg, override) => {
    const i = input(ipam, override);
    if (ipam.__drop === true) delete (i.config as Record<string, unknown>).ipam;
    const err = failure(i);
    expect(err).toBeInstanceOf(CniError);
    expect(err.code).toBe(ErrorCode.InvalidNetworkConfig);
    expect(err.message).toMatch(msg);
  });

  test('well-formed old-style keys without a subnet are ignored, as host-local does', () => {
    const c = parseIpamConfig(
      input({ rangeStart: '198.18.1.1', gateway: null, ranges: [[{ subnet: '198.18.64.0/24' }]] }),
    );
    expect(describeRangeSet(c.rangeSets[0]!)).toBe('198.18.64.1-198.18.64.254');
  });

  test('CNI_ARGS IP= that is not an IP is code 4', () => {
    const err = failure(input({ subnet: '198.18.64.0/24' }, { cniArgs: new Map([['IP', 'x']]) }));
    expect(err.code).toBe(ErrorCode.InvalidEnvironmentVariables);
    expect(err.message).toMatch(/CNI_ARGS IP/);
  });

  test.each(['../x', '.hidden', 'a/b', ''])(
    'network name %j that would escape dataDir is refused',
    (name) => {
      const i = input({ subnet: '198.18.64.0/24' });
      (i.config as Record<string, unknown>).name = name;
      const err = failure(i);
      expect(err.code).toBe(ErrorCode.InvalidNetworkConfig);
      expect(err.message).toMatch(/invalid network name/);
    },
  );
});

describe('normalDataDir', () => {
  test("one spelling per data dir, lexical as the lease files' paths (path.join) are", () => {
    expect(normalDataDir('/x/')).toBe('/x');
    expect(normalDataDir('//x//y/./')).toBe('/x/y');
    expect(normalDataDir('/data/link/../nets')).toBe('/data/nets');
    expect(normalDataDir('/')).toBe('/');
    expect(normalDataDir('rel')).toBe(`${process.cwd()}/rel`);
  });
});
