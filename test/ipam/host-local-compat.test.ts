// Drop-in: Debian's host-local and berth-ipam on the same dataDir, taking turns. Neither duplicates an
// address, berth continues host-local's round-robin cursor exactly, each releases the other's leases, and
// both see the same set of leases.
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  HOST_LOCAL,
  type Invocation,
  addressesOf,
  assertBuilt,
  hostLocal,
  ipam,
  leaseFiles,
  netConf,
  tempDataDir,
} from './harness';

const t = tempDataDir('compat');
const dataDir = join(t.dir, 'data');
const netDir = join(dataDir, 'compat');
const ipamKeys = { dataDir, ranges: [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]] };
// host-local 1.1.1 speaks up to 1.0.0; 0.4.0 has CHECK.
const hlConf = netConf({ name: 'compat', type: 'host-local', ipam: ipamKeys, cniVersion: '0.4.0' });
const berthConf = netConf({ name: 'compat', type: 'berth-ipam', ipam: ipamKeys, cniVersion: '0.4.0' });

const hl = (inv: Omit<Invocation, 'config'>) => hostLocal({ config: hlConf, ...inv });
const berth = (inv: Omit<Invocation, 'config'>) => ipam({ config: berthConf, ...inv });
const ok = <T extends { status: number | null; stdout: string; stderr: string }>(r: T): T => {
  expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
  return r;
};

beforeAll(() => {
  assertBuilt();
  if (!existsSync(HOST_LOCAL))
    throw new Error(`${HOST_LOCAL} is missing: apt-get install containernetworking-plugins`);
});
afterAll(() => t.cleanup());

describe('berth-ipam replaces host-local in place', () => {
  const results = new Map<string, { json: unknown }>();

  test('host-local allocates; berth continues at exactly the next address of the cursor', () => {
    for (const c of ['h1', 'h2', 'h3']) results.set(c, ok(hl({ command: 'ADD', containerId: c })));
    ok(hl({ command: 'DEL', containerId: 'h2' }));
    expect(readFileSync(join(netDir, 'last_reserved_ip.0'), 'utf8')).toBe('198.18.64.4');
    const b1 = ok(berth({ command: 'ADD', containerId: 'b1' }));
    // host-local would take .5 (after its cursor .4), not the lowest free .3.
    expect(addressesOf(b1)).toEqual(['198.18.64.5', 'fd00:5::5']);
    results.set('b1', b1);
    results.set('b2', ok(berth({ command: 'ADD', containerId: 'b2' })));
    expect(addressesOf(results.get('b2') as never)).toEqual(['198.18.64.6', 'fd00:5::6']);
  });

  test('berth DELs a host-local lease; host-local DELs a berth lease and leaves .berth/ alone', () => {
    ok(berth({ command: 'DEL', containerId: 'h1' }));
    expect(existsSync(join(netDir, '198.18.64.2'))).toBe(false);
    expect(existsSync(join(netDir, 'fd00:5::2'))).toBe(false);
    const berthFiles = (): string[] =>
      readdirSync(join(netDir, '.berth'), { recursive: true }).map(String).sort();
    const before = berthFiles();
    ok(hl({ command: 'DEL', containerId: 'b1' }));
    expect(existsSync(join(netDir, '198.18.64.5'))).toBe(false);
    expect(existsSync(join(netDir, 'fd00:5::5'))).toBe(false);
    // host-local walks subdirectories and matches contents: none of berth's files may look like a lease.
    expect(berthFiles()).toEqual(before);
  });

  test("host-local continues after berth's cursor, and berth after host-local's (index rebuilt)", () => {
    const h4 = ok(hl({ command: 'ADD', containerId: 'h4' }));
    expect(addressesOf(h4)).toEqual(['198.18.64.7', 'fd00:5::7']);
    results.set('h4', h4);
    const b3 = ok(berth({ command: 'ADD', containerId: 'b3' }));
    expect(addressesOf(b3)).toEqual(['198.18.64.8', 'fd00:5::8']);
    results.set('b3', b3);
  });

  test('both see the same set of leases, without duplicates', () => {
    const live = ['h3', 'b2', 'h4', 'b3'];
    const files = leaseFiles(dataDir, 'compat');
    expect([...files.values()].sort()).toEqual(live.flatMap((c) => [`${c}\r\neth0`, `${c}\r\neth0`]).sort());
    expect([...files.keys()].sort()).toEqual(
      [
        '198.18.64.4',
        '198.18.64.6',
        '198.18.64.7',
        '198.18.64.8',
        'fd00:5::4',
        'fd00:5::6',
        'fd00:5::7',
        'fd00:5::8',
      ].sort(),
    );
    for (const c of live) {
      const prevResult = results.get(c)!.json;
      // host-local's CHECK finds every lease, berth's or its own.
      ok(hostLocal({ config: { ...hlConf, prevResult }, command: 'CHECK', containerId: c }));
      // berth's CHECK compares addresses: host-local's leases match their ADD results too.
      ok(ipam({ config: { ...berthConf, prevResult }, command: 'CHECK', containerId: c }));
    }
    // host-local refuses a second ADD for berth's attachment (it sees the lease) ...
    const dup = hl({ command: 'ADD', containerId: 'b2' });
    expect(dup.json?.msg).toMatch(
      /198\.18\.64\.6 has been allocated to b2, duplicate allocation is not allowed/,
    );
    // ... and berth answers an ADD for host-local's attachment with host-local's addresses (idempotent).
    expect(addressesOf(ok(berth({ command: 'ADD', containerId: 'h4' })))).toEqual([
      '198.18.64.7',
      'fd00:5::7',
    ]);
    expect(leaseFiles(dataDir, 'compat').size).toBe(8);
  });

  test('all released by either side leaves no lease behind', () => {
    ok(hl({ command: 'DEL', containerId: 'b2' }));
    ok(berth({ command: 'DEL', containerId: 'h3' }));
    ok(berth({ command: 'DEL', containerId: 'h4' }));
    ok(hl({ command: 'DEL', containerId: 'b3' }));
    expect(leaseFiles(dataDir, 'compat').size).toBe(0);
    // berth's view agrees: GC with nothing valid has nothing to release, STATUS is fine.
    ok(ipam({ config: { ...berthConf, cniVersion: '1.1.0' }, command: 'GC' }));
    ok(ipam({ config: { ...berthConf, cniVersion: '1.1.0' }, command: 'STATUS' }));
  });
});

