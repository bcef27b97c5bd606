// DEL in-process with a kernel that counts the host link listings: the listing of every host link (searching
// the attachment's tag) runs only when the pod's interface did not take this attachment's host veth with it.
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type * as DelModule from '../../src/bridge/del';
import type * as DepsModule from '../../src/bridge/deps';
import type { BridgeDeps } from '../../src/bridge/deps';
import type * as RequestModule from '../../src/cni-spec/request';
import { CNI_PATH, Fixture, REPO, ipJson, sh } from './harness';

// The built code (dist/), as berthd runs it: the kernel services load their modules with require().
const dist = (m: string): unknown => require(join(REPO, 'dist', m));
const { cmdDel } = dist('bridge/del') as typeof DelModule;
const { execIpam, systemKernel } = dist('bridge/deps') as typeof DepsModule;
const { parseRequest } = dist('cni-spec/request') as typeof RequestModule;

const fx = new Fixture('s');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

/** berth-bridge's services with the host socket's listLinks counted. */
function countingDeps(): { deps: BridgeDeps; listings: () => number } {
  let listings = 0;
  const deps: BridgeDeps = {
    runDir: fx.runDir,
    nftTable: fx.nftTable,
    ipam: execIpam,
    kernel: {
      netns: systemKernel.netns,
      host: async () => {
        const nl = await systemKernel.host();
        return new Proxy(nl, {
          get(target, key) {
            const v = Reflect.get(target, key) as unknown;
            if (key === 'listLinks') listings++;
            return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          },
        });
      },
    },
  };
  return { deps, listings: () => listings };
}

async function added(): Promise<{
  ns: { name: string; path: string };
  c: Record<string, unknown>;
  hostVeth: string;
}> {
  const ns = fx.netns();
  const c = fx.conf({ cniVersion: '1.0.0', ipam: fx.hostLocal([[{ subnet: '198.18.137.0/24' }]]) });
  const add = await fx.run({ command: 'ADD', conf: c, containerId: 'ctr9', netns: ns.path, ifname: 'eth0' });
  expect(add.code, add.stdout).toBe(0);
  const ports = fx.ports(c.bridge as string);
  expect(ports).toHaveLength(1);
  return { ns, c, hostVeth: ports[0].ifname as string };
}

/** DEL in-process; resolves with how many times it listed the host's links. */
async function delCountingListings(c: Record<string, unknown>, netns: string): Promise<number> {
  const { deps, listings } = countingDeps();
  const req = parseRequest({
    env: {
      ...fx.env(),
      PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      CNI_PATH,
      CNI_COMMAND: 'DEL',
      CNI_CONTAINERID: 'ctr9',
      CNI_NETNS: netns,
      CNI_IFNAME: 'eth0',
    },
    stdin: JSON.stringify(c),
  });
  await cmdDel(req, deps);
  return listings();
}

function linkNames(ns?: string): string[] {
  return ipJson([...(ns !== undefined ? ['-n', ns] : []), 'link', 'show']).map((l: any) => l.ifname);
}

describe('DEL and the host link listing', () => {
  it('the pod veth took the tagged host veth with it: no listing of the host links', async () => {
    const { ns, c, hostVeth } = await added();
    expect(await delCountingListings(c, ns.path)).toBe(0);
    expect(linkNames()).not.toContain(hostVeth);
    expect(linkNames(ns.name)).toEqual(['lo']);
    expect(fx.ports(c.bridge as string)).toEqual([]);
    expect(fx.leases(c.name as string)).toEqual([]);
  });

  it("the pod's eth0 is not the attachment's veth: the host links are searched and the tagged veth removed", async () => {
    const { ns, c, hostVeth } = await added();
    // The attachment's veth renamed away and another link in its place: deleting eth0 leaves the host end.
    sh('ip', ['-n', ns.name, 'link', 'set', 'eth0', 'name', 'eth9']);
    sh('ip', ['-n', ns.name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth8']);
    expect(await delCountingListings(c, ns.path)).toBe(1);
    expect(linkNames()).not.toContain(hostVeth);
    expect(linkNames(ns.name)).toEqual(['lo']);
    expect(fx.leases(c.name as string)).toEqual([]);
  });

  it('without a namespace the host links are searched as before', async () => {
    const { ns, c, hostVeth } = await added();
    expect(await delCountingListings(c, '')).toBe(1);
    expect(linkNames()).not.toContain(hostVeth);
    expect(linkNames(ns.name)).toEqual(['lo']);
  });
});
