// The setup transactions berth's masquerade and spoof check send for one pod of a new network (recorded
// through a fake Nft that applies nothing), for tests of the nftables netlink codec.
import { addMasquerade, type MasqAddress } from '../../src/bridge/masquerade';
import type { Nft, NftCommand } from '../../src/bridge/nft';
import { addSpoofCheck } from '../../src/bridge/spoofcheck';

export async function berthSetupCommands(
  table: string,
  addrs: readonly MasqAddress[],
): Promise<NftCommand[][]> {
  const batches: NftCommand[][] = [];
  const nft: Nft = {
    apply: async (cmds) => void batches.push(cmds),
    listTable: async () => undefined,
    listChain: async () => undefined,
  };
  const scope = { nft, table, network: 'net1', tablesLock: <T>(fn: () => Promise<T>) => fn() };
  await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, addrs);
  await addSpoofCheck(scope, {
    containerId: 'c1',
    ifname: 'eth0',
    hostVeth: 'veth1',
    mac: '0a:58:c6:12:00:02',
  });
  return batches;
}
