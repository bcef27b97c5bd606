// Pure pieces of the kernel room: address bytes, attribute encoding, and the error mapping.
import { isIP } from 'node:net';
import { describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import {
  NetlinkError,
  fromErrno,
  netlinkCode,
  toKernelCniError,
  toNetlinkError,
} from '../../src/netlink/errors';
import { parseIpAsWritten } from '../../src/address/ip';
import { bytesToIp, ipToBytes, ipv4Broadcast, parseCidr } from '../../src/netlink/ip-bytes';
import {
  NLA_F_NESTED,
  decodeAttrList,
  decodeAttrs,
  encodeAttrs,
  readStr,
  str,
  u16,
  u32,
} from '../../src/netlink/rtnl-codec';

describe('ip bytes', () => {
  it.each([
    ['198.18.0.1', 'c6120001'],
    ['0.0.0.0', '00000000'],
    ['fd00:b3::1', 'fd0000b3000000000000000000000001'],
    ['::', '00000000000000000000000000000000'],
    ['::1', '00000000000000000000000000000001'],
    ['fe80::1:2', 'fe800000000000000000000000010002'],
    ['2001:db8:0:1:1:1:1:1', '20010db8000000010001000100010001'],
    ['::ffff:198.18.0.1', '00000000000000000000ffffc6120001'],
  ])('%s <-> %s', (text, hex) => {
    expect(ipToBytes(text).toString('hex')).toBe(hex);
    // Formatting gives the canonical (RFC 5952) text, which parses back to the same bytes.
    const back = bytesToIp(Buffer.from(hex, 'hex'));
    expect(isIP(back)).not.toBe(0);
    expect(ipToBytes(back).toString('hex')).toBe(hex);
  });

  it('formats IPv6 canonically: longest zero run compressed, a single zero group not', () => {
    expect(bytesToIp(ipToBytes('fd00:00b3:0000:0000:0000:0000:0000:0001'))).toBe('fd00:b3::1');
    expect(bytesToIp(ipToBytes('2001:db8:0:1:1:1:1:1'))).toBe('2001:db8:0:1:1:1:1:1');
    expect(bytesToIp(ipToBytes('2001:0:0:1:0:0:0:1'))).toBe('2001:0:0:1::1');
    expect(bytesToIp(ipToBytes('::'))).toBe('::');
  });

  it('parses CIDRs and rejects bad ones with EINVAL', () => {
    expect(parseCidr('198.18.0.0/20')).toEqual({ ip: parseIpAsWritten('198.18.0.0'), prefix: 20 });
    expect(parseCidr('fd00:b3::/64')).toEqual({ ip: parseIpAsWritten('fd00:b3::'), prefix: 64 });
    expect(parseCidr('198.18.0.1')).toEqual({ ip: parseIpAsWritten('198.18.0.1'), prefix: 32 });
    // The kernel is told the family the text says: an IPv4-mapped address stays IPv6 (16 bytes).
    expect(parseCidr('::ffff:198.18.0.1/128').ip.family).toBe(6);
    expect(() => parseCidr('198.18.0.0/020')).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => parseCidr('198.18.0.0/33')).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => parseCidr('nope/3')).toThrow(NetlinkError);
  });

  it('computes IPv4 broadcast addresses', () => {
    expect(ipv4Broadcast('198.18.1.2', 24)).toBe('198.18.1.255');
    expect(ipv4Broadcast('198.18.0.2', 20)).toBe('198.18.15.255');
    expect(ipv4Broadcast('198.18.0.2', 0)).toBe('255.255.255.255');
    expect(ipv4Broadcast('198.18.0.2', 30)).toBe('198.18.0.3');
  });
});

