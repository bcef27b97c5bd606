// berth-ipam as a runtime runs it (the built executable, CNI env, config on stdin): every config key and
// requested-IP source, idempotent ADD, exhaustion and STATUS, reboot, GC, CHECK, corrupt files, path escapes.
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, test } from 'vitest';
import { type Invocation, addressesOf, assertBuilt, ipam, leaseFiles, netConf, tempDataDir } from './harness';

beforeAll(assertBuilt);

let cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

function setup(
  ipamKeys: Record<string, unknown> = {},
  opts: { cniVersion?: string; top?: Record<string, unknown> } = {},
) {
  const t = tempDataDir('plugin');
  cleanups.push(t.cleanup);
  const bootFile = join(t.dir, 'boot_id');
  writeFileSync(bootFile, 'boot-1\n');
  const config = netConf({
    name: 'net1',
    type: 'berth-ipam',
    ipam: { dataDir: join(t.dir, 'data'), ranges: [[{ subnet: '198.18.64.0/24' }]], ...ipamKeys },
    ...opts,
  });
  const call = (inv: Partial<Invocation> & Pick<Invocation, 'command'>) =>
    ipam({ config, ...inv, env: { BERTH_BOOT_ID_FILE: bootFile, ...inv.env } });
  return {
    dir: t.dir,
    dataDir: join(t.dir, 'data'),
    netDir: join(t.dir, 'data', 'net1'),
    bootFile,
    config,
    call,
  };
}

describe('ADD result', () => {
  test('1.1.0: ips with prefix and gateway, routes, DNS from resolvConf, no interfaces; files in host-local layout', () => {
    const s = setup({
      routes: [{ dst: '0.0.0.0/0' }, { dst: '198.18.0.0/15', gw: '198.18.64.1' }],
      resolvConf: '',
    });
    const resolv = join(s.dir, 'resolv.conf');
    writeFileSync(
      resolv,
      '# comment\nnameserver 198.18.0.53\nnameserver fd00:5::53\ndomain example.test\nsearch a.test b.test\noptions ndots:2 edns0\n',
    );
    (s.config.ipam as Record<string, unknown>).resolvConf = resolv;
    const r = s.call({ command: 'ADD', containerId: 'ctr1' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.json).toEqual({
      cniVersion: '1.1.0',
      ips: [{ address: '198.18.64.2/24', gateway: '198.18.64.1' }],
      routes: [{ dst: '0.0.0.0/0' }, { dst: '198.18.0.0/15', gw: '198.18.64.1' }],
      dns: {
        nameservers: ['198.18.0.53', 'fd00:5::53'],
        domain: 'example.test',
        search: ['a.test', 'b.test'],
        options: ['ndots:2', 'edns0'],
      },
    });
    expect(readFileSync(join(s.netDir, '198.18.64.2'), 'utf8')).toBe('ctr1\r\neth0');
    expect(statSync(join(s.netDir, '198.18.64.2')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(s.netDir, 'last_reserved_ip.0'), 'utf8')).toBe('198.18.64.2');
    expect(existsSync(join(s.netDir, 'lock'))).toBe(true);
  });

  test('resolvConf /dev/null means no DNS, as host-local reads it; a FIFO or a directory is code 5', () => {
    const s = setup({ resolvConf: '/dev/null' });
    const r = s.call({ command: 'ADD', containerId: 'ctr1' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.json).not.toHaveProperty('dns');
    const dir = setup({ resolvConf: '/tmp' });
    const bad = dir.call({ command: 'ADD', containerId: 'ctr1' });
    expect(bad.json).toMatchObject({
      code: 5,
      msg: 'cannot read resolvConf /tmp: /tmp is not a regular file',
    });
  });

  test.each([
    [
      '0.4.0',
      { cniVersion: '0.4.0', ips: [{ version: '4', address: '198.18.64.2/24', gateway: '198.18.64.1' }] },
    ],
    ['0.2.0', { cniVersion: '0.2.0', ip4: { ip: '198.18.64.2/24', gateway: '198.18.64.1' } }],
  ])('in the request version %s', (v, want) => {
    const s = setup({}, { cniVersion: v });
    const r = s.call({ command: 'ADD' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.json).toMatchObject(want);
    expect(r.json).not.toHaveProperty('interfaces');
  });

  test('legacy top-level subnet/rangeStart/rangeEnd/gateway, prepended to ranges', () => {
    const s = setup({
      subnet: '198.18.65.0/24',
      rangeStart: '198.18.65.100',
      rangeEnd: '198.18.65.101',
      gateway: '198.18.65.254',
      ranges: [[{ subnet: 'fd00:5::/64' }]],
    });
    const r = s.call({ command: 'ADD' });
    expect(r.json?.ips).toEqual([
      { address: '198.18.65.100/24', gateway: '198.18.65.254' },
      { address: 'fd00:5::2/64', gateway: 'fd00:5::1' },
    ]);
  });

  test('idempotent: the same attachment gets the same addresses, another one the next', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]] });
    const a = s.call({ command: 'ADD', containerId: 'c1' });
    const b = s.call({ command: 'ADD', containerId: 'c1' });
    const c = s.call({ command: 'ADD', containerId: 'c2' });
    expect(addressesOf(a)).toEqual(['198.18.64.2', 'fd00:5::2']);
    expect(addressesOf(b)).toEqual(addressesOf(a));
    expect(addressesOf(c)).toEqual(['198.18.64.3', 'fd00:5::3']);
    expect([...leaseFiles(s.dataDir, 'net1').keys()].sort()).toEqual([
      '198.18.64.2',
      '198.18.64.3',
      'fd00:5::2',
      'fd00:5::3',
    ]);
  });

  test('exclude and allocation "lowest"', () => {
    const s = setup({ exclude: ['198.18.64.2', '198.18.64.4/31'], allocation: 'lowest' });
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'c1' }))).toEqual(['198.18.64.3']);
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'c2' }))).toEqual(['198.18.64.6']);
    expect(s.call({ command: 'DEL', containerId: 'c1' }).status).toBe(0);
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'c3' }))).toEqual(['198.18.64.3']);
  });
});

