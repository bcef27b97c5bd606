// IP text forms must equal Go's (they are lease file names): checked against ip-address as the oracle.
import { Address4, Address6 } from 'ip-address';
import { describe, expect, test } from 'vitest';
import { parseCidr } from '../../src/address/cidr';
import { formatIp, parseIp, parseIpAsWritten } from '../../src/address/ip';

describe('parseIp / formatIp', () => {
  test.each([
    ['198.18.64.1', 4],
    ['0.0.0.0', 4],
    ['255.255.255.255', 4],
    ['fd00:5::2', 6],
    ['fd00:5:0:0:0:0:0:2', 6],
    ['2001:db8:0:1::1', 6],
    ['2001:db8::1:0:0:1', 6],
    ['::', 6],
    ['::1', 6],
    ['fd00::', 6],
    ['2001:DB8:0:0:1:0:0:1', 6],
    ['2001:db8:1:0:1:1:1:1', 6],
    ['::ffff:198.18.64.9', 4],
    ['64:ff9b::198.18.0.1', 6],
  ])('%s', (text, family) => {
    const ip = parseIp(text);
    expect(ip?.family).toBe(family);
    const oracle =
      family === 4 ? Address4.fromBigInt(ip!.value).correctForm() : new Address6(text).correctForm();
    expect(formatIp(ip!)).toBe(oracle);
    // Round trip through our own parser.
    expect(parseIp(formatIp(ip!))).toEqual(ip);
    if (family === 6) expect(ip!.value).toBe(new Address6(text).bigInt());
  });

  test.each([
    '',
    '1.2.3',
    '1.2.3.4.5',
    '256.1.1.1',
    '01.2.3.4',
    '1::2::3',
    'fd00:5::g',
    '1:2:3:4:5:6:7:8:9',
    'abc',
    '1.2.3.4/24',
    'fe80::1%eth0',
  ])('rejects %j', (text) => {
    expect(parseIp(text)).toBeUndefined();
  });

  test('parseIpAsWritten keeps the family the text says', () => {
    expect(parseIpAsWritten('::ffff:198.18.64.9')).toEqual({
      family: 6,
      value: new Address6('::ffff:198.18.64.9').bigInt(),
    });
    expect(parseIpAsWritten('198.18.64.9')).toEqual(parseIp('198.18.64.9'));
    expect(parseIpAsWritten('fe80::1%eth0')).toBeUndefined();
  });

  test('parseCidr keeps host bits and checks the prefix', () => {
    expect(parseCidr('198.18.64.5/24')).toEqual({
      ip: { family: 4, value: parseIp('198.18.64.5')!.value },
      prefix: 24,
    });
    expect(parseCidr('fd00:5::/64')?.prefix).toBe(64);
    expect(parseCidr('198.18.64.0/33')).toBeUndefined();
    expect(parseCidr('198.18.64.0')).toBeUndefined();
  });
});
