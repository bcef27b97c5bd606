// The nf_tables codec byte for byte: what we send is what `nft` sends for the same element (captured with
// `strace -xx nft add element …`, kernel 6.18, nft 1.0.6), and what we read is what the kernel answered to
// nft's own dumps (captured the same way).
import { describe, expect, it } from 'vitest';
import {
  NFT_MSG,
  NFT_SET_F,
  NLMSG_ERROR,
  NftnlUnsupported,
  commentUdata,
  decodeKey,
  elementAttrs,
  encodeBatch,
  encodeKey,
  encodeMsg,
  errorOf,
  keyFields,
  parseElements,
  parseMessages,
  parseRule,
  setElemMsg,
  typeName,
  udataComment,
  type SetInfo,
} from '../../src/netlink/nftnl-codec';
import { encodeAttrs, str, type Attr } from '../../src/netlink/rtnl-codec';

const set = (name: string, keyType: number, keyLen: number, flags = 0): SetInfo => ({
  name,
  table: 't',
  flags,
  keyType,
  keyLen,
  handle: 1,
});
const c4 = set('c4', 7, 4);
const c6 = set('c6', 8, 16);
const s4 = set('s4', (7 << 6) | 7, 8, NFT_SET_F.INTERVAL | NFT_SET_F.CONCAT);
const s6 = set('s6', (8 << 6) | 8, 32, NFT_SET_F.INTERVAL | NFT_SET_F.CONCAT);
const ports = set('p', 41, 16);
const allowed = set('a', (41 << 6) | 9, 24);

const hex = (b: Buffer) => b.toString('hex');
/** An nf_tables answer as the kernel sends it (NLM_F_MULTI, family inet) with these attributes. */
const answer = (type: number, attrs: Attr[]) =>
  parseMessages(encodeMsg((10 << 8) | type, 2, 0, 1, attrs))[0]!;

describe('batches', () => {
  it('one NEWSETELEM between BATCH_BEGIN and BATCH_END, as nft sends it (plus NLM_F_ACK)', () => {
    const msg = setElemMsg('add', 1, 't', 'c4', [elementAttrs(c4, '198.18.0.3', 'x')]);
    const buf = encodeBatch([msg], 100);
    const msgs = parseMessages(buf);
    expect(msgs.map((m) => [m.type, m.flags, m.seq])).toEqual([
      [16, 0x1, 100], // NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST
      [(10 << 8) | NFT_MSG.NEWSETELEM, 0x1 | 0x4 | 0x400, 101], // REQUEST | ACK | CREATE
      [17, 0x1, 102], // NFNL_MSG_BATCH_END
    ]);
    // nfgenmsg: family (AF_UNSPEC for the batch, NFPROTO_INET), version 0, res_id big-endian (10 = nftables).
    expect(hex(msgs[0]!.body)).toBe('0000000a');
    expect(hex(msgs[2]!.body)).toBe('0000000a');
    expect(hex(msgs[1]!.body.subarray(0, 4))).toBe('01000000');
    // Table "t", set "c4", then the elements exactly as nft 1.0.6 wrote them for
    // `add element inet t c4 { 198.18.0.3 comment "x" }` (nft also sends NFTA_SET_ELEM_LIST_SET_ID, not needed).
    const attrs = msgs[1]!.body.subarray(4);
    expect(hex(attrs)).toBe(
      '060001007400000007000200633400001c000380' + '180001800c00018008000100c61200030800060000027800',
    );
    expect(buf.length).toBe(20 + (20 + attrs.length) + 20);
  });

  it('only the last message of a batch asks for an ACK (failures answer anyway)', () => {
    const msg = setElemMsg('add', 1, 't', 'c4', [elementAttrs(c4, '198.18.0.3', 'x')]);
    const flags = parseMessages(encodeBatch([msg, msg, msg], 200)).map((m) => m.flags);
    expect(flags).toEqual([0x1, 0x1 | 0x400, 0x1 | 0x400, 0x1 | 0x4 | 0x400, 0x1]);
  });

  it('deletes name the key only; a concatenated range carries KEY and KEY_END', () => {
    const del = setElemMsg('delete', 1, 't', 's4', [
      elementAttrs(s4, { concat: ['198.18.0.3', { prefix: { addr: '198.18.0.0', len: 24 } }] }, undefined),
    ]);
    expect(del.type).toBe(NFT_MSG.DELSETELEM);
    expect(del.flags).toBe(0);
    // The element nft sent for `… s4 { 198.18.0.3 . 198.18.0.0/24 comment "abc/eth1" }`, without the comment.
    const [, elements] = del.attrs[2]!;
    expect(hex(encodeAttrs(elements as never))).toBe(
      '24000180' + '10000180' + '0c000100c6120003c6120000' + '10000a80' + '0c000100c6120003c61200ff',
    );
  });

  it('ACKs and errors: NLMSG_ERROR with errno 0 or negative, echoing the sequence number', () => {
    const ack = Buffer.alloc(36);
    ack.writeUInt32LE(36, 0);
    ack.writeUInt16LE(NLMSG_ERROR, 4);
    ack.writeUInt32LE(101, 8);
    const err = Buffer.from(ack);
    err.writeUInt32LE(102, 8);
    err.writeInt32LE(-2, 16); // ENOENT
    const [a, e] = parseMessages(Buffer.concat([ack, err]));
    expect([a!.seq, errorOf(a!)]).toEqual([101, 0]);
    expect([e!.seq, errorOf(e!)]).toEqual([102, -2]);
  });
});

