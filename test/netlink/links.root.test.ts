// Links, veth pairs across namespaces, bridge ports and VLANs, done through our socket in the host and in a
// pod namespace, each checked with ip/bridge -j as an independent observer.
import { beforeAll, describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { netlinkCode, toKernelCniError } from '../../src/netlink/errors';
import { openNetlink } from '../../src/netlink/rtnetlink';
import type { Netlink } from '../../src/netlink/types';
import type { KernelFixture } from './kernel-fixture';
import {
  HOST,
  ipLink,
  kernelHasBridgeVlans,
  observeJson,
  rejection,
  useKernelFixture,
  type Place,
} from './kernel-fixture';

const kernel = useKernelFixture();
let fx: KernelFixture;
let vlansSupported = false;

beforeAll(() => {
  vlansSupported = kernelHasBridgeVlans();
});

function open(place: Place): Netlink {
  return kernel.track(openNetlink(place.path));
}

interface Setup {
  place: Place;
  /** Where the veth peer goes. */
  other: Place;
  nl: Netlink;
}

/**
 * `host`: we work in the host namespace and put veth peers into a pod namespace (berth-bridge's way).
 * `pod`: we work inside a pod namespace and put veth peers into the host (the Go reference's way).
 */
function setup(label: 'host' | 'pod'): Setup {
  fx = kernel.fresh();
  const pod = fx.addNetns('p');
  const place = label === 'host' ? HOST : pod;
  const other = label === 'host' ? pod : HOST;
  return { place, other, nl: open(place) };
}

/** Creates a link name in `place`; host names are registered for cleanup. */
function linkName(place: Place, suffix: string): string {
  const n = fx.name(suffix);
  return place.label === 'host' ? fx.hostLink(n) : n;
}

describe.each(['host', 'pod'] as const)('links in the %s namespace', (label) => {
  it('creates a bridge with MTU; a duplicate name is EEXIST (CniError 999 keeping the errno)', async () => {
    const { place, nl } = setup(label);
    const br = linkName(place, 'b');
    const link = await nl.createBridge({ name: br, mtu: 1400 });
    const seen = ipLink(place, br);
    expect(seen.linkinfo.info_kind).toBe('bridge');
    expect(seen.mtu).toBe(1400);
    expect(link).toMatchObject({
      name: br,
      kind: 'bridge',
      mtu: 1400,
      index: seen.ifindex,
      mac: seen.address,
    });

    const err = await rejection(nl.createBridge({ name: br }));
    expect(err).toMatchObject({ code: 'EEXIST', op: 'RTM_NEWLINK', errno: -17 });
    expect(err.message).toContain(br);
    const cni = toKernelCniError(err) as CniError;
    expect(cni).toBeInstanceOf(CniError);
    expect(cni.code).toBe(ErrorCode.Internal);
    expect(netlinkCode(cni)).toBe('EEXIST');
  });

  it('creates a veth pair whose peer is born in the other namespace, with names, MTU and MACs', async () => {
    const { place, other, nl } = setup(label);
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    const link = await nl.createVethPair({
      name,
      peerName: peer,
      peerNetns: other.path ?? `/proc/${process.pid}/ns/net`,
      mtu: 1450,
      mac: '02:42:c6:12:00:01',
      peerMac: '02:42:c6:12:00:02',
    });
    const here = ipLink(place, name);
    const there = ipLink(other, peer);
    expect(here.linkinfo.info_kind).toBe('veth');
    expect(there.linkinfo.info_kind).toBe('veth');
    expect([here.mtu, there.mtu]).toEqual([1450, 1450]);
    expect([here.address, there.address]).toEqual(['02:42:c6:12:00:01', '02:42:c6:12:00:02']);
    // The peer was born over there: no link of that name here (the host may have an eth0 of its own).
    if (peer !== 'eth0') expect(ipLink(place, peer)).toBeUndefined();
    expect(link).toMatchObject({
      name,
      kind: 'veth',
      mtu: 1450,
      mac: '02:42:c6:12:00:01',
      parentIndex: there.ifindex,
    });
    expect(link.linkNetnsId).toBeDefined();
    // The peer name is taken over there: a second pair with the same peer name fails with EEXIST.
    const err = await rejection(
      nl.createVethPair({
        name: linkName(place, 'x'),
        peerName: peer,
        peerNetns: other.path ?? `/proc/${process.pid}/ns/net`,
      }),
    );
    expect(err.code).toBe('EEXIST');
  });

  it('a veth pair whose lookup after creation fails is removed again: the caller has nothing to undo', async () => {
    const { place, other, nl } = setup(label);
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    const lookupFailure = Object.assign(new Error('lookup failed on purpose'), { code: 'ENOBUFS' });
    // An own property shadows the method for this socket only: createVethPair's lookup goes through it.
    Object.defineProperty(nl, 'getLink', { value: () => Promise.reject(lookupFailure), configurable: true });
    await expect(
      nl.createVethPair({ name, peerName: peer, peerNetns: other.path ?? `/proc/${process.pid}/ns/net` }),
    ).rejects.toBe(lookupFailure);
    expect(ipLink(place, name)).toBeUndefined();
    expect(ipLink(other, peer)).toBeUndefined();
  });

  it('sets up/down, MTU, MAC, alias and promiscuous mode', async () => {
    const { place, other, nl } = setup(label);
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    await nl.createVethPair({ name, peerName: peer, peerNetns: other.path ?? `/proc/${process.pid}/ns/net` });

    await nl.setUp(name);
    expect(ipLink(place, name).flags).toContain('UP');
    await nl.setDown(name);
    expect(ipLink(place, name).flags).not.toContain('UP');

    await nl.setMtu(name, 1280);
    expect(ipLink(place, name).mtu).toBe(1280);

    await nl.setMac(name, '02:42:c6:12:00:0a');
    expect(ipLink(place, name).address).toBe('02:42:c6:12:00:0a');

    await nl.setAlias(name, 'pod abc/eth0');
    expect(ipLink(place, name).ifalias).toBe('pod abc/eth0');
    expect((await nl.getLink(name)).alias).toBe('pod abc/eth0');
    await nl.setAlias(name, '');
    expect(ipLink(place, name).ifalias).toBeUndefined();

    await nl.setPromisc(name, true);
    expect(ipLink(place, name).flags).toContain('PROMISC');
    expect((await nl.getLink(name)).promisc).toBe(true);
    await nl.setPromisc(name, false);
    expect(ipLink(place, name).flags).not.toContain('PROMISC');
  });

  it('renames a link (by index, while down) and deletes it together with its peer', async () => {
    const { place, other, nl } = setup(label);
    const name = linkName(place, 'v');
    const renamed = linkName(place, 'r');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    const link = await nl.createVethPair({
      name,
      peerName: peer,
      peerNetns: other.path ?? `/proc/${process.pid}/ns/net`,
    });

    await nl.rename(link.index, renamed);
    expect(ipLink(place, name)).toBeUndefined();
    expect(ipLink(place, renamed).ifindex).toBe(link.index);

    await nl.deleteLink(renamed);
    expect(ipLink(place, renamed)).toBeUndefined();
    expect(ipLink(other, peer)).toBeUndefined();
    // A missing link on DEL: ENODEV, which DEL handlers treat as success.
    const err = await rejection(nl.deleteLink(renamed));
    expect(err).toMatchObject({ code: 'ENODEV', op: 'RTM_DELLINK' });
    expect(await nl.findLink(renamed)).toBeUndefined();
    expect((await rejection(nl.getLink(renamed))).code).toBe('ENODEV');
  });

  it('gets links by name and index, lists them, and waits for operstate up', async () => {
    const { place, other, nl } = setup(label);
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    await nl.createVethPair({ name, peerName: peer, peerNetns: other.path ?? `/proc/${process.pid}/ns/net` });
    const byName = await nl.getLink(name);
    expect(await nl.getLink(byName.index)).toEqual(byName);
    const listed = observeJson<Array<{ ifname: string; ifindex: number }>>(place, 'ip', ['link', 'show']);
    const ours = await nl.listLinks();
    expect(ours.map((l) => [l.name, l.index]).sort()).toEqual(
      listed.map((l) => [l.ifname, l.ifindex]).sort(),
    );

    // Down: the bounded wait gives up with ETIMEDOUT.
    const err = await rejection(nl.waitOperUp(name, { timeoutMs: 30 }));
    expect(err.code).toBe('ETIMEDOUT');

    await nl.setUp(name);
    const peerNl = open(other);
    await peerNl.setUp(peer);
    const up = await nl.waitOperUp(name, { timeoutMs: 3000 });
    expect(up.operState).toBe('up');
    expect(ipLink(place, name).operstate).toBe('UP');
  });

  it('enslaves to a bridge and releases; a non-bridge or missing master gives the documented errors', async () => {
    const { place, other, nl } = setup(label);
    const br = linkName(place, 'b');
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    await nl.createBridge({ name: br });
    const v = await nl.createVethPair({
      name,
      peerName: peer,
      peerNetns: other.path ?? `/proc/${process.pid}/ns/net`,
    });

    await nl.setMaster(name, br);
    expect(ipLink(place, name).master).toBe(br);
    expect((await nl.getLink(name)).masterIndex).toBe(ipLink(place, br).ifindex);
    expect((await nl.getLink(name)).portKind).toBe('bridge');

    await nl.noMaster(v.index);
    expect(ipLink(place, name).master).toBeUndefined();

    // A veth is no master: the kernel refuses with EOPNOTSUPP.
    const other2 = linkName(place, 'c');
    await nl.createVethPair({
      name: other2,
      peerName: linkName(place, 'd'),
      peerNetns: place.path ?? `/proc/${process.pid}/ns/net`,
    });
    const notBridge = await rejection(nl.setMaster(name, other2));
    expect(notBridge).toMatchObject({ code: 'EOPNOTSUPP', op: 'RTM_SETLINK' });
    expect(ipLink(place, name).master).toBeUndefined();

    const missing = await rejection(nl.setMaster(name, fx.name('zz')));
    expect(missing.code).toBe('ENODEV');
  });

  it('sets hairpin and isolation on a bridge port (IFLA_PROTINFO)', async () => {
    const { place, other, nl } = setup(label);
    const br = linkName(place, 'b');
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    await nl.createBridge({ name: br });
    await nl.createVethPair({ name, peerName: peer, peerNetns: other.path ?? `/proc/${process.pid}/ns/net` });
    expect(await nl.getBridgePort(name)).toBeUndefined();
    await nl.setMaster(name, br);

    await nl.setBridgePort(name, { hairpin: true, isolated: true });
    let seen = observeJson<any[]>(place, 'bridge', ['-d', 'link', 'show', 'dev', name])[0];
    expect([seen.hairpin, seen.isolated]).toEqual([true, true]);
    expect(await nl.getBridgePort(name)).toMatchObject({
      hairpin: true,
      isolated: true,
      masterIndex: ipLink(place, br).ifindex,
    });

    await nl.setBridgePort(name, { hairpin: false });
    seen = observeJson<any[]>(place, 'bridge', ['-d', 'link', 'show', 'dev', name])[0];
    expect([seen.hairpin, seen.isolated]).toEqual([false, true]);
    await nl.setBridgePort(name, { isolated: false });
    seen = observeJson<any[]>(place, 'bridge', ['-d', 'link', 'show', 'dev', name])[0];
    expect([seen.hairpin, seen.isolated]).toEqual([false, false]);
  });

  it('adds, lists and deletes port VLANs (PVID/untagged, tagged, ranges)', async (ctx) => {
    if (!vlansSupported) {
      ctx.skip('this kernel has no CONFIG_BRIDGE_VLAN_FILTERING (ip link add … vlan_filtering 1 fails)');
      return;
    }
    const { place, other, nl } = setup(label);
    const br = linkName(place, 'b');
    const name = linkName(place, 'v');
    const peer = other.label === 'host' ? fx.hostLink(fx.name('w')) : 'eth0';
    await nl.createBridge({ name: br, vlanFiltering: true });
    expect(ipLink(place, br).linkinfo.info_data.vlan_filtering).toBe(1);
    await nl.createVethPair({ name, peerName: peer, peerNetns: other.path ?? `/proc/${process.pid}/ns/net` });
    await nl.setMaster(name, br);
    await nl.delPortVlans(name, [{ vid: 1 }]);
    await nl.addPortVlans(name, [
      { vid: 10, pvid: true, untagged: true },
      { vid: 20 },
      { vid: 100, vidEnd: 105 },
    ]);

    const seen = observeJson<any[]>(place, 'bridge', ['vlan', 'show', 'dev', name])[0];
    const entries = (seen.vlans as any[]).map((v) => ({
      vid: v.vlan,
      vidEnd: v.vlanEnd,
      flags: (v.flags ?? []).sort(),
    }));
    expect(entries).toEqual([
      { vid: 10, vidEnd: undefined, flags: ['Egress Untagged', 'PVID'] },
      { vid: 20, vidEnd: undefined, flags: [] },
      { vid: 100, vidEnd: 105, flags: [] },
    ]);
    expect(await nl.listPortVlans(name)).toEqual([
      { vid: 10, pvid: true, untagged: true },
      { vid: 20 },
      { vid: 100, vidEnd: 105 },
    ]);

    await nl.delPortVlans(name, [{ vid: 20 }, { vid: 100, vidEnd: 105 }]);
    expect(await nl.listPortVlans(name)).toEqual([{ vid: 10, pvid: true, untagged: true }]);
    const after = observeJson<any[]>(place, 'bridge', ['vlan', 'show', 'dev', name])[0];
    expect((after.vlans as any[]).map((v) => v.vlan)).toEqual([10]);

    await nl.setBridgeVlanFiltering(br, false);
    expect(ipLink(place, br).linkinfo.info_data.vlan_filtering).toBe(0);
    await nl.setBridgeVlanFiltering(br, true);
    expect(ipLink(place, br).linkinfo.info_data.vlan_filtering).toBe(1);
    await nl.addPortVlans(br, [{ vid: 10 }], { self: true });
    const brVlans = observeJson<any[]>(place, 'bridge', ['vlan', 'show', 'dev', br])[0];
    expect((brVlans.vlans as any[]).map((v) => v.vlan)).toContain(10);
  });

  it('turning VLAN filtering on where the kernel lacks it fails with EOPNOTSUPP', async (ctx) => {
    if (vlansSupported) {
      ctx.skip('kernel supports VLAN filtering');
      return;
    }
    const { place, nl } = setup(label);
    const br = linkName(place, 'b');
    expect((await rejection(nl.createBridge({ name: br, vlanFiltering: true }))).code).toBe('EOPNOTSUPP');
    expect(ipLink(place, br)).toBeUndefined();
    // Without the flag the bridge is created, and switching filtering on later fails the same way.
    await nl.createBridge({ name: br, vlanFiltering: false });
    expect(ipLink(place, br).linkinfo.info_data.vlan_filtering).toBe(0);
    expect((await rejection(nl.setBridgeVlanFiltering(br, true))).code).toBe('EOPNOTSUPP');
  });
});