describe('IPv6 file names', () => {
  const conf6 = (type: 'host-local' | 'berth-ipam') =>
    netConf({
      name: 'compat6',
      type,
      ipam: { dataDir, ranges: [[{ subnet: 'fd00:5::/64' }]] },
      cniVersion: '0.4.0',
    });

  test('berth names and reads IPv6 lease files exactly as host-local writes them', () => {
    // Requested in a non-canonical spelling: the file name is Go's canonical text (RFC 5952), on both sides.
    const hlIps = ['fd00:5:0:0:1:0:0:1', 'fd00:5::1:0:0:0'];
    const berthIps = ['fd00:5::abcd:0:0:0', 'FD00:5:0:0:FFFF:FFFF:FFFF:FFFE'];
    hlIps.forEach((ip, i) =>
      ok(
        hostLocal({
          config: conf6('host-local'),
          command: 'ADD',
          containerId: `h6-${i}`,
          cniArgs: `IP=${ip}`,
        }),
      ),
    );
    berthIps.forEach((ip, i) =>
      ok(ipam({ config: conf6('berth-ipam'), command: 'ADD', containerId: `b6-${i}`, cniArgs: `IP=${ip}` })),
    );
    expect([...leaseFiles(dataDir, 'compat6').keys()].sort()).toEqual(
      ['fd00:5::1:0:0:1', 'fd00:5:0:0:1::', 'fd00:5:0:0:abcd::', 'fd00:5::ffff:ffff:ffff:fffe'].sort(),
    );
    // Each side releases the other's: the names match byte for byte, and berth found no foreign file.
    hlIps.forEach((_ip, i) => {
      const r = ok(ipam({ config: conf6('berth-ipam'), command: 'DEL', containerId: `h6-${i}` }));
      expect(r.stderr).not.toMatch(/foreign file/);
    });
    berthIps.forEach((_ip, i) =>
      ok(hostLocal({ config: conf6('host-local'), command: 'DEL', containerId: `b6-${i}` })),
    );
    expect(leaseFiles(dataDir, 'compat6').size).toBe(0);
  });
});

describe('a lease file host-local left empty (killed between its create and its write)', () => {
  test("berth-ipam's GC frees its address (host-local keeps it taken for good); a valid lease stays", () => {
    const keys = { dataDir, ranges: [[{ subnet: '198.18.65.0/29' }]] };
    const c = (type: 'host-local' | 'berth-ipam', version: string) =>
      netConf({ name: 'dead', type, ipam: keys, cniVersion: version });
    ok(hostLocal({ config: c('host-local', '0.4.0'), command: 'ADD', containerId: 'h1' }));
    writeFileSync(join(dataDir, 'dead', '198.18.65.3'), '');
    const gc = ok(
      ipam({
        config: {
          ...c('berth-ipam', '1.1.0'),
          'cni.dev/valid-attachments': [{ containerID: 'h1', ifname: 'eth0' }],
        },
        command: 'GC',
      }),
    );
    expect(gc.stderr).toMatch(
      /GC released 1 address\(es\) whose lease file held no attachment: 198\.18\.65\.3/,
    );
    expect([...leaseFiles(dataDir, 'dead').keys()]).toEqual(['198.18.65.2']);
    // host-local hands the address out again
    expect(
      addressesOf(
        ok(
          hostLocal({
            config: c('host-local', '0.4.0'),
            command: 'ADD',
            containerId: 'h2',
            cniArgs: 'IP=198.18.65.3',
          }),
        ),
      ),
    ).toEqual(['198.18.65.3']);
  });
});
