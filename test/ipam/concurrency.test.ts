// 100 berth-ipam processes at once on one network: the flock serialises them, every attachment gets its own
// addresses, the store stays consistent, and 100 concurrent DELs leave it empty. Single and dual stack.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, test } from 'vitest';
import {
  BERTH_IPAM,
  HOST_LOCAL,
  addressesOf,
  assertBuilt,
  ipam,
  leaseFiles,
  netConf,
  runAsync,
  tempDataDir,
} from './harness';

beforeAll(assertBuilt);
let cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

const N = 100;

describe.each([
  ['IPv4 /24', [[{ subnet: '198.18.64.0/24' }]]],
  ['dual stack', [[{ subnet: '198.18.64.0/24' }], [{ subnet: 'fd00:5::/64' }]]],
])('%s', (_name, ranges) => {
  test(`${N} ADDs at once, then ${N} DELs at once`, { timeout: 180_000 }, async () => {
    const t = tempDataDir('conc');
    cleanups.push(t.cleanup);
    const dataDir = join(t.dir, 'data');
    const config = netConf({ name: 'conc', type: 'berth-ipam', ipam: { dataDir, ranges } });
    const ids = Array.from({ length: N }, (_, i) => `ctr-${i}`);

    const adds = await Promise.all(
      ids.map((containerId) => runAsync(BERTH_IPAM, { command: 'ADD', config, containerId })),
    );
    for (const r of adds) expect(r.status, r.stdout + r.stderr).toBe(0);
    const perFamily = ranges.length;
    const all = adds.flatMap(addressesOf);
    expect(all).toHaveLength(N * perFamily);
    expect(new Set(all).size).toBe(N * perFamily);

    // The files say exactly what the results said, attachment by attachment.
    const files = leaseFiles(dataDir, 'conc');
    expect(files.size).toBe(N * perFamily);
    adds.forEach((r, i) => {
      for (const a of addressesOf(r)) expect(files.get(a)).toBe(`${ids[i]}\r\neth0`);
    });
    // round-robin from an empty pool hands out .2 … .101, in some order.
    const v4 = all
      .filter((a) => !a.includes(':'))
      .map((a) => Number(a.split('.')[3]))
      .sort((a, b) => a - b);
    expect(v4).toEqual(Array.from({ length: N }, (_, i) => i + 2));
    // The index agrees with the files: one record per attachment, holding that attachment's addresses.
    const att = join(dataDir, 'conc', '.berth', 'att');
    expect(readdirSync(att).sort()).toEqual(ids.map((id) => `${id}:eth0`).sort());
    adds.forEach((r, i) => {
      const rec = JSON.parse(readFileSync(join(att, `${ids[i]}:eth0`), 'utf8')) as { ips: string[] };
      expect(rec.ips.sort()).toEqual(addressesOf(r).sort());
    });
    // And the next ADD continues after the highest address, as host-local's cursor would.
    expect(addressesOf(ipam({ command: 'ADD', config, containerId: 'late' }))[0]).toBe('198.18.64.102');
    expect(ipam({ command: 'DEL', config, containerId: 'late' }).status).toBe(0);

    const dels = await Promise.all(
      ids.map((containerId) => runAsync(BERTH_IPAM, { command: 'DEL', config, containerId })),
    );
    for (const r of dels) expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(leaseFiles(dataDir, 'conc').size).toBe(0);
    expect(readdirSync(att)).toEqual([]);
    expect(readdirSync(join(dataDir, 'conc', '.berth', 'tmp'))).toEqual([]);
  });
});

describe('mixed with host-local', () => {
  test(
    '50 host-local and 50 berth-ipam ADDs at once exclude each other through the same flock',
    { timeout: 180_000 },
    async () => {
      const t = tempDataDir('mixed');
      cleanups.push(t.cleanup);
      const dataDir = join(t.dir, 'data');
      const ranges = [[{ subnet: '198.18.64.0/24' }]];
      const berthConf = netConf({
        name: 'mixed',
        type: 'berth-ipam',
        ipam: { dataDir, ranges },
        cniVersion: '0.4.0',
      });
      const hlConf = netConf({
        name: 'mixed',
        type: 'host-local',
        ipam: { dataDir, ranges },
        cniVersion: '0.4.0',
      });
      const runs = Array.from({ length: N }, (_, i) =>
        i % 2 === 0
          ? runAsync(BERTH_IPAM, { command: 'ADD', config: berthConf, containerId: `b-${i}` })
          : runAsync(HOST_LOCAL, { command: 'ADD', config: hlConf, containerId: `h-${i}` }),
      );
      const adds = await Promise.all(runs);
      for (const r of adds) expect(r.status, r.stdout + r.stderr).toBe(0);
      const all = adds.flatMap(addressesOf);
      expect(new Set(all).size).toBe(N);
      const files = leaseFiles(dataDir, 'mixed');
      expect(files.size).toBe(N);
      adds.forEach((r, i) =>
        expect(files.get(addressesOf(r)[0]!)).toBe(`${i % 2 === 0 ? 'b' : 'h'}-${i}\r\neth0`),
      );
      // Each releases the other's half, concurrently.
      const dels = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          i % 2 === 0
            ? runAsync(HOST_LOCAL, { command: 'DEL', config: hlConf, containerId: `b-${i}` })
            : runAsync(BERTH_IPAM, { command: 'DEL', config: berthConf, containerId: `h-${i}` }),
        ),
      );
      for (const r of dels) expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(leaseFiles(dataDir, 'mixed').size).toBe(0);
    },
  );
});
