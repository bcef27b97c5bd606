import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseResult, toVersion } from '../../src/cni-spec/convert';
import { ErrorCode } from '../../src/cni-spec/errors';
import type { Result } from '../../src/cni-spec/types/result';
import {
  SUPPORTED_VERSIONS,
  specHasIpVersionField,
  specHasMultipleIPs,
  specHasResultExtras,
} from '../../src/cni-spec/versions';
import { expectCniError } from './helpers';

const GOLDEN = join(__dirname, '../fixtures/golden');

function golden(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(GOLDEN, name), 'utf8')) as Record<string, unknown>;
}

/** Dual stack, two container interfaces, host interfaces, 1.1 route and interface extras, full dns. */
const FULL = golden('result-1.1.0.json') as unknown as Result;

/** Same JSON text means same keys, values and key order. */
function sameJson(actual: unknown, expected: unknown): void {
  expect(JSON.stringify(actual)).toBe(JSON.stringify(expected));
}

describe('toVersion: the full result printed in every version (golden files)', () => {
  it.each(SUPPORTED_VERSIONS)('%s', (v) => {
    sameJson(toVersion(FULL, v), golden(`result-${v}.json`));
  });
});

describe('parseResult: every golden file reads back and prints again unchanged', () => {
  it.each(SUPPORTED_VERSIONS)('%s', (v) => {
    const text = readFileSync(join(GOLDEN, `result-${v}.json`), 'utf8');
    const internal = parseResult(text, '1.1.0');
    expect(internal.cniVersion).toBe('1.1.0');
    sameJson(toVersion(internal, v), golden(`result-${v}.json`));
  });

  it('1.1.0 reads back to exactly the full result', () => {
    expect(parseResult(golden('result-1.1.0.json'), '1.1.0')).toEqual(FULL);
  });

  it('0.4.0 reads back to the 1.0.0 shape (only the version tags and the 1.1 extras differ)', () => {
    sameJson(
      toVersion(parseResult(golden('result-0.4.0.json'), '0.4.0'), '1.0.0'),
      golden('result-1.0.0.json'),
    );
  });

  it('0.2.0 read back and printed as 0.4.0 maps ip4/ip6 into ips and flattens routes', () => {
    sameJson(
      toVersion(parseResult(golden('result-0.2.0.json'), '0.2.0'), '0.4.0'),
      golden('from-0.2.0-to-0.4.0.json'),
    );
  });
});

describe('every version to every version: the shape of the target is respected', () => {
  const pairs = SUPPORTED_VERSIONS.flatMap((from) => SUPPORTED_VERSIONS.map((to) => [from, to] as const));
  it.each(pairs)('%s → %s', (from, to) => {
    const out = toVersion(parseResult(golden(`result-${from}.json`), from), to) as unknown as Record<
      string,
      unknown
    >;
    expect(out.cniVersion).toBe(to);
    const json = JSON.stringify(out);
    if (!specHasMultipleIPs(to)) {
      expect(Object.keys(out).sort()).toEqual(['cniVersion', 'dns', 'ip4', 'ip6']);
      expect(out.ip4).toMatchObject({ ip: '198.18.0.5/24', gateway: '198.18.0.1' });
      expect(out.ip6).toMatchObject({ ip: 'fd00:b::5/64', gateway: 'fd00:b::1' });
      return;
    }
    expect(json.includes('"ip4"') || json.includes('"ip6"')).toBe(false);
    const ips = out.ips as Array<Record<string, unknown>>;
    expect(ips.every((ip) => 'version' in ip === specHasIpVersionField(to))).toBe(true);
    for (const key of ['"socketPath"', '"pciID"', '"mtu"', '"advmss"', '"priority"', '"table"', '"scope"']) {
      expect(json.includes(key)).toBe(specHasResultExtras(to) && specHasResultExtras(from));
    }
    // From 0.1/0.2 only the one address per family survives; otherwise all four do.
    expect(ips.map((ip) => ip.address)).toEqual(
      specHasMultipleIPs(from)
        ? ['198.18.0.5/24', 'fd00:b::5/64', '198.19.0.5/24', 'fd00:c::5/64']
        : ['198.18.0.5/24', 'fd00:b::5/64'],
    );
  });
});

