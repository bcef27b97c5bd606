// Underlay detection in a node namespace: the source address towards etcd's endpoint, and the IPv6
// address on the same interface; flags win and are checked.
import { describe, expect, it } from 'vitest';
import { underlayFromFlags } from '../../src/cluster/underlay';
import { join } from 'node:path';
import { openNetlink } from '../../src/netlink/rtnetlink';
import { REPO } from '../bridge/harness';
import { sh, useKernelFixture } from '../netlink/kernel-fixture';

const kernel = useKernelFixture();

describe('underlay', () => {
  it('takes flags by family and refuses nonsense', () => {
    expect(underlayFromFlags(['198.18.0.11', 'fd00:ff::11'])).toEqual({
      underlay: '198.18.0.11',
      underlay6: 'fd00:ff::11',
    });
    expect(() => underlayFromFlags(['198.18.0.11', '198.18.0.12'])).toThrow(/two IPv4/);
    expect(() => underlayFromFlags(['node1'])).toThrow(/not an IP/);
    // Addresses no other node can route through as this node's next hop.
    for (const [v, why] of [
      ['0.0.0.0', /unspecified/],
      ['::', /unspecified/],
      ['127.0.0.2', /loopback/],
      ['::1', /loopback/],
      ['255.255.255.255', /broadcast/],
      ['239.1.1.1', /multicast/],
      ['ff02::1', /multicast/],
      ['fe80::11', /link-local/],
    ] as const)
      expect(() => underlayFromFlags([v]), v).toThrow(why);
    // One address, one spelling: an IPv4-mapped IPv6 flag is the IPv4 underlay, as other nodes route it.
    expect(underlayFromFlags(['::ffff:198.18.0.11', 'FD00:FF::0011'])).toEqual({
      underlay: '198.18.0.11',
      underlay6: 'fd00:ff::11',
    });
  });

  it('detects the source address towards the etcd endpoint and the IPv6 address beside it', async () => {
    const fx = kernel.fresh();
    const node = fx.addNetns('n');
    const peer = fx.addNetns('u');
    const nl = kernel.track(openNetlink(node.path));
    await nl.setUp('lo');
    await nl.createVethPair({ name: 'ul0', peerName: 'ul0', peerNetns: peer.path! });
    await nl.setUp('ul0');
    await nl.addAddress({ link: 'ul0', address: '198.18.41.11', prefixLength: 24 });
    await nl.addAddress({ link: 'ul0', address: 'fd00:ff:41::11', prefixLength: 64, nodad: true });
    // berthd runs inside its node namespace; so does the detection (the built code, as berthd runs it).
    const script = `
      const { detectUnderlay } = require(${JSON.stringify(join(REPO, 'dist/cluster/underlay.js'))});
      const { openNetlink } = require(${JSON.stringify(join(REPO, 'dist/netlink/rtnetlink.js'))});
      const nl = openNetlink();
      detectUnderlay('http://198.18.41.1:32179', nl).then((u) => { console.log(JSON.stringify(u)); nl.close(); });`;
    const out = sh('ip', ['netns', 'exec', node.nsName!, process.execPath, '-e', script]);
    expect(JSON.parse(out)).toEqual({ underlay: '198.18.41.11', underlay6: 'fd00:ff:41::11' });
  });
});
