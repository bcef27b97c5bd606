// GC of one network while another network's ADD on the same bridge is under way (Multus: two networks,
// one bridge). The kernel is scripted (no root): B's ADD is held while it configures its bridge port, with
// its veth already tagged, and A's GC (nothing valid) runs then.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type { BridgeDeps } from '../../src/bridge/deps';
import type { Request } from '../../src/cni-spec/request';
import { registerAttachment } from '../../src/bridge/registry';

vi.mock('../../src/bridge/kernel', async (original) => ({
  ...(await original<Record<string, unknown>>()),
  openNetns: () => ({ fd: 99, path: undefined, close() {} }),
  isOwnNetns: () => false,
  trySysctl: () => undefined,
  writeSysctl: () => undefined,
  readSysctl: () => '1',
  pinnedMac: () => undefined,
  readNftTable: () => Promise.resolve(undefined),
  applyNft: () => Promise.reject(new Error('no nftables here')),
}));

const { cmdAdd } = await import('../../src/bridge/add');
const { cmdGc } = await import('../../src/bridge/gc-status');

interface FakeLink {
  index: number;
  name: string;
  kind: string;
  alias?: string;
  masterIndex?: number;
  up?: boolean;
  mac?: string;
}

/** Links of the host, a pod whose interface appears with the pair, and a gate in setBridgePort. */
function world() {
  const links = new Map<number, FakeLink>([
    [1, { index: 1, name: 'br0', kind: 'bridge', up: true, mac: '02:00:00:00:00:01' }],
  ]);
  let next = 10;
  const deleted: string[] = [];
  let letGo: () => void = () => undefined;
  let reached: () => void = () => undefined;
  const atPort = new Promise<void>((r) => (reached = r));
  const find = (ref: number | string) => [...links.values()].find((l) => l.index === ref || l.name === ref);
  const gone = () => Object.assign(new Error('ENODEV'), { code: 'ENODEV' });
  const host = {
    close() {},
    findLink: (ref: number | string) => Promise.resolve(find(ref) && { ...find(ref)! }),
    getLink: (ref: number | string) =>
      find(ref) ? Promise.resolve({ ...find(ref)! }) : Promise.reject(gone()),
    listLinks: () => Promise.resolve([...links.values()].map((l) => ({ ...l }))),
    createVethPair: (o: { name: string; mac?: string }) => {
      const l = { index: next++, name: o.name, kind: 'veth', mac: o.mac };
      links.set(l.index, l);
      return Promise.resolve({ ...l });
    },
    setAlias: (ref: number, alias: string) => {
      const l = find(ref);
      if (l === undefined) return Promise.reject(gone());
      l.alias = alias;
      return Promise.resolve();
    },
    setMaster: (ref: number, master: number) => {
      const l = find(ref);
      if (l === undefined) return Promise.reject(gone());
      l.masterIndex = master;
      return Promise.resolve();
    },
    setBridgePort: async () => {
      reached();
      await new Promise<void>((r) => (letGo = r));
    },
    setUp: (ref: number | string) => {
      const l = find(ref);
      if (l === undefined) return Promise.reject(gone());
      l.up = true;
      return Promise.resolve();
    },
    deleteLink: (ref: number) => {
      const l = find(ref);
      if (l !== undefined) {
        links.delete(l.index);
        deleted.push(`${l.name} ${l.alias ?? ''}`);
      }
      return Promise.resolve();
    },
    waitOperUp: (ref: number) => (find(ref) ? Promise.resolve(find(ref)) : Promise.reject(gone())),
  };
  const pod = {
    close() {},
    getLink: (name: string) => Promise.resolve({ index: 2, name, kind: 'veth', mac: '0a:00:00:00:00:02' }),
    setUp: () => Promise.resolve(),
    findLink: () => Promise.resolve(undefined),
  };
  return { links, deleted, host, pod, atPort, letGo: () => letGo() };
}

function request(command: 'ADD' | 'GC', network: string, containerId = '', ifname = ''): Request {
  const config = { cniVersion: '1.1.0', name: network, type: 'berth-bridge', bridge: 'br0' };
  return {
    command,
    containerId,
    netns: containerId !== '' ? '/var/run/netns/x' : '',
    ifname,
    cniArgs: new Map(),
    path: [],
    env: {},
    stdin: JSON.stringify(config),
    config,
    cniVersion: '1.1.0',
    args: {},
    runtimeConfig: () => undefined,
    validAttachments: command === 'GC' ? [] : undefined,
    log: () => undefined,
    stderr: () => undefined,
  };
}