describe('answers the kernel gave nft', () => {
  it('a GETSETELEM dump of an ipv4_addr . ipv4_addr interval set: values as nft -j lists them', () => {
    const elements = Buffer.from(
      '34000100100001000c000100c6120002c612000010000a000c000100c6120002c61200ff0f00060000096162632f65746830' +
        '000034000100100001000c000100c6120003c612000010000a000c000100c6120003c61200ff0f00060000096162632f657468310000',
      'hex',
    );
    const m = answer(NFT_MSG.NEWSETELEM, [
      [1, str('t')],
      [2, str('s4')],
      [3, elements],
    ]);
    expect(parseElements(s4, m)).toEqual([
      { val: { concat: ['198.18.0.2', { prefix: { addr: '198.18.0.0', len: 24 } }] }, comment: 'abc/eth0' },
      { val: { concat: ['198.18.0.3', { prefix: { addr: '198.18.0.0', len: 24 } }] }, comment: 'abc/eth1' },
    ]);
  });

  it('a GETRULE answer: `ip saddr @c4 jump m` reduced to the lookup and the jump berth looks for', () => {
    const exprs = Buffer.from(
      '24000100090001006d6574610000000014000200080002000000000f08000100000000012c00010008000100636d7000200002' +
        '00080001000000000108000200000000000c0003000500010002000000340001000c0001007061796c6f616400240002000800' +
        '0100000000010800020000000001080003000000000c08000400000000042c0001000b0001006c6f6f6b757000001c00020007' +
        '0001006334000008000200000000010800050000000000380001000e000100696d6d656469617465000000240002000800010000' +
        '000000180002001400020008000100fffffffd060002006d000000',
      'hex',
    );
    const m = answer(NFT_MSG.NEWRULE, [
      [1, str('t')],
      [2, str('postrouting')],
      [3, Buffer.from('0000000000000006', 'hex')],
      [4, exprs],
    ]);
    const r = parseRule(m);
    expect(r).toEqual({
      table: 't',
      chain: 'postrouting',
      handle: 6,
      expr: [
        { meta: null },
        { cmp: null },
        { payload: null },
        { match: { right: '@c4' } },
        { jump: { target: 'm' } },
      ],
    });
    // masquerade.ts finds its jumps by this text in the JSON of a rule's expressions.
    expect(JSON.stringify(r.expr)).toContain('"jump":{"target":"m"}');
  });
});

describe('keys', () => {
  it.each([
    [c4, '198.18.0.2', 'c6120002', undefined],
    [c6, 'fd00:b15::2', 'fd000b15000000000000000000000002', undefined],
    [ports, 'veth0a1b2c3d', '76657468306131623263336400000000', undefined],
    [
      allowed,
      { concat: ['veth1', '0a:58:c6:12:00:09'] },
      '7665746831' + '0'.repeat(22) + '0a58c6120009' + '0000',
      undefined,
    ],
    [
      s6,
      { concat: ['fd00::5', { prefix: { addr: 'fd00::', len: 64 } }] },
      'fd000000000000000000000000000005fd000000000000000000000000000000',
      'fd000000000000000000000000000005fd00000000000000ffffffffffffffff',
    ],
    [
      s4,
      { concat: ['198.18.0.2', { range: ['198.18.0.1', '198.18.0.6'] }] },
      'c6120002c6120001',
      'c6120002c6120006',
    ],
  ])('%# encodes and decodes back to the same JSON value', (s, val, key, keyEnd) => {
    const enc = encodeKey(s, val);
    expect(hex(enc.key)).toBe(key);
    expect(enc.keyEnd === undefined ? undefined : hex(enc.keyEnd)).toBe(keyEnd);
    expect(decodeKey(s, enc.key, enc.keyEnd)).toEqual(val);
  });

  it('pads concatenated fields to 4 bytes (ifname 16 + ether_addr 6 → 24)', () => {
    expect(encodeKey(allowed, { concat: ['veth1', '0A:58:C6:12:00:09'] }).key.length).toBe(24);
    expect(typeName(allowed)).toEqual(['ifname', 'ether_addr']);
    expect(typeName(c6)).toBe('ipv6_addr');
  });

  it('what it cannot express is NftnlUnsupported, so the caller uses nft', () => {
    expect(() => keyFields(set('m', 7, 4, NFT_SET_F.MAP))).toThrow(NftnlUnsupported);
    expect(() => keyFields(set('ports', 13, 2))).toThrow(NftnlUnsupported); // inet_service
    expect(() => keyFields(set('r', 7, 4, NFT_SET_F.INTERVAL))).toThrow(NftnlUnsupported); // rbtree ranges
    expect(() => encodeKey(c4, { prefix: { addr: '198.18.0.0', len: 24 } })).toThrow(NftnlUnsupported);
    expect(() => encodeKey(ports, 'veth*')).toThrow(NftnlUnsupported);
    expect(() => encodeKey(s4, '198.18.0.2')).toThrow(NftnlUnsupported);
  });

  it('comments: libnftnl userdata TLV (type 0, length with the NUL)', () => {
    expect(hex(commentUdata('abc/eth1'))).toBe('00096162632f6574683100');
    expect(udataComment(commentUdata('c/eth0'))).toBe('c/eth0');
    expect(udataComment(Buffer.from('0102ffff', 'hex'))).toBeUndefined();
  });
});
