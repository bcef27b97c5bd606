import { describe, expect, it } from 'vitest';
import { ErrorCode } from '../../src/cni-spec/errors';
import {
  SUPPORTED_VERSIONS,
  compareVersions,
  isSupportedVersion,
  specHasCheck,
  specHasGcStatus,
  specHasIpVersionField,
  specHasMultipleIPs,
  specHasPrevResultOnDel,
  specHasResultExtras,
  unsupportedVersionError,
  versionInfo,
} from '../../src/cni-spec/versions';

// [version, CHECK, GC/STATUS, many IPs, ips[].version, 1.1 extras, prevResult on DEL] from cni-spec.md section 7.
const CAPABILITIES = [
  ['0.1.0', false, false, false, false, false, false],
  ['0.2.0', false, false, false, false, false, false],
  ['0.3.0', false, false, true, true, false, false],
  ['0.3.1', false, false, true, true, false, false],
  ['0.4.0', true, false, true, true, false, true],
  ['1.0.0', true, false, true, false, false, true],
  ['1.1.0', true, true, true, false, true, true],
] as const;

describe('capability predicates', () => {
  it('cover exactly the supported versions', () => {
    expect(CAPABILITIES.map((row) => row[0])).toEqual([...SUPPORTED_VERSIONS]);
  });

  it.each(CAPABILITIES)('%s', (v, check, gcStatus, multi, ipVersion, extras, prevOnDel) => {
    expect({
      check: specHasCheck(v),
      gcStatus: specHasGcStatus(v),
      multi: specHasMultipleIPs(v),
      ipVersion: specHasIpVersionField(v),
      extras: specHasResultExtras(v),
      prevOnDel: specHasPrevResultOnDel(v),
    }).toEqual({ check, gcStatus, multi, ipVersion, extras, prevOnDel });
  });
});

describe('version strings', () => {
  it.each([
    ['0.4.0', '0.3.1', 1],
    ['0.3.1', '0.4.0', -1],
    ['1.0.0', '0.10.0', 1],
    ['0.10.0', '0.9.0', 1],
    ['1.1.0', '1.1.0', 0],
  ])('compareVersions(%s, %s) = %i (numeric, not textual)', (a, b, want) => {
    expect(compareVersions(a, b)).toBe(want);
  });

  it('refuses to order what is not a version', () => {
    expect(() => compareVersions('1.1', '1.0.0')).toThrow(RangeError);
  });

  it('supports the seven versions only, by exact string', () => {
    expect(SUPPORTED_VERSIONS.every(isSupportedVersion)).toBe(true);
    expect(['0.5.0', '1.1', '1.1.0 ', 'v1.1.0', '1.2.0'].some(isSupportedVersion)).toBe(false);
  });

  it('VERSION answers 1.1.0 and all seven, oldest first', () => {
    expect(JSON.stringify(versionInfo())).toBe(
      '{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}',
    );
  });

  it('an unsupported version is code 1 with the supported list', () => {
    const err = unsupportedVersionError('config', '2.0.0');
    expect(err.toJSON()).toEqual({
      code: ErrorCode.IncompatibleCniVersion,
      msg: 'incompatible CNI versions: config is "2.0.0"',
      details: 'config is "2.0.0", plugin supports ["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]',
    });
  });
});