describe('two networks on one bridge', () => {
  it("GC of network A leaves network B's port alone while B's ADD is still configuring it", async () => {
    const w = world();
    const runDir = mkdtempSync(join(tmpdir(), 'bt-gc-shared-'));
    try {
      const deps = {
        runDir,
        nftTable: 'btgcshared',
        kernel: { host: () => Promise.resolve(w.host), netns: () => Promise.resolve(w.pod) },
        ipam: () => Promise.resolve(undefined),
      } as unknown as BridgeDeps;
      const add = cmdAdd(request('ADD', 'netB', 'ctrB', 'eth0'), deps).then(
        () => 'ok',
        (e: Error) => `failed: ${e.message}`,
      );
      // A's own stale port (named as berth names them, registered by A): the GC must remove this one, so that
      // "B's port left alone" below is not what a GC that removes nothing would also show.
      registerAttachment(runDir, 'netA', 'ctrOld/eth0', { masquerade: false, spoofCheck: false });
      w.links.set(50, {
        index: 50,
        name: 'vethdeadbeef',
        kind: 'veth',
        alias: 'ctrOld/eth0',
        masterIndex: 1,
      });
      await w.atPort; // B's veth is tagged ctrB/eth0 and on br0
      const gc = await cmdGc(request('GC', 'netA'), deps).then(
        () => undefined,
        (e: Error & { details?: string }) => `${e.message} ${e.details ?? ''}`,
      );
      w.letGo();
      expect(await add).toBe('ok');
      // Whatever failed, it was not the host's links (this kernel has no nftables: the scope's may fail).
      expect(gc ?? '').not.toMatch(/host netlink|list host veths|delete host veth/);
      expect(w.deleted).toEqual(['vethdeadbeef ctrOld/eth0']);
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });
});

describe('GC past failures', () => {
  it('a host socket that cannot be opened still lets IPAM GC run, and the failure is reported', async () => {
    const runDir = mkdtempSync(join(tmpdir(), 'bt-gc-fail-'));
    try {
      const ipamCalls: string[] = [];
      const deps = {
        runDir,
        nftTable: 'btgcfail',
        kernel: {
          host: () => Promise.reject(new Error('EMFILE: too many open files')),
          netns: () => Promise.reject(new Error('unused')),
        },
        ipam: (call: { command: string }) => {
          ipamCalls.push(call.command);
          return Promise.resolve(undefined);
        },
      } as unknown as BridgeDeps;
      const req = request('GC', 'netA');
      (req.config as Record<string, unknown>).ipam = { type: 'bt-ipam' };
      const err = await cmdGc(req, deps).catch((e: unknown) => e);
      expect(ipamCalls).toEqual(['GC']);
      expect((err as { details?: string }).details).toMatch(/host netlink: EMFILE/);
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });
});

describe('GC and ports by their records', () => {
  it("a port no record attributes is left, valid for IPAM's GC under both keys; a port another network registered stays though this one holds a stale record of it", async () => {
    const runDir = mkdtempSync(join(tmpdir(), `bt${process.pid}-gcrec-`));
    try {
      const w = world();
      w.links.set(50, {
        index: 50,
        name: 'vethdeadbeef',
        kind: 'veth',
        alias: 'ctrLost/eth0',
        masterIndex: 1,
      });
      w.links.set(51, { index: 51, name: 'vethfeedface', kind: 'veth', alias: 'ctrB/eth0', masterIndex: 1 });
      const nft = { masquerade: false, spoofCheck: false };
      registerAttachment(runDir, 'netB', 'ctrB/eth0', nft);
      registerAttachment(runDir, 'netA', 'ctrB/eth0', nft); // A's DEL of an earlier ctrB/eth0 failed
      let ipamGot: Request | undefined;
      const deps = {
        runDir,
        nftTable: 'btgcrec',
        kernel: { host: () => Promise.resolve(w.host), netns: () => Promise.resolve(w.pod) },
        ipam: (call: { request: Request }) => {
          ipamGot = call.request;
          return Promise.resolve(undefined);
        },
      } as unknown as BridgeDeps;
      const base = request('GC', 'netA');
      const config = { ...base.config, ipam: { type: 'berth-ipam' } };
      const lines: string[] = [];
      const req: Request = { ...base, config, stdin: JSON.stringify(config), log: (l) => void lines.push(l) };
      // nftables is not reachable here: GC reports that, after the rest.
      await cmdGc(req, deps).catch(() => undefined);
      expect(w.deleted).toEqual([]);
      expect(lines.join('\n')).toMatch(/left host veth vethdeadbeef \(ctrLost\/eth0\)/);
      const lost = [{ containerID: 'ctrLost', ifname: 'eth0' }];
      const sent = JSON.parse(ipamGot!.stdin) as Record<string, unknown>;
      expect(sent['cni.dev/valid-attachments']).toEqual(lost);
      expect(sent['cni.dev/attachments']).toEqual(lost);
      expect(ipamGot!.validAttachments).toEqual(lost);
    } finally {
      rmSync(runDir, { recursive: true, force: true });
    }
  });
});
