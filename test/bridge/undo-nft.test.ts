import { describe, expect, it } from 'vitest';
import { attachmentOfTag, attachmentTag, nftTable, setElements } from '../../src/bridge/nft';
import { UndoStack } from '../../src/bridge/undo';

describe('UndoStack', () => {
  it('runs the inverses newest first and keeps going past a failing one', async () => {
    const ran: string[] = [];
    const logged: string[] = [];
    const undo = new UndoStack();
    undo.push('first', async () => void ran.push('first'));
    undo.push('second', async () => {
      ran.push('second');
      throw new Error('boom');
    });
    undo.push('third', async () => void ran.push('third'));
    const failures = await undo.unwind((l) => logged.push(l));
    expect(ran).toEqual(['third', 'second', 'first']);
    expect(failures).toEqual(['rollback: second failed: boom']);
    expect(logged).toEqual(failures);
    // a second unwind has nothing left to do
    expect(await undo.unwind(() => undefined)).toEqual([]);
    expect(ran).toHaveLength(3);
  });
});

describe('attachmentTag', () => {
  it('is <containerID>/<ifname> for ordinary IDs', () => {
    expect(attachmentTag('a'.repeat(64), 'eth0')).toBe(`${'a'.repeat(64)}/eth0`);
  });
  it('stays within nft comment limits for very long IDs, deterministically and distinctly', () => {
    const long1 = 'x'.repeat(200);
    const long2 = `${'x'.repeat(199)}y`;
    const t1 = attachmentTag(long1, 'eth0');
    expect(Buffer.byteLength(t1)).toBeLessThanOrEqual(127);
    expect(t1).toBe(attachmentTag(long1, 'eth0'));
    expect(t1).not.toBe(attachmentTag(long2, 'eth0'));
    expect(t1.endsWith('/eth0')).toBe(true);
  });
  it('attachmentOfTag gives the attachment back, none for a shortened tag', () => {
    const id = 'c'.repeat(64);
    expect(attachmentOfTag(attachmentTag(id, 'net1'))).toEqual({ containerID: id, ifname: 'net1' });
    expect(attachmentOfTag(attachmentTag('a/b~c', 'eth0'))).toEqual({ containerID: 'a/b~c', ifname: 'eth0' });
    expect(attachmentOfTag(attachmentTag('x'.repeat(200), 'eth0'))).toBeUndefined();
  });
});

describe('nftTable', () => {
  it.each([
    [{}, 'berth'],
    [{ BERTH_NFT_TABLE: 'bt1t' }, 'bt1t'],
    [{ BERTH_NFT_TABLE: 'bad name; flush ruleset' }, 'berth'],
  ])('%j → %s', (env, table) => expect(nftTable(env)).toBe(table));
});

describe('setElements', () => {
  const objects = [
    { set: { name: 'c4_x', elem: [{ elem: { val: '198.18.0.2', comment: 'c1/eth0' } }, '198.18.0.3'] } },
    { set: { name: 'empty' } },
  ];
  it('reads values and comments, plain values without comment', () => {
    expect(setElements(objects, 'c4_x')).toEqual([
      { val: '198.18.0.2', comment: 'c1/eth0' },
      { val: '198.18.0.3', comment: undefined },
    ]);
  });
  it('distinguishes an empty set from a missing one', () => {
    expect(setElements(objects, 'empty')).toEqual([]);
    expect(setElements(objects, 'nope')).toBeUndefined();
  });
});