describe('requested IPs', () => {
  test.each<[string, Partial<Invocation>, Record<string, unknown>]>([
    ['CNI_ARGS IP=', { cniArgs: 'IgnoreUnknown=1;K8S_POD_NAME=p;IP=198.18.64.50' }, {}],
    ['args.cni.ips', {}, { args: { cni: { ips: ['198.18.64.50/24'] } } }],
    ['runtimeConfig.ips', {}, { runtimeConfig: { ips: ['198.18.64.50/24'] } }],
  ])('%s', (_n, inv, top) => {
    const s = setup({}, { top });
    const r = s.call({ command: 'ADD', ...inv });
    expect(r.status, r.stdout).toBe(0);
    expect(addressesOf(r)).toEqual(['198.18.64.50']);
    // Taken now: the same request for another attachment fails and leaves nothing behind.
    const again = s.call({ command: 'ADD', containerId: 'other', ...inv });
    expect(again.status).not.toBe(0);
    expect(again.json?.msg).toMatch(
      /requested IP address 198\.18\.64\.50 is not available in range set 198\.18\.64\.1-198\.18\.64\.254/,
    );
    expect([...leaseFiles(s.dataDir, 'net1').keys()]).toEqual(['198.18.64.50']);
  });

  test('runtimeConfig.ipRanges is prepended (one address per set)', () => {
    const s = setup(
      {},
      { top: { runtimeConfig: { ipRanges: [[{ subnet: '198.18.66.0/24', rangeStart: '198.18.66.10' }]] } } },
    );
    const r = s.call({ command: 'ADD' });
    expect(r.json?.ips).toEqual([
      { address: '198.18.66.10/24', gateway: '198.18.66.1' },
      { address: '198.18.64.2/24', gateway: '198.18.64.1' },
    ]);
  });

  test('a requested IP in no range set fails the ADD and releases what it took (dual stack)', () => {
    const s = setup(
      { ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]] },
      { top: { runtimeConfig: { ips: ['198.18.99.1'] } } },
    );
    const r = s.call({ command: 'ADD' });
    expect(r.status).not.toBe(0);
    expect(r.json?.msg).toMatch(/failed to allocate all requested IPs: 198\.18\.99\.1/);
    expect(leaseFiles(s.dataDir, 'net1').size).toBe(0);
  });

  test('a taken IPv6 request rolls back the IPv4 address of the same ADD', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]] });
    expect(s.call({ command: 'ADD', containerId: 'c1', cniArgs: 'IP=fd00:5::9' }).status).toBe(0);
    const r = s.call({ command: 'ADD', containerId: 'c2', cniArgs: 'IP=fd00:5::9' });
    expect(r.status).not.toBe(0);
    expect(r.json?.msg).toMatch(
      /failed to allocate for range 1: requested IP address fd00:5::9 is not available/,
    );
    expect([...leaseFiles(s.dataDir, 'net1').keys()].sort()).toEqual(['198.18.64.2', 'fd00:5::9']);
  });
});

