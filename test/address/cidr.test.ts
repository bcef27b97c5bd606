// Prefix arithmetic of the shared address room, against ip-address as the oracle.
import { Address4, Address6 } from 'ip-address';
import { describe, expect, test } from 'vitest';
import {
  cidrContains,
  formatCidr,
  lastOf,
  networkIp,
  networkOf,
  parseCidr,
  parseCidrAsWritten,
} from '../../src/address/cidr';
import { formatIp, parseIp } from '../../src/address/ip';

describe('network and last address', () => {
  test.each([
    '198.18.64.5/24',
    '198.18.0.2/20',
    '198.18.0.2/0',
    '198.18.0.2/32',
    'fd00:5::7/64',
    'fd00::/8',
    '::1/128',
  ])('%s', (text) => {
    const c = parseCidr(text)!;
    const oracle = text.includes(':') ? new Address6(text) : new Address4(text);
    expect(networkOf(c)).toBe(oracle.startAddress().bigInt());
    expect(lastOf(c)).toBe(oracle.endAddress().bigInt());
    expect(formatIp(networkIp(c))).toBe(oracle.startAddress().correctForm());
  });
});

describe('parse', () => {
  test('the IPv4-mapped form: folded by parseCidr only where it is a plain address, kept as written otherwise', () => {
    expect(parseCidr('::ffff:198.18.0.1/120')).toBeUndefined();
    expect(parseCidrAsWritten('::ffff:198.18.0.1/120')).toEqual({
      ip: { family: 6, value: new Address6('::ffff:198.18.0.1').bigInt() },
      prefix: 120,
    });
  });

  test.each([
    '198.18.0.0',
    '198.18.0.0/33',
    'fd00::/129',
    '198.18.0.0/024',
    '198.18.0.0/',
    '/24',
    'x/24',
    'fe80::1%eth0/64',
  ])('rejects %j', (text) => {
    expect(parseCidr(text)).toBeUndefined();
    expect(parseCidrAsWritten(text)).toBeUndefined();
  });
});

test('cidrContains checks family and prefix', () => {
  const c = parseCidr('198.18.64.0/24')!;
  expect(cidrContains(c, parseIp('198.18.64.255')!)).toBe(true);
  expect(cidrContains(c, parseIp('198.18.65.0')!)).toBe(false);
  expect(cidrContains(parseCidr('::/0')!, parseIp('198.18.64.1')!)).toBe(false);
  expect(formatCidr(c.ip, c.prefix)).toBe('198.18.64.0/24');
});
