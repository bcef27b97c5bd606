// Creating a network's nftables objects over netlink, byte for byte what nft 1.0.6 sends for the same JSON:
// the setup transactions berth's masquerade and spoof check send for network 'net1' in table 'T', each
// rule's NFTA_RULE_EXPRESSIONS and a set's attributes compared with `strace -xx nft -j -f <both batches>`
// (sets numbered 1–6 across the two batches, as nft numbered them there).
import { describe, expect, it } from 'vitest';
import { addMasquerade } from '../../src/bridge/masquerade';
import type { Nft, NftCommand } from '../../src/bridge/nft';
import { addSpoofCheck } from '../../src/bridge/spoofcheck';
import {
  NFT_MSG,
  NFTA_RULE,
  NftnlUnsupported,
  msgAttrs,
  parseMessages,
  encodeRequest,
} from '../../src/netlink/nftnl-codec';
import { createMsg, type NewSets } from '../../src/netlink/nftnl-create';
import { encodeAttrs } from '../../src/netlink/rtnl-codec';

async function setupCommands(): Promise<NftCommand[][]> {
  const batches: NftCommand[][] = [];
  const nft: Nft = { apply: async (cmds) => void batches.push(cmds), listTable: async () => undefined };
  const scope = { nft, table: 'T', network: 'net1', tablesLock: <T>(fn: () => Promise<T>) => fn() };
  await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, [
    { ip: '198.18.0.2', family: 4, subnet: '198.18.0.0', prefixLen: 24 },
  ]);
  await addSpoofCheck(scope, {
    containerId: 'c1',
    ifname: 'eth0',
    hostVeth: 'veth1',
    mac: '0a:58:c6:12:00:02',
  });
  return batches;
}

/** Captured from nft: the expressions of the rules in the order the batches add them. */
const NFT_RULES = [
  // ip daddr 224.0.0.0/4 return
  '24000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300000000100800040000000004440001800c0001006269747769736500340002800800010000000001080002000000000108000300000000040c00048008000100f00000000c00058008000100000000002c00018008000100636d700020000280080001000000000108000200000000000c00038008000100e0000000300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100fffffffb',
  // ip6 daddr ff00::/8 return
  '24000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c000380050001000a000000340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000001808000400000000012c00018008000100636d700020000280080001000000000108000200000000000c00038005000100ff000000300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100fffffffb',
  // ip saddr . ip daddr @s4 return
  '24000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c0800040000000004340001800c0001007061796c6f616400240002800800010000000009080002000000000108000300000000100800040000000004380001800b0001006c6f6f6b757000002800028008000200000000011400010073345f366332373065663266323531000800040000000003300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100fffffffb',
  // ip6 saddr . ip6 daddr @s6 return
  '24000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c000380050001000a000000340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300000000080800040000000010340001800c0001007061796c6f616400240002800800010000000002080002000000000108000300000000180800040000000010380001800b0001006c6f6f6b757000002800028008000200000000011400010073365f366332373065663266323531000800040000000004300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c00028008000100fffffffb',
  // masquerade
  '14000180090001006d6173710000000004000280',
  // ip saddr @c4 jump masq
  '24000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010002000000340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000000c0800040000000004380001800b0001006c6f6f6b757000002800028008000200000000011400010063345f366332373065663266323531000800040000000001480001800e000100696d6d656469617465000000340002800800010000000000280002802400028008000100fffffffd160002006d6173715f366332373065663266323531000000',
  // ip6 saddr @c6 jump masq
  '24000180090001006d6574610000000014000280080002000000000f08000100000000012c00018008000100636d700020000280080001000000000108000200000000000c000380050001000a000000340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300000000080800040000000010380001800b0001006c6f6f6b757000002800028008000200000000011400010063365f366332373065663266323531000800040000000002480001800e000100696d6d656469617465000000340002800800010000000000280002802400028008000100fffffffd160002006d6173715f366332373065663266323531000000',
  // iifname @p iifname . ether saddr != @a drop
  '24000180090001006d657461000000001400028008000200000000060800010000000001380001800b0001006c6f6f6b7570000028000280080002000000000113000100705f3663323730656632663235310000080004000000000524000180090001006d657461000000001400028008000200000000060800010000000001340001800c0001007061796c6f616400240002800800010000000002080002000000000008000300000000060800040000000006400001800b0001006c6f6f6b7570000030000280080002000000000113000100615f366332373065663266323531000008000400000000060800050000000001300001800e000100696d6d6564696174650000001c0002800800010000000000100002800c0002800800010000000000',
];