describe('exhaustion and STATUS', () => {
  test('a full pool fails ADD, then STATUS says 50; a DEL makes both work again', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/29' }]] }); // .2-.6 usable
    expect(s.call({ command: 'STATUS' }).status).toBe(0);
    for (let i = 0; i < 5; i++) expect(s.call({ command: 'ADD', containerId: `c${i}` }).status).toBe(0);
    const full = s.call({ command: 'ADD', containerId: 'c5' });
    expect(full.status).toBe(1);
    expect(full.json?.msg).toBe(
      'failed to allocate for range 0: no IP addresses available in range set: 198.18.64.1-198.18.64.6',
    );
    const st = s.call({ command: 'STATUS' });
    expect(st.status).toBe(1);
    expect(st.json?.code).toBe(50);
    expect(st.json?.msg).toMatch(/no free address in range set 0 \(198\.18\.64\.1-198\.18\.64\.6\)/);
    expect(s.call({ command: 'DEL', containerId: 'c3' }).status).toBe(0);
    expect(s.call({ command: 'STATUS' }).status).toBe(0);
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'c5' }))).toEqual(['198.18.64.5']);
  });

  test('STATUS is 50 when the store cannot be written', () => {
    const s = setup();
    writeFileSync(join(s.dir, 'afile'), '');
    (s.config.ipam as Record<string, unknown>).dataDir = join(s.dir, 'afile', 'data');
    const st = s.call({ command: 'STATUS' });
    expect(st.json?.code).toBe(50);
    expect(st.json?.msg).toMatch(/not writable: .*afile is not a directory/);
  });
});

describe('keys in any case, as host-local reads them (Go)', () => {
  test('"datadir", "Ranges", "rangestart"/"RangeEnd", "Subnet", "Routes" mean what host-local takes them for', () => {
    const t = tempDataDir('plugin-case');
    cleanups.push(t.cleanup);
    const dir = join(t.dir, 'other-data');
    const config = netConf({
      name: 'net1',
      type: 'berth-ipam',
      ipam: {
        datadir: dir,
        Ranges: [[{ Subnet: '198.18.66.0/24', rangestart: '198.18.66.100', RangeEnd: '198.18.66.110' }]],
        Routes: [{ Dst: '0.0.0.0/0' }],
      },
    });
    const r = ipam({ config, command: 'ADD', containerId: 'c1', env: {} });
    expect(r.status, r.stdout).toBe(0);
    expect(addressesOf(r)).toEqual(['198.18.66.100']);
    expect(r.json?.routes).toEqual([{ dst: '0.0.0.0/0' }]);
    expect([...leaseFiles(dir, 'net1').keys()]).toEqual(['198.18.66.100']);
  });
});