describe('attributes', () => {
  it('pads to 4 bytes and nests', () => {
    const buf = encodeAttrs([
      [3, str('abc')],
      [
        18,
        [
          [1, str('bridge')],
          [2, [[7, Buffer.from([1])]]],
        ],
      ],
      [4, u32(1400)],
    ]);
    expect(buf.length % 4).toBe(0);
    const top = decodeAttrs(buf);
    expect(readStr(top.get(3))).toBe('abc');
    expect(top.get(4)!.readUInt32LE(0)).toBe(1400);
    const info = decodeAttrs(top.get(18)!);
    expect(readStr(info.get(1))).toBe('bridge');
    expect(decodeAttrs(info.get(2)!).get(7)).toEqual(Buffer.from([1]));
  });

  it('keeps the NLA_F_NESTED flag on the wire and masks it when decoding', () => {
    const buf = encodeAttrs([[12 | NLA_F_NESTED, [[4, Buffer.from([1])]]]]);
    expect(buf.readUInt16LE(2)).toBe(12 | 0x8000);
    expect(decodeAttrs(buf).has(12)).toBe(true);
  });

  it('keeps repeated attributes in order when asked', () => {
    const buf = encodeAttrs([
      [2, Buffer.concat([u16(2), u16(10)])],
      [2, Buffer.concat([u16(0), u16(20)])],
    ]);
    expect(decodeAttrList(buf).map(([t, b]) => [t, b.readUInt16LE(2)])).toEqual([
      [2, 10],
      [2, 20],
    ]);
    expect(decodeAttrs(buf).size).toBe(1);
  });

  it('stops at a truncated attribute instead of reading past the buffer', () => {
    const buf = encodeAttrs([[3, str('abc')]]);
    const bad = Buffer.concat([buf, Buffer.from([40, 0, 1, 0])]);
    expect([...decodeAttrs(bad).keys()]).toEqual([3]);
  });
});

describe('errors', () => {
  it('names kernel errnos (EOPNOTSUPP, not libuv ENOTSUP)', () => {
    expect(fromErrno(-17, 'RTM_NEWLINK', 'br0')).toMatchObject({
      code: 'EEXIST',
      errno: -17,
      op: 'RTM_NEWLINK',
      object: 'br0',
    });
    expect(fromErrno(19, 'RTM_GETLINK').code).toBe('ENODEV');
    expect(fromErrno(-95, 'RTM_SETLINK').code).toBe('EOPNOTSUPP');
    expect(fromErrno(-17, 'RTM_NEWLINK', 'br0').message).toBe('RTM_NEWLINK br0: EEXIST');
  });

  it("converts node_netlink's 'Request rejected: X' and Node system errors", () => {
    expect(toNetlinkError(new Error('Request rejected: EEXIST'), 'RTM_NEWLINK', 'br0')).toMatchObject({
      code: 'EEXIST',
      errno: -17,
    });
    expect(toNetlinkError(new Error('Request rejected: -19'), 'RTM_GETLINK').code).toBe('ENODEV');
    const sys = Object.assign(new Error('ENOENT: no such file'), {
      code: 'ENOENT',
      errno: -2,
      syscall: 'open',
    });
    expect(toNetlinkError(sys, 'open netns', '/x')).toMatchObject({
      code: 'ENOENT',
      errno: -2,
      op: 'open netns',
      object: '/x',
    });
    expect(toNetlinkError(new Error('weird'), 'nft').code).toBe('EIO');
  });

  it('maps to CniError: bad netns path → 8, EBUSY → 11, the rest → 999; the errno stays reachable', () => {
    const missing = toKernelCniError(
      new NetlinkError({ code: 'ENOENT', errno: -2, op: 'open netns', object: '/run/netns/x' }),
    ) as CniError;
    expect(missing).toBeInstanceOf(CniError);
    expect(missing.code).toBe(ErrorCode.InvalidNetns);
    expect(netlinkCode(missing)).toBe('ENOENT');
    expect((toKernelCniError(fromErrno(-16, 'RTM_NEWLINK')) as CniError).code).toBe(ErrorCode.TryAgainLater);
    const exists = toKernelCniError(fromErrno(-17, 'RTM_NEWLINK', 'br0')) as CniError;
    expect(exists.code).toBe(ErrorCode.Internal);
    expect(exists.message).toBe('RTM_NEWLINK br0: EEXIST');
    expect(exists.details).toBe('EEXIST');
    const plain = new Error('not ours');
    expect(toKernelCniError(plain)).toBe(plain);
    expect(netlinkCode(plain)).toBeUndefined();
  });
});