describe('creating objects over netlink', () => {
  it("compiles berth's setup rules to nft's bytes", async () => {
    const created: NewSets = new Map();
    const family = { inet: 1, bridge: 7 } as Record<string, number>;
    const msgs = (await setupCommands())
      .flat()
      .filter((c) => !('add' in c && 'element' in (c.add as object)))
      .map((c) => {
        const f = Object.values(Object.values(c)[0] as Record<string, { family: string }>)[0]!.family;
        return createMsg(c, family[f]!, created)!;
      });
    const rules = msgs.filter((m) => m.type === NFT_MSG.NEWRULE);
    const expressions = rules.map((m) => {
      const parsed = parseMessages(encodeRequest(m, 1))[0]!;
      return msgAttrs(parsed).get(NFTA_RULE.EXPRESSIONS)!.toString('hex');
    });
    expect(expressions).toEqual(NFT_RULES);
    expect(rules.map((m) => m.flags)).toEqual(rules.map(() => 0x400 | 0x800)); // CREATE | APPEND
    // The jump rules carry the comment as libnftnl rule userdata (type 0, length with the NUL).
    const comment = parseMessages(encodeRequest(rules[5]!, 1))[0]!;
    expect(msgAttrs(comment).get(7)!.toString('latin1')).toBe('\x00\x17berth masquerade: net1\x00');
  });

  it("creates a concatenated interval set with nft's flags, field lengths and userdata", async () => {
    const created: NewSets = new Map();
    const cmds = (await setupCommands())[0]!.filter((c) => 'add' in c && 'set' in (c.add as object));
    const msgs = cmds.map((c) => createMsg(c, 1, created)!);
    const s4 = msgs[2]!;
    expect(s4.type).toBe(NFT_MSG.NEWSET);
    expect(encodeAttrs(s4.attrs).toString('hex')).toBe(
      [
        '0600010054000000', // table "T"
        '1400020073345f36633237306566326632353100', // name
        '0800030000000084', // flags: interval | concat
        '08000400000001c7', // key type: ipv4_addr . ipv4_addr
        '0800050000000008', // key length
        '08000a0000000003', // set id
        '200009801c0002800c000180080001000000000' + '40c0001800800010000000004', // desc: field lengths 4, 4
        '14000d000004000000000308' + '00040d0000000100', // userdata
      ].join(''),
    );
    expect(created.get('inet T s4_6c270ef2f251')?.id).toBe(3);
  });

  it('refuses what it does not compile (nft creates it)', () => {
    const created: NewSets = new Map();
    const rule = (expr: unknown[]) => ({ add: { rule: { family: 'inet', table: 'T', chain: 'c', expr } } });
    for (const cmd of [
      rule([{ counter: null }]),
      rule([{ match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 80 } }]),
      rule([{ match: { op: '==', left: { payload: { protocol: 'ether', field: 'saddr' } }, right: '@s' } }]),
      { add: { set: { family: 'inet', table: 'T', name: 's', type: 'inet_service' } } },
      {
        add: { chain: { family: 'netdev', table: 'T', name: 'c', type: 'filter', hook: 'ingress', prio: 0 } },
      },
    ])
      expect(() => createMsg(cmd, 1, created), JSON.stringify(cmd)).toThrow(NftnlUnsupported);
    expect(
      createMsg({ add: { map: { family: 'inet', table: 'T', name: 'm' } } }, 1, created),
    ).toBeUndefined();
  });
});