describe('reboot', () => {
  test('leases of an earlier boot are released on the first ADD of a new boot', () => {
    const s = setup();
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'old1' }))).toEqual(['198.18.64.2']);
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'old2' }))).toEqual(['198.18.64.3']);
    writeFileSync(s.bootFile, 'boot-2\n');
    const r = s.call({ command: 'ADD', containerId: 'new1' });
    expect(r.stderr).toMatch(/released 2 lease\(s\) of network net1 from an earlier boot/);
    expect(addressesOf(r)).toEqual(['198.18.64.4']);
    expect([...leaseFiles(s.dataDir, 'net1')]).toEqual([['198.18.64.4', 'new1\r\neth0']]);
  });

  test('host-local leases belong to the boot they were first seen in', () => {
    const s = setup();
    mkdirSync(s.netDir, { recursive: true });
    writeFileSync(join(s.netDir, '198.18.64.20'), 'hl1\r\neth0');
    expect(s.call({ command: 'ADD', containerId: 'b1' }).status).toBe(0); // first seen in boot-1
    writeFileSync(s.bootFile, 'boot-2\n');
    writeFileSync(join(s.netDir, '198.18.64.21'), 'hl2\r\neth0'); // appears during boot-2
    const r = s.call({ command: 'ADD', containerId: 'b2' });
    // b1 (.2) and hl1 (.20) were boot-1's; hl2 (.21) was first seen in boot-2 and stays; the cursor was at .2.
    expect(addressesOf(r)).toEqual(['198.18.64.3']);
    expect([...leaseFiles(s.dataDir, 'net1').keys()].sort()).toEqual(['198.18.64.21', '198.18.64.3']);
  });

  test('a container id that came back after the reboot (through host-local) with another address keeps it', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/29' }]] });
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'x' }))).toEqual(['198.18.64.2']);
    writeFileSync(s.bootFile, 'boot-2\n');
    // The runtime restarts x under the same id through host-local: its DEL, then its ADD (the next address).
    rmSync(join(s.netDir, '198.18.64.2'));
    writeFileSync(join(s.netDir, '198.18.64.3'), 'x\r\neth0');
    writeFileSync(join(s.netDir, 'last_reserved_ip.0'), '198.18.64.3');
    // berth's record of x still names boot-1 and .2: x's live .3 is not "from an earlier boot".
    const r = s.call({ command: 'ADD', containerId: 'y' });
    expect(r.stderr).not.toMatch(/released \d+ lease/);
    expect(addressesOf(r)).toEqual(['198.18.64.4']);
    for (let i = 0; i < 4; i++) s.call({ command: 'ADD', containerId: `z${i}` });
    const files = leaseFiles(s.dataDir, 'net1');
    expect(files.get('198.18.64.3')).toBe('x\r\neth0');
  });

  test('a container id that came back after the reboot (through host-local) with the same address keeps it', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/29' }]] });
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'x' }))).toEqual(['198.18.64.2']);
    writeFileSync(s.bootFile, 'boot-2\n');
    const until = Date.now() + 20;
    while (Date.now() < until); // the next file's mtime past the boot's start, on any timestamp granularity
    // A static address: the runtime's DEL and ADD of x through host-local in boot-2, the same file again.
    rmSync(join(s.netDir, '198.18.64.2'));
    writeFileSync(join(s.netDir, '198.18.64.2'), 'x\r\neth0');
    // berth's record of x names boot-1 and .2, but the file is boot-2's: x's live .2 stays x's.
    const r = s.call({ command: 'ADD', containerId: 'y' });
    expect(r.stderr).not.toMatch(/released \d+ lease/);
    expect(addressesOf(r)).toEqual(['198.18.64.3']);
    const again = s.call({ command: 'ADD', containerId: 'z', env: { CNI_ARGS: 'IP=198.18.64.2' } });
    expect(again.status).not.toBe(0);
    expect(leaseFiles(s.dataDir, 'net1').get('198.18.64.2')).toBe('x\r\neth0');
  });

  test('releaseOnReboot: false keeps them', () => {
    const s = setup({ releaseOnReboot: false });
    expect(s.call({ command: 'ADD', containerId: 'old1' }).status).toBe(0);
    writeFileSync(s.bootFile, 'boot-2\n');
    expect(s.call({ command: 'ADD', containerId: 'new1' }).status).toBe(0);
    expect([...leaseFiles(s.dataDir, 'net1').keys()].sort()).toEqual(['198.18.64.2', '198.18.64.3']);
  });

  test('a full pool of an earlier boot is not "exhausted" for STATUS', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/30' }]] }); // only .2
    expect(s.call({ command: 'ADD', containerId: 'old' }).status).toBe(0);
    expect(s.call({ command: 'STATUS' }).json?.code).toBe(50);
    writeFileSync(s.bootFile, 'boot-2\n');
    expect(s.call({ command: 'STATUS' }).status).toBe(0);
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'new' }))).toEqual(['198.18.64.2']);
  });
});

