// A network's config key as cluster IPAM writes it (`nets/<net>/config`), with pools that hold the blocks the
// route tests use: the block map routes a block only inside its network's pools.
export function poolsConfig(prefix: string, network = 'pods'): { key: string; value: string } {
  return {
    key: `${prefix}/nets/${network}/config`,
    value: JSON.stringify({
      pools: [['198.19.0.0-198.19.255.255'], ['fd00:b::-fd00:b::ffff:ffff:ffff:ffff']],
      blockSize4: 26,
      blockSize6: 0,
      schema: 1,
    }),
  };
}
