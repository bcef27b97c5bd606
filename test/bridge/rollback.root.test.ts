// A failed ADD leaves nothing: no veth, no lease, no nftables element, no gateway address it added, no
// bridge it created. Faults are real where the kernel or IPAM can produce them, injected otherwise
// (BERTH_TEST_FAULT, read only from the request's environment).
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type * as AddModule from '../../src/bridge/add';
import type * as DepsModule from '../../src/bridge/deps';
import type * as RequestModule from '../../src/cni-spec/request';
import { CNI_PATH, Fixture, REPO, ipJson, sh, trySh } from './harness';

const fx = new Fixture('r');
afterEach(() => fx.cleanup());
afterAll(() => fx.dispose());

function conf(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return fx.conf({
    isDefaultGateway: true,
    ipMasq: true,
    macspoofchk: true,
    ipam: fx.hostLocal([[{ subnet: '198.18.131.0/24' }], [{ subnet: 'fd00:b::/64' }]]),
    ...extra,
  });
}

function expectNothingLeft(
  c: Record<string, unknown>,
  ns: { name: string },
  opts: { bridgeGone: boolean },
): void {
  expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
  expect(fx.leases(c.name as string)).toEqual([]);
  expect(fx.nftList('inet')).not.toMatch(/comment "ctr/);
  expect(fx.nftList('bridge')).not.toMatch(/comment "ctr/);
  // Other engineers' tests tag their veths "ctr…" too: count only ours, on our bridges or on none (a veth
  // left behind before it was attached).
  const vethsWithOurTag = ipJson(['-d', 'link', 'show', 'type', 'veth']).filter(
    (l: any) =>
      typeof l.ifalias === 'string' &&
      l.ifalias.startsWith('ctr') &&
      (l.master === undefined || String(l.master).startsWith(fx.prefix)),
  );
  expect(vethsWithOurTag).toEqual([]);
  if (opts.bridgeGone) expect(trySh('ip', ['link', 'show', 'dev', c.bridge as string])).toBeUndefined();
}

/** Two pods on a range with room for one: the first ADD succeeds; the second's namespace and failed ADD. */
async function secondPodOfOne(c: Record<string, unknown>) {
  const first = fx.netns();
  const ok = await fx.add(c, 'ctr1', first.path);
  expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  const second = fx.netns();
  const add = await fx.add(c, 'ctr2', second.path);
  expect(add.code).not.toBe(0);
  return { second, add };
}

describe('rollback of a failed ADD', () => {
  it('IPAM fails (bad IPAM config): veth and the bridge it created are removed', async () => {
    const ns = fx.netns();
    const c = conf({ ipam: fx.hostLocal([[{ subnet: 'not-a-subnet' }]]) });
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code).not.toBe(0);
    expect(add.json.msg).toMatch(/not-a-subnet|invalid/i);
    expectNothingLeft(c, ns, { bridgeGone: true });
  });

  it('IPAM fails (range exhausted): the second pod leaves nothing, the first is untouched', async () => {
    const c = conf({ ipam: fx.hostLocal([[{ subnet: '198.18.131.0/30' }]]) });
    const { second, add } = await secondPodOfOne(c);
    expect(add.json.msg).toContain('no IP addresses available');
    expect(ipJson(['-n', second.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(fx.leases(c.name as string)).toEqual(['198.18.131.2']);
    expect(fx.ports(c.bridge as string)).toHaveLength(1);
    expect(fx.nftList('inet')).not.toContain('ctr2');
    // the first pod's gateway address survived the second one's rollback
    expect(
      ipJson(['addr', 'show', 'dev', c.bridge as string])[0].addr_info.some(
        (a: any) => a.local === '198.18.131.1',
      ),
    ).toBe(true);
  });

  it("berth-ipam fails (range exhausted): the caller's stderr has berth-ipam's own line, in both modes", async () => {
    // Standalone, berth-ipam is a process whose stderr berth-bridge passes on; in berthd it runs in-process
    // and must print the same line.
    const c = conf({
      ipam: { type: 'berth-ipam', dataDir: fx.dataDir, ranges: [[{ subnet: '198.18.131.0/30' }]] },
    });
    const { second, add } = await secondPodOfOne(c);
    const lines = add.stderr.split('\n');
    const ipamLine = lines.findIndex((l) => l.startsWith(`berth-ipam: ADD failed: code ${add.json.code}: `));
    const bridgeLine = lines.findIndex((l) =>
      l.startsWith(`berth-bridge: ADD failed: code ${add.json.code}: `),
    );
    expect(ipamLine, add.stderr).toBeGreaterThanOrEqual(0);
    expect(bridgeLine, add.stderr).toBeGreaterThan(ipamLine);
    expect(lines[ipamLine]).toContain(add.json.msg);
    expect(ipJson(['-n', second.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
  });

  it('a route that cannot be added (real kernel error after IPAM and veth): lease released, veth gone', async () => {
    const ns = fx.netns();
    const c = conf({
      ipam: fx.hostLocal([[{ subnet: '198.18.131.0/24' }]], {
        routes: [{ dst: '198.18.250.0/24', gw: '198.18.251.1' }],
      }),
    });
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(add.code).not.toBe(0);
    expect(add.json.msg).toContain('198.18.250.0/24');
    expectNothingLeft(c, ns, { bridgeGone: true });
  });

  it.each(['veth-created', 'after-veth', 'after-ipam', 'after-gateway', 'after-masq'])(
    'injected fault %s',
    async (point) => {
      const ns = fx.netns();
      const c = conf();
      const add = await fx.run({
        command: 'ADD',
        conf: c,
        containerId: 'ctr1',
        netns: ns.path,
        ifname: 'eth0',
        env: { BERTH_TEST_FAULT: point },
      });
      expect(add.code).not.toBe(0);
      expect(add.json.code).toBe(999);
      expect(add.json.msg).toContain(point);
      expectNothingLeft(c, ns, { bridgeGone: true });
    },
  );

  it.each(['berth-ipam', 'host-local'])(
    "a repeated ADD whose veth fails (eth0 is there) keeps the first ADD's lease and pod (%s)",
    async (type) => {
      // The first ADD's IPAM runs beside its veth (a new attachment); the repeat's must not, or its rollback's
      // IPAM DEL would release the address the first handed out (berth-ipam hands the same one out again).
      const ns = fx.netns();
      const ranges = [[{ subnet: '198.18.131.0/24' }], [{ subnet: 'fd00:b::/64' }]];
      const c = conf({
        ipMasq: false,
        macspoofchk: false,
        ipam: type === 'host-local' ? fx.hostLocal(ranges) : { type, dataDir: fx.dataDir, ranges },
      });
      const call = { command: 'ADD' as const, conf: c, containerId: 'ctr1', netns: ns.path, ifname: 'eth0' };
      expect((await fx.run(call)).code).toBe(0);
      const leases = fx.leases(c.name as string);
      expect(leases).toHaveLength(2);
      const again = await fx.run(call);
      expect(again.code).not.toBe(0);
      expect(again.json.msg).toMatch(/already exists/);
      expect(fx.leases(c.name as string)).toEqual(leases);
      expect(ipJson(['-n', ns.name, 'link', 'show', 'eth0'])).toHaveLength(1);
    },
  );

  it('a "%" in CNI_IFNAME or the bridge name is refused up front (4, 7): no veth, no eth0 in the pod', async () => {
    const ns = fx.netns();
    const c = conf();
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth%d',
    });
    expect(add.code).not.toBe(0);
    expect(add.json.code).toBe(4);
    expect(add.json.msg).toContain('CNI_IFNAME');
    expectNothingLeft(c, ns, { bridgeGone: true });
    const templated = { ...c, bridge: `${String(c.bridge).slice(0, 12)}%d` };
    const bad = await fx.run({
      command: 'ADD',
      conf: templated,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
    });
    expect(bad.json.code).toBe(7);
    expect(bad.json.msg).toContain('bridge');
    expectNothingLeft(c, ns, { bridgeGone: true });
    expect(trySh('ip', ['link', 'show', 'dev', `${String(c.bridge).slice(0, 12)}0`])).toBeUndefined();
  });

  it('CNI_NETNS naming a namespace of another type (a mount namespace) is code 8, as a non-netns path', async () => {
    const ns = fx.netns();
    const c = conf();
    for (const netns of ['/proc/self/ns/mnt', `/proc/${process.pid}/ns/uts`]) {
      const add = await fx.run({ command: 'ADD', conf: c, containerId: 'ctr1', netns, ifname: 'eth0' });
      expect(add.code).not.toBe(0);
      expect(add.json.code, add.stdout).toBe(8);
      expect(add.json.msg).toContain(`${netns}: not a network namespace`);
      expectNothingLeft(c, ns, { bridgeGone: true });
    }
  });

  it('after masquerade, with another pod on the bridge: its gateway and entries stay', async () => {
    const c = conf();
    const first = fx.netns();
    expect(
      (await fx.run({ command: 'ADD', conf: c, containerId: 'keep1', netns: first.path, ifname: 'eth0' }))
        .code,
    ).toBe(0);
    const ns = fx.netns();
    const add = await fx.run({
      command: 'ADD',
      conf: c,
      containerId: 'ctr1',
      netns: ns.path,
      ifname: 'eth0',
      env: { BERTH_TEST_FAULT: 'after-masq' },
    });
    expect(add.code).not.toBe(0);
    expect(add.json.code).toBe(999);
    expect(ipJson(['-n', ns.name, 'link', 'show']).map((l: any) => l.ifname)).toEqual(['lo']);
    expect(fx.leases(c.name as string)).toHaveLength(2); // keep1's IPv4 and IPv6 leases only
    expect(fx.nftList('inet')).toContain('keep1/eth0');
    expect(fx.nftList('inet')).not.toContain('ctr1');
    expect(fx.nftList('bridge')).not.toContain('ctr1');
    const gw = ipJson(['addr', 'show', 'dev', c.bridge as string])[0].addr_info.map((a: any) => a.local);
    expect(gw).toEqual(expect.arrayContaining(['198.18.131.1', 'fd00:b::1']));
  });
});

// In-process, as berthd runs the handler (the built code).
const dist = (m: string): unknown => require(join(REPO, 'dist', m));
const { cmdAdd } = dist('bridge/add.js') as typeof AddModule;
const { execIpam, faultAt, systemKernel } = dist('bridge/deps.js') as typeof DepsModule;
const { parseRequest } = dist('cni-spec/request.js') as typeof RequestModule;

/** berth-bridge's ADD of `containerId`/eth0 in `ns`, in-process, with the IPAM, caller signal and fault given. */
function addInProcess(opts: {
  ns: { path: string };
  c: Record<string, unknown>;
  containerId: string;
  ipam: DepsModule.BridgeDeps['ipam'];
  signal?: AbortSignal;
  fault?: string;
  kernel?: DepsModule.BridgeKernel;
}) {
  const req = parseRequest({
    env: {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: opts.containerId,
      CNI_NETNS: opts.ns.path,
      CNI_IFNAME: 'eth0',
      CNI_PATH,
    },
    stdin: JSON.stringify(opts.c),
  });
  if (opts.signal !== undefined) req.signal = opts.signal;
  return cmdAdd(req, {
    runDir: fx.runDir,
    nftTable: fx.nftTable,
    kernel: opts.kernel ?? systemKernel,
    ipam: opts.ipam,
    ...(opts.fault !== undefined ? { fault: faultAt(opts.fault) } : {}),
  });
}

/** What a stand-in IPAM hands out. */
const STAND_IN = (address: string) => ({ cniVersion: '1.1.0', ips: [{ address, gateway: '198.18.131.1' }] });

/** The caller gives up while the IPAM plugin runs; the delegate is killed (after its lease is written). */
function cutShort(caller: AbortController): never {
  caller.abort();
  throw new Error('IPAM plugin host-local killed: the call was cancelled');
}

describe('rollback when the call was cancelled (berthd: the caller left, or the deadline passed)', () => {
  it("the delegated IPAM's lease is still released: the rollback is not cancelled with the call", async () => {
    const ns = fx.netns();
    const c = conf({ ipMasq: false, macspoofchk: false });
    const caller = new AbortController();
    const ipamCalls: string[] = [];
    const add = addInProcess({
      ns,
      c,
      containerId: 'ctr9',
      signal: caller.signal,
      ipam: async (call) => {
        ipamCalls.push(`${call.command} cancelled=${call.request.signal?.aborted}`);
        const r = await execIpam(call);
        // The caller leaves right after host-local handed out the address; the ADD then fails.
        if (call.command === 'ADD') caller.abort();
        return r;
      },
      fault: 'after-ipam',
    });
    await expect(add).rejects.toThrow(/after-ipam/);
    expect(ipamCalls).toEqual(['ADD cancelled=false', 'DEL cancelled=false']);
    expectNothingLeft(c, ns, { bridgeGone: true });
  });

  it('an IPAM ADD cut short by the caller leaving still gets its DEL (it may have written its lease)', async () => {
    const ns = fx.netns();
    const c = conf({ ipMasq: false, macspoofchk: false, ipam: { type: 'host-local' } });
    const caller = new AbortController();
    const calls: string[] = [];
    const add = addInProcess({
      ns,
      c,
      containerId: 'ctr8',
      signal: caller.signal,
      ipam: async (call) => {
        calls.push(call.command);
        return call.command === 'ADD' ? cutShort(caller) : undefined;
      },
    });
    await expect(add).rejects.toThrow(/cancelled/);
    expect(calls).toEqual(['ADD', 'DEL']);
    expectNothingLeft(c, ns, { bridgeGone: true });
  });

  it("a repeated ADD's IPAM ADD cut short gets no DEL: the lease may be the first ADD's", async () => {
    const ns = fx.netns();
    const c = conf({ ipMasq: false, macspoofchk: false, ipam: { type: 'host-local' } });
    const calls: string[] = [];
    const addOnce = (leave: boolean) => {
      const caller = new AbortController();
      return addInProcess({
        ns,
        c,
        containerId: 'ctr8',
        signal: caller.signal,
        ipam: async (call) => {
          calls.push(call.command);
          if (call.command !== 'ADD') return undefined;
          return leave ? cutShort(caller) : STAND_IN('198.18.131.8/24');
        },
      });
    };
    await addOnce(false);
    // The pod lost its eth0 (so the repeat's veth can be made); the attachment's record is still there.
    sh('ip', ['-n', ns.name, 'link', 'del', 'eth0']);
    await expect(addOnce(true)).rejects.toThrow(/cancelled/);
    expect(calls).toEqual(['ADD', 'ADD']);
  });
});

describe('when IPAM is called', () => {
  /** An ADD whose IPAM (of `type`) is a stand-in recording whether eth0 was in the pod when each call came. */
  function addWith(type: string, opts: { fault?: string; ipamDelayMs?: number } = {}) {
    const ns = fx.netns();
    const c = conf({ ipMasq: false, macspoofchk: false, ipam: { type } });
    const calls: string[] = [];
    const add = addInProcess({
      ns,
      c,
      containerId: 'ctr7',
      ipam: async (call) => {
        // Read at once, as a DHCP client would look for its interface.
        const eth0 = trySh('ip', ['-n', ns.name, 'link', 'show', 'eth0']) !== undefined;
        calls.push(`${call.pluginType} ${call.command} eth0=${eth0}`);
        if (opts.ipamDelayMs !== undefined) await new Promise((r) => setTimeout(r, opts.ipamDelayMs));
        return call.command === 'ADD' ? STAND_IN('198.18.131.7/24') : undefined;
      },
      ...(opts.fault !== undefined ? { fault: opts.fault } : {}),
    });
    return { ns, c, calls, add };
  }

  it('an IPAM that may use the interface (dhcp) is called once eth0 is in the pod', async () => {
    const { ns, calls, add } = addWith('dhcp');
    const result = await add;
    expect(result.ips?.[0]?.address).toBe('198.18.131.7/24');
    expect(calls).toEqual(['dhcp ADD eth0=true']);
    expect(ipJson(['-n', ns.name, '-4', 'addr', 'show', 'eth0'])[0].addr_info[0].local).toBe('198.18.131.7');
  });

  it('host-local, static and berth-ipam hand out addresses while the veth is made', async () => {
    for (const type of ['host-local', 'static', 'berth-ipam']) {
      const { calls, add } = addWith(type);
      await add;
      expect(calls).toEqual([`${type} ADD eth0=false`]);
      fx.cleanup();
    }
  });

  it('a veth step that fails while that IPAM ADD still runs: the rollback waits for it, then releases it', async () => {
    const { c, ns, calls, add } = addWith('host-local', { fault: 'veth-created', ipamDelayMs: 300 });
    await expect(add).rejects.toThrow(/veth-created/);
    expect(calls).toHaveLength(2);
    expect(calls[1]).toMatch(/^host-local DEL /);
    expectNothingLeft(c, ns, { bridgeGone: true });
  });
});

describe('two networks on one bridge (Multus: a network per VLAN, say)', () => {
  it("one network's rollback does not remove the bridge under the other's ADD", async () => {
    const bridge = fx.bridge();
    const net = (name: string) =>
      fx.conf({
        name: `${fx.prefix}${name}`,
        bridge,
        ipMasq: false,
        macspoofchk: false,
        ipam: { type: 'host-local' },
      });
    const [a, b] = [net('neta'), net('netb')];
    const gate = <T = void>() => {
      let open: (v: T) => void = () => undefined;
      const p = new Promise<T>((r) => (open = r));
      return { p, open };
    };
    const bAttaching = gate();
    const aVethGone = gate();
    const aSettled = gate();
    // A made the bridge and fails after its port; its rollback starts once B has found the bridge and is
    // about to make its veth. B goes on when A is done, or 2 s after A's veth went if A waits (for the
    // bridge's lock): A's remaining steps (a stand-in IPAM's DEL, its record, the bridge) take milliseconds.
    const addA = addInProcess({
      ns: fx.netns(),
      c: a,
      containerId: 'ctra',
      ipam: async (call) => (call.command === 'ADD' ? STAND_IN('198.18.131.9/24') : undefined),
      fault: 'after-veth',
      kernel: {
        ...systemKernel,
        host: async () => {
          const nl = await systemKernel.host();
          const deleteLink = nl.deleteLink.bind(nl);
          nl.deleteLink = async (ref) => {
            await bAttaching.p;
            try {
              return await deleteLink(ref);
            } finally {
              aVethGone.open();
            }
          };
          return nl;
        },
      },
    });
    void addA.finally(() => aSettled.open()).catch(() => undefined);
    await expect
      .poll(() => trySh('ip', ['link', 'show', bridge]) !== undefined, { timeout: 5000 })
      .toBe(true);
    const addB = addInProcess({
      ns: fx.netns(),
      c: b,
      containerId: 'ctrb',
      ipam: async (call) => (call.command === 'ADD' ? STAND_IN('198.18.131.10/24') : undefined),
      kernel: {
        ...systemKernel,
        host: async () => {
          const nl = await systemKernel.host();
          const createVethPair = nl.createVethPair.bind(nl);
          nl.createVethPair = async (o) => {
            bAttaching.open();
            // A settled without deleting its veth (the fix missing, or another failure): no wait for good.
            await Promise.race([aVethGone.p, aSettled.p]);
            await Promise.race([aSettled.p, new Promise((r) => setTimeout(r, 2000).unref())]);
            return createVethPair(o);
          };
          return nl;
        },
      },
    });
    // A's rollback must not wait for B forever if B fails before its veth.
    void addB.finally(() => bAttaching.open()).catch(() => undefined);
    await expect(addA).rejects.toThrow(/after-veth/);
    const result = await addB;
    expect(result.ips?.[0]?.address).toBe('198.18.131.10/24');
    // B's port is on the bridge A made.
    const ports = ipJson(['link', 'show', 'master', bridge]).map((l: any) => l.ifname);
    expect(ports).toEqual([result.interfaces?.[1]?.name]);
  });
});