describe('toVersion details', () => {
  const ipamResult: Result = {
    cniVersion: '1.1.0',
    ips: [{ address: '198.18.0.9/24', gateway: '198.18.0.1' }],
    routes: [{ dst: '0.0.0.0/0' }],
  };

  it('prints an IPAM result (no interfaces, no indices) in 0.4.0 with version tags', () => {
    sameJson(toVersion(ipamResult, '0.4.0'), {
      cniVersion: '0.4.0',
      ips: [{ version: '4', address: '198.18.0.9/24', gateway: '198.18.0.1' }],
      routes: [{ dst: '0.0.0.0/0' }],
    });
  });

  it('omits empty lists and an empty dns, like the Go types do', () => {
    const sparse: Result = {
      cniVersion: '1.1.0',
      interfaces: [],
      ips: ipamResult.ips ?? [],
      routes: [],
      dns: { nameservers: [] },
    };
    sameJson(toVersion(sparse, '1.1.0'), {
      cniVersion: '1.1.0',
      ips: [{ address: '198.18.0.9/24', gateway: '198.18.0.1' }],
    });
    sameJson(toVersion(sparse, '0.2.0'), {
      cniVersion: '0.2.0',
      ip4: { ip: '198.18.0.9/24', gateway: '198.18.0.1' },
    });
  });

  it('keeps zero values that are real values (table 0, scope 0, interface index 0)', () => {
    const r: Result = {
      cniVersion: '1.1.0',
      ips: [{ interface: 0, address: '198.18.0.9/24' }],
      routes: [{ dst: '::/0', table: 0, scope: 0 }],
    };
    sameJson(toVersion(r, '1.1.0'), r);
  });

  it('labels the result with the requested version, whatever the handler wrote', () => {
    expect(toVersion({ ...ipamResult, cniVersion: '0.4.0' }, '1.1.0').cniVersion).toBe('1.1.0');
  });

  it.each(['0.1.0', '0.2.0'])('a result without IPs cannot be printed in %s (code 1)', (v) => {
    const l2only: Result = { cniVersion: '1.1.0', interfaces: [{ name: 'eth0', sandbox: '/run/netns/x' }] };
    expectCniError(() => toVersion(l2only, v), ErrorCode.IncompatibleCniVersion, /without IP addresses/);
    expectCniError(
      () => toVersion({ cniVersion: '1.1.0' }, v),
      ErrorCode.IncompatibleCniVersion,
      /without IP addresses/,
    );
  });

  it('a result without IPs prints fine from 0.3.0 on', () => {
    const l2only: Result = { cniVersion: '1.1.0', interfaces: [{ name: 'eth0', sandbox: '/run/netns/x' }] };
    sameJson(toVersion(l2only, '0.3.0'), {
      cniVersion: '0.3.0',
      interfaces: [{ name: 'eth0', sandbox: '/run/netns/x' }],
    });
  });

  it.each(['0.5.0', '2.0.0', '1.1', 'x'])(
    'an unsupported version %j is code 1 with the supported list',
    (v) => {
      const err = expectCniError(() => toVersion(FULL, v), ErrorCode.IncompatibleCniVersion);
      expect(err.details).toContain(JSON.stringify(SUPPORTED_VERSIONS));
    },
  );
});