describe('DEL, CHECK, GC', () => {
  test('DEL is idempotent, works for unknown attachments and after the ranges changed', () => {
    const s = setup();
    expect(s.call({ command: 'ADD', containerId: 'c1' }).status).toBe(0);
    (s.config.ipam as Record<string, unknown>).ranges = [[{ subnet: '198.18.70.0/24' }]];
    for (let i = 0; i < 2; i++) {
      const r = s.call({ command: 'DEL', containerId: 'c1', netns: '' });
      expect(r.status, r.stdout).toBe(0);
      expect(r.stdout).toBe('');
    }
    expect(s.call({ command: 'DEL', containerId: 'never' }).status).toBe(0);
    expect(leaseFiles(s.dataDir, 'net1').size).toBe(0);
  });

  test('DEL and GC release even when the ranges no longer parse; ADD still refuses them', () => {
    const s = setup();
    expect(s.call({ command: 'ADD', containerId: 'c1' }).status).toBe(0);
    expect(s.call({ command: 'ADD', containerId: 'c2' }).status).toBe(0);
    (s.config.ipam as Record<string, unknown>).ranges = [[{ subnet: '198.18.64.5/24' }]];
    expect(s.call({ command: 'ADD', containerId: 'c3' }).json?.code).toBe(7);
    const r = s.call({ command: 'DEL', containerId: 'c1' });
    expect(r.status, r.stdout).toBe(0);
    expect(r.stderr).toMatch(/host bits set.*; releasing by attachment anyway/);
    expect([...leaseFiles(s.dataDir, 'net1').keys()]).toEqual(['198.18.64.3']);
    expect(ipam({ config: s.config, command: 'GC' }).status).toBe(0);
    expect(leaseFiles(s.dataDir, 'net1').size).toBe(0);
  });

  test('CHECK compares prevResult with the leases', () => {
    const s = setup({ ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]] });
    const add = s.call({ command: 'ADD', containerId: 'c1' });
    const withPrev = (prev: unknown) => ({ ...s.config, prevResult: prev });
    const check = (prev: unknown, containerId = 'c1') =>
      ipam({
        config: withPrev(prev),
        command: 'CHECK',
        containerId,
        env: { BERTH_BOOT_ID_FILE: s.bootFile },
      });
    expect(check(add.json).status).toBe(0);
    const wrong = {
      ...add.json,
      ips: [{ address: '198.18.64.9/24', gateway: '198.18.64.1' }, add.json!.ips[1]],
    };
    const r = check(wrong);
    expect(r.status).toBe(1);
    expect(r.json?.msg).toMatch(
      /prevResult lists 198\.18\.64\.9 which the attachment does not hold; the attachment holds 198\.18\.64\.2 which prevResult does not list/,
    );
    const missing = check(add.json, 'c2');
    expect(missing.json?.code).toBe(3);
  });

  test('CHECK without prevResult (a direct call, as host-local answers it): a lease of the attachment passes, none is code 3', () => {
    const s = setup();
    expect(s.call({ command: 'ADD', containerId: 'c1' }).status).toBe(0);
    const direct = (containerId: string) =>
      ipam({ config: s.config, command: 'CHECK', containerId, env: { BERTH_BOOT_ID_FILE: s.bootFile } });
    const held = direct('c1');
    expect(held.status, held.stdout + held.stderr).toBe(0);
    expect(held.stdout).toBe('');
    const none = direct('c2');
    expect(none.status).toBe(1);
    expect(none.json).toMatchObject({ code: 3 });
    expect(none.json?.msg).toMatch(/failed to find an address added by container c2/);
    expect(s.call({ command: 'DEL', containerId: 'c1' }).status).toBe(0);
    expect(direct('c1').json?.code).toBe(3);
  });

  test('GC releases every lease not in cni.dev/valid-attachments and keeps lock and cursors', () => {
    const s = setup();
    for (const c of ['keep1', 'drop1', 'keep2', 'drop2'])
      expect(s.call({ command: 'ADD', containerId: c }).status).toBe(0);
    expect(s.call({ command: 'ADD', containerId: 'keep1', ifname: 'net9' }).status).toBe(0);
    const gc = (valid: unknown) =>
      ipam({
        config: { ...s.config, ...(valid === undefined ? {} : { 'cni.dev/valid-attachments': valid }) },
        command: 'GC',
      });
    const r = gc([
      { containerID: 'keep1', ifname: 'eth0' },
      { containerID: 'keep2', ifname: 'eth0' },
    ]);
    expect(r.status, r.stdout).toBe(0);
    expect([...leaseFiles(s.dataDir, 'net1').values()].sort()).toEqual(['keep1\r\neth0', 'keep2\r\neth0']);
    expect(
      gc([
        { containerID: 'keep1', ifname: 'eth0' },
        { containerID: 'keep2', ifname: 'eth0' },
      ]).status,
    ).toBe(0);
    expect(leaseFiles(s.dataDir, 'net1').size).toBe(2);
    expect(gc(undefined).status).toBe(0); // no list: nothing is valid
    expect(leaseFiles(s.dataDir, 'net1').size).toBe(0);
    expect(existsSync(join(s.netDir, 'lock'))).toBe(true);
    expect(readFileSync(join(s.netDir, 'last_reserved_ip.0'), 'utf8')).toBe('198.18.64.6');
  });
});

