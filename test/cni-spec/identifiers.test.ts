// shortContainerId: the rule `berth gc` and `berth exec gc` share for a valid id cut short.
import { describe, expect, it } from 'vitest';
import { shortContainerId } from '../../src/cni-spec/identifiers';

describe('shortContainerId', () => {
  const known = ['0123456789abcdef', 'abcdef012345', 'abc'];

  it('a valid id that is only the start of a known one: that id and the whole one', () => {
    expect(shortContainerId(['abc', '0123456789ab'], known)).toEqual({
      id: '0123456789ab',
      whole: '0123456789abcdef',
    });
  });

  it('a known id is whole, even when another known one starts with it; an unknown one is just unknown', () => {
    expect(shortContainerId(['abc', 'ffff', 'abd', '0124'], known)).toBeUndefined();
    expect(shortContainerId(['ab'], known)).toEqual({ id: 'ab', whole: 'abc' });
    expect(shortContainerId(['x'], [])).toBeUndefined();
  });
});
