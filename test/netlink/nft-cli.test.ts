// The `nft -j` fallback: an nft that cannot be started is an error, never "no such table" (DEL and GC took
// that for nothing to remove and leaked elements; ADD set the table up again and doubled its jumps).
import { describe, expect, it } from 'vitest';
import { listTable, nftApply } from '../../src/netlink/nftables';

describe('nft not installed', () => {
  const opts = { nft: '/nonexistent/bt-nft' };
  it('listTable rejects (EIO, saying why) rather than answering "no table"', async () => {
    await expect(listTable({ family: 'inet', name: 'berth' }, opts)).rejects.toMatchObject({
      code: 'EIO',
      message: expect.stringMatching(/cannot run nft \(ENOENT.*is nftables installed/),
    });
  });
  it('nftApply rejects the same way', async () => {
    await expect(nftApply([{ add: { table: { family: 'inet', name: 'x' } } }], opts)).rejects.toMatchObject({
      code: 'EIO',
    });
  });
});