describe('a container id longer than runtimes use (host-local takes any length)', () => {
  test('a lease file of a 1,100-character id is its lease: GC keeps it while it is valid', () => {
    const s = setup();
    expect(s.call({ command: 'ADD', containerId: 'b1' }).status).toBe(0);
    const long = 'a'.repeat(1100);
    writeFileSync(join(s.netDir, '198.18.64.50'), `${long}\r\neth0`);
    const gc = ipam({
      config: {
        ...s.config,
        'cni.dev/valid-attachments': [
          { containerID: 'b1', ifname: 'eth0' },
          { containerID: long, ifname: 'eth0' },
        ],
      },
      command: 'GC',
    });
    expect(gc.status, gc.stdout + gc.stderr).toBe(0);
    expect(leaseFiles(s.dataDir, 'net1').get('198.18.64.50')).toBe(`${long}\r\neth0`);
  });
});

describe('corrupt and foreign files', () => {
  test('.berth or a directory of it planted as a symlink (a data dir others write to): refused, nothing there touched', () => {
    for (const sub of ['', 'tmp', 'att', 'sets']) {
      const s = setup();
      const decoy = join(s.dir, 'decoy');
      mkdirSync(decoy);
      writeFileSync(join(decoy, 'precious'), 'keep me');
      const planted = join(s.netDir, '.berth', sub);
      mkdirSync(sub === '' ? s.netDir : join(s.netDir, '.berth'), { recursive: true });
      symlinkSync(decoy, planted);
      const r = s.call({ command: 'ADD', containerId: 'c1' });
      expect(r.status, sub).not.toBe(0);
      expect(JSON.parse(r.stdout), sub).toMatchObject({
        code: 5,
        msg: expect.stringContaining(
          `${planted.replace(/\/$/, '')} is a symlink: berth keeps its own files there; remove it`,
        ),
      });
      expect(readdirSync(decoy), sub).toEqual(['precious']);
      expect(readFileSync(join(decoy, 'precious'), 'utf8')).toBe('keep me');
      expect(s.call({ command: 'DEL', containerId: 'c1' }).status).not.toBe(0);
      expect(readdirSync(decoy), sub).toEqual(['precious']);
    }
  });

  test('a cursor that cannot be written (a directory in its place) costs a warning, not the ADD (whose lease stayed)', () => {
    const s = setup();
    mkdirSync(join(s.netDir, 'last_reserved_ip.0', 'x'), { recursive: true });
    const r = s.call({ command: 'ADD', containerId: 'c1' });
    expect(r.status, r.stdout).toBe(0);
    expect(addressesOf(r)).toEqual(['198.18.64.2']);
    expect(r.stderr).toMatch(/cannot write the cursor of range set 0/);
    const again = s.call({ command: 'ADD', containerId: 'c2' });
    expect(addressesOf(again)).toEqual(['198.18.64.3']);
    expect([...leaseFiles(s.dataDir, 'net1').keys()].sort()).toEqual(['198.18.64.2', '198.18.64.3']);
  });

  test('are skipped with a warning, never a crash; an IP-named file keeps its address taken', () => {
    const s = setup();
    mkdirSync(join(s.netDir, 'subdir'), { recursive: true });
    writeFileSync(join(s.netDir, '198.18.64.2'), '\0\0\xff binary junk');
    writeFileSync(join(s.netDir, '198.18.64.3'), '');
    writeFileSync(join(s.netDir, 'README'), 'hello');
    writeFileSync(join(s.netDir, 'FD00::5'), 'c\r\neth0');
    writeFileSync(join(s.netDir, '198.18.64.004'), 'c\r\neth0');
    writeFileSync(join(s.netDir, 'last_reserved_ip.0'), 'garbage');
    const r = s.call({ command: 'ADD', containerId: 'c1' });
    expect(r.status, r.stdout).toBe(0);
    expect(addressesOf(r)).toEqual(['198.18.64.4']);
    expect(r.stderr).toMatch(/corrupt lease file .*198\.18\.64\.2/);
    expect(r.stderr).toMatch(/corrupt lease file .*198\.18\.64\.3/);
    expect(r.stderr).toMatch(/foreign file .*README \(not named after an IP address\)/);
    expect(r.stderr).toContain(
      `foreign file ${join(s.netDir, 'FD00::5')} (named after fd00::5, but not as host-local writes it: neither berth nor host-local counts the address taken)`,
    );
    expect(r.stderr).toMatch(/corrupt cursor/);
    // A corrupt index is rebuilt from the lease files.
    for (const f of readdirSync(join(s.netDir, '.berth', 'att')))
      writeFileSync(join(s.netDir, '.berth', 'att', f), '{broken');
    writeFileSync(join(s.netDir, '.berth', 'state.json'), 'nope');
    expect(s.call({ command: 'DEL', containerId: 'c1' }).status).toBe(0);
    expect(existsSync(join(s.netDir, '198.18.64.4'))).toBe(false);
    expect(addressesOf(s.call({ command: 'ADD', containerId: 'c2' }))).toEqual(['198.18.64.5']);
  });
});

