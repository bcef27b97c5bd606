// 100 berth-ipam processes at once on one network: the flock serialises them, every attachment gets its own
// addresses, the store stays consistent, and 100 concurrent DELs leave it empty. Single and dual stack.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, test } from 'vitest';
import { BERTH_IPAM, addressesOf, assertBuilt, ipam, leaseFiles, netConf, runAsync, tempDataDir } from './harness';

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

    const adds = await Promise.all(ids.map((containerId) => runAsync(BERTH_IPAM, { command: 'ADD', config, containerId })));
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
    const v4 = all.filter((a) => !a.includes(':')).map((a) => Number(a.split('.')[3])).sort((a, b) => a - b);
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

    const dels = await Promise.all(ids.map((containerId) => runAsync(BERTH_IPAM, { command: 'DEL', config, containerId })));
    for (const r of dels) expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(leaseFiles(dataDir, 'conc').size).toBe(0);
    expect(readdirSync(att)).toEqual([]);
    expect(readdirSync(join(dataDir, 'conc', '.berth', 'tmp'))).toEqual([]);
  });
});