describe('parseResult details', () => {
  it("uses the result's own cniVersion over the one it is given", () => {
    const r = parseResult({ cniVersion: '0.2.0', ip4: { ip: '198.18.0.5/24' } }, '1.1.0');
    expect(r).toEqual({ cniVersion: '1.1.0', ips: [{ address: '198.18.0.5/24' }] });
  });

  it('assumes the given version when the result names none', () => {
    expect(parseResult({ ips: [{ version: '6', address: 'fd00::5/64' }] }, '0.3.1')).toEqual({
      cniVersion: '1.1.0',
      ips: [{ address: 'fd00::5/64' }],
    });
  });

  it('infers the family of a 0.3.x address without a version tag', () => {
    const r = parseResult(
      { cniVersion: '0.3.0', ips: [{ address: 'fd00::5/64' }, { address: '198.18.0.5/24' }] },
      '0.3.0',
    );
    sameJson(toVersion(r, '0.3.0').ips, [
      { version: '6', address: 'fd00::5/64' },
      { version: '4', address: '198.18.0.5/24' },
    ]);
  });

  it('ignores keys it does not know and 1.1 fields in a 1.0.0 result', () => {
    const r = parseResult(
      { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', mtu: 9000 }], extra: 1 },
      '1.0.0',
    );
    expect(r).toEqual({ cniVersion: '1.1.0', interfaces: [{ name: 'eth0' }] });
  });

  it('reads null as absent, as Go does (a plugin in another language may write it)', () => {
    const r = parseResult(
      {
        cniVersion: '1.1.0',
        interfaces: [{ name: 'eth0', mac: null, sandbox: null, mtu: null }],
        ips: [{ address: '198.18.0.5/24', gateway: null, interface: null }],
        routes: null,
        dns: { nameservers: null, domain: null },
      },
      '1.1.0',
    );
    expect(r).toEqual({
      cniVersion: '1.1.0',
      interfaces: [{ name: 'eth0' }],
      ips: [{ address: '198.18.0.5/24' }],
    });
    expect(
      parseResult(
        { cniVersion: '0.2.0', ip4: { ip: '198.18.0.5/24', gateway: null, routes: null }, ip6: null },
        '0.2.0',
      ),
    ).toEqual({ cniVersion: '1.1.0', ips: [{ address: '198.18.0.5/24' }] });
  });

  it("reads a null version tag or cniVersion as absent: the address's family, the given version", () => {
    expect(
      parseResult({ cniVersion: null, ips: [{ version: null, address: 'fd00:1::5/64' }] }, '0.4.0'),
    ).toEqual({ cniVersion: '1.1.0', ips: [{ address: 'fd00:1::5/64' }] });
  });

  it('reads an empty version tag as absent: libcni 1.1 writes "" for an omitted one (chains, its cache)', () => {
    expect(
      parseResult({ cniVersion: '0.4.0', ips: [{ version: '', address: '198.18.251.2/24' }] }, '0.4.0'),
    ).toEqual({ cniVersion: '1.1.0', ips: [{ address: '198.18.251.2/24' }] });
  });

  it.each([
    ['not JSON', '{"cniVersion":', ErrorCode.DecodingFailure, /not valid JSON/],
    ['an array', '[]', ErrorCode.DecodingFailure, /expected an object/],
    ['cniVersion a number', { cniVersion: 1 }, ErrorCode.DecodingFailure, /cniVersion/],
    ['unsupported cniVersion', { cniVersion: '0.9.0' }, ErrorCode.IncompatibleCniVersion, /0\.9\.0/],
    ['ips not a list', { ips: {} }, ErrorCode.DecodingFailure, /result\.ips: expected an array/],
    [
      'an address that is a number',
      { ips: [{ address: 5 }] },
      ErrorCode.DecodingFailure,
      /result\.ips\[0\]\.address: expected a string/,
    ],
    [
      'a negative interface index',
      { ips: [{ address: '198.18.0.5/24', interface: -1 }] },
      ErrorCode.DecodingFailure,
      /interface/,
    ],
    [
      'an interface without name',
      { interfaces: [{ mac: 'x' }] },
      ErrorCode.DecodingFailure,
      /interfaces\[0\]\.name: missing/,
    ],
    [
      'a route without dst',
      { routes: [{ gw: '198.18.0.1' }] },
      ErrorCode.DecodingFailure,
      /routes\[0\]\.dst: missing/,
    ],
    [
      'dns nameservers not strings',
      { dns: { nameservers: [1] } },
      ErrorCode.DecodingFailure,
      /nameservers\[0\]/,
    ],
  ])('%s → code %i', (_label, json, code, msg) => {
    expectCniError(() => parseResult(json, '1.1.0'), code, msg);
  });

  it.each([
    ['0.4.0', { ips: [{ version: '5', address: '198.18.0.5/24' }] }, /version: expected "4" or "6"/],
    ['0.2.0', { ip4: { gateway: '198.18.0.1' } }, /ip4\.ip: missing/],
    ['0.2.0', { ip4: { ip: '198.18.0.5/24', routes: [{}] } }, /ip4\.routes\[0\]\.dst: missing/],
  ])('a malformed %s result → code 6', (v, json, msg) => {
    expectCniError(() => parseResult(json, v), ErrorCode.DecodingFailure, msg);
  });
});