describe('names that would escape dataDir', () => {
  test.each<[string, Partial<Invocation>, Record<string, unknown>, number]>([
    ['network name', {}, { name: '..' }, 7],
    ['network name with a slash', {}, { name: 'a/../../x' }, 7],
    ['container id', { containerId: '../../x' }, {}, 4],
    ['ifname', { ifname: '../x' }, {}, 4],
  ])('%s is refused', (_n, inv, top, code) => {
    const s = setup();
    const r = ipam({ config: { ...s.config, ...top }, command: 'ADD', ...inv });
    expect(r.status).toBe(1);
    expect(r.json?.code).toBe(code);
    expect(readdirSync(s.dir).sort()).toEqual(['boot_id']);
  });

  test('the container id limit the README states: 239 bytes work (record name fits NAME_MAX), 240 are code 4', () => {
    const s = setup();
    const longest = 'c'.repeat(239);
    const ok = s.call({ command: 'ADD', containerId: longest, ifname: 'eth0123456789ab' });
    expect(ok.status, ok.stdout).toBe(0);
    expect(readFileSync(join(s.netDir, addressesOf(ok)[0]!), 'utf8')).toBe(`${longest}\r\neth0123456789ab`);
    const tooLong = s.call({ command: 'ADD', containerId: 'c'.repeat(240) });
    expect(tooLong.status).toBe(1);
    expect(tooLong.json).toMatchObject({ code: 4 });
    expect(tooLong.json?.msg).toMatch(/must be at most 239 bytes/);
    expect(s.call({ command: 'DEL', containerId: longest, ifname: 'eth0123456789ab' }).status).toBe(0);
    expect(leaseFiles(s.dataDir, 'net1').size).toBe(0);
  });

  test('an unreadable data dir is an error object, not a crash', () => {
    const s = setup();
    mkdirSync(s.dataDir);
    writeFileSync(s.netDir, 'a file where the network directory should be');
    chmodSync(s.netDir, 0o400);
    const r = s.call({ command: 'ADD' });
    expect(r.status).toBe(1);
    expect(r.json?.code).toBe(5);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
  });
});
