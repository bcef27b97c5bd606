// The file store on temp dirs, in-process: host-local's layout, berth files host-local cannot mistake for
// leases, crash leftovers, and the index noticing (and rebuilding after) changes it did not make.
import { mkdirSync, readFileSync, readdirSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { type Ip, formatIp, parseIp } from '../../src/address/ip';
import { allocateFromSet } from '../../src/ipam/allocator';
import { openLeaseFileStore } from '../../src/ipam/lease-file-store';
import { canonicalizeRangeSet } from '../../src/ipam/range-set';
import type { LeaseStore } from '../../src/ipam/store';
import { tempDataDir } from './harness';

let cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

const v4 = canonicalizeRangeSet([{ subnet: '198.18.64.0/24' }], 't');
const ip = (t: string): Ip => parseIp(t)!;

function open(bootId = 'boot-1') {
  const t = tempDataDir('store');
  cleanups.push(t.cleanup);
  const warnings: string[] = [];
  const store = openLeaseFileStore({ dataDir: t.dir, network: 'n1', bootId, warn: (m) => warnings.push(m) });
  return { store, dir: join(t.dir, 'n1'), warnings, dataDir: t.dir };
}

function alloc(
  store: LeaseStore,
  containerId: string,
  policy: 'lowest' | 'round-robin' = 'round-robin',
): Promise<string> {
  return store.transact(async (s) =>
    formatIp(
      await allocateFromSet({
        session: s,
        set: v4,
        setId: 0,
        containerId,
        ifname: 'eth0',
        meta: { bootId: 'boot-1' },
        policy,
        exclude: [],
      }),
    ),
  );
}

function walk(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

describe('layout', () => {
  test('lease files, cursor and lock as host-local has them; every berth file starts with "{"', async () => {
    const { store, dir } = open();
    expect(await alloc(store, 'c1')).toBe('198.18.64.2');
    expect(readFileSync(join(dir, '198.18.64.2'), 'utf8')).toBe('c1\r\neth0');
    expect(readFileSync(join(dir, 'last_reserved_ip.0'), 'utf8')).toBe('198.18.64.2');
    const berthFiles = walk(join(dir, '.berth'));
    expect(berthFiles.length).toBeGreaterThanOrEqual(3);
    for (const f of berthFiles) expect(readFileSync(f).subarray(0, 1).toString(), f).toBe('{');
    expect(readdirSync(join(dir, '.berth', 'tmp'))).toEqual([]);
  });

  test('temp files left by a crash are removed under the lock before anything else', async () => {
    const { store, dir } = open();
    await alloc(store, 'c1');
    writeFileSync(join(dir, '.berth', 'tmp', 'lease-999-1'), 'ghost\r\neth0');
    await store.transact(async () => undefined, { readOnly: true });
    expect(readdirSync(join(dir, '.berth', 'tmp'))).toEqual([]);
  });

  test('the directory sentinel lies in the past, so no later change can reproduce it', async () => {
    const { store, dir } = open();
    await alloc(store, 'c1');
    const st = statSync(dir, { bigint: true });
    const state = JSON.parse(readFileSync(join(dir, '.berth', 'state.json'), 'utf8')) as {
      dirMtimeNs: string;
    };
    expect(state.dirMtimeNs).toBe(st.mtimeNs.toString());
    expect(Number(st.mtimeNs / 1_000_000n)).toBeLessThan(Date.now() - 5000);
  });
});

describe('the index follows changes made behind its back', () => {
  test('a lease host-local wrote right after berth committed is seen by DEL', async () => {
    const { store, dir, warnings } = open();
    await alloc(store, 'c1');
    writeFileSync(join(dir, '198.18.64.77'), 'hl\r\neth0');
    const leases = await store.transact((s) => s.leasesOf({ containerId: 'hl', ifname: 'eth0' }));
    expect(leases.map((l) => formatIp(l.ip))).toEqual(['198.18.64.77']);
    expect(leases[0]!.meta).toMatchObject({ origin: 'found', bootId: 'boot-1' });
    expect(warnings.join('\n')).toMatch(/directory changed outside berth/);
  });

  test('an index record that lies is caught by the cheap verification and rebuilt', async () => {
    const { store, dir } = open();
    await alloc(store, 'c1');
    const rec = join(dir, '.berth', 'att', 'c1:eth0');
    writeFileSync(rec, JSON.stringify({ ...JSON.parse(readFileSync(rec, 'utf8')), ips: ['198.18.64.9'] }));
    const leases = await store.transact((s) => s.leasesOf({ containerId: 'c1', ifname: 'eth0' }));
    expect(leases.map((l) => formatIp(l.ip))).toEqual(['198.18.64.2']);
  });

  test('a stale occupancy map costs a retry, never a duplicate', async () => {
    const { store, dir, warnings } = open();
    expect(await alloc(store, 'c1', 'lowest')).toBe('198.18.64.2');
    expect(await alloc(store, 'c0', 'lowest')).toBe('198.18.64.3');
    expect(await alloc(store, 'cx', 'lowest')).toBe('198.18.64.4');
    await store.transact(async (s) => {
      for (const l of await s.leasesOf({ containerId: 'c0', ifname: 'eth0' })) await s.release(l);
    });
    const sets = join(dir, '.berth', 'sets');
    const [file] = readdirSync(sets);
    const buf = readFileSync(join(sets, file!));
    const nl = buf.indexOf(0x0a);
    buf.fill(0, nl + 1);
    writeFileSync(join(sets, file!), buf);
    expect(await alloc(store, 'c2', 'lowest')).toBe('198.18.64.3');
    expect(warnings.join('\n')).toMatch(/198\.18\.64\.2 exists although the index had it free/);
    expect(readFileSync(join(dir, '198.18.64.2'), 'utf8')).toBe('c1\r\neth0');
    // The map was refilled from the files and persisted: no further retries.
    warnings.length = 0;
    expect(await alloc(store, 'c3', 'lowest')).toBe('198.18.64.5');
    expect(warnings).toEqual([]);
  });

  test('legacy id-only files are matched when no exact lease exists', async () => {
    const { store, dir } = open();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, '198.18.64.40'), 'old-ctr');
    const leases = await store.transact(async (s) => {
      const l = await s.leasesOf({ containerId: 'old-ctr', ifname: 'eth0' });
      for (const x of l) await s.release(x);
      return l;
    });
    expect(leases.map((l) => [formatIp(l.ip), l.ifname])).toEqual([['198.18.64.40', '']]);
    expect(readdirSync(dir).filter((f) => f.startsWith('198.'))).toEqual([]);
  });

  test('leases of an earlier boot are listed once per boot', async () => {
    const t = open('boot-1');
    await alloc(t.store, 'c1');
    const later = openLeaseFileStore({ dataDir: t.dataDir, network: 'n1', bootId: 'boot-2' });
    const first = await later.transact((s) => s.leasesFromEarlierBoots());
    expect(first.map((l) => formatIp(l.ip))).toEqual(['198.18.64.2']);
    expect(await later.transact((s) => s.leasesFromEarlierBoots())).toEqual([]);
    // The lease itself is only released by whoever asked (the ADD handler), not by listing it.
    expect(readdirSync(t.dir)).toContain('198.18.64.2');
  });

  test('a dir whose mtime cannot be compared still works (rebuild each time)', async () => {
    const { store, dir } = open();
    await alloc(store, 'c1');
    utimesSync(dir, new Date(), new Date());
    expect(await alloc(store, 'c2')).toBe('198.18.64.3');
    expect(ip('198.18.64.3').family).toBe(4);
  });
});

describe('the lock (berthd serves many requests on one event loop)', () => {
  test("waiting for another process's flock never blocks the event loop", async () => {
    const { store, dir } = open();
    await alloc(store, 'ctr-first');
    // Another process (host-local, a standalone berth-ipam) holds the network's lock for a while.
    const { spawn } = await import('node:child_process');
    const holder = spawn('flock', [join(dir, 'lock'), 'sh', '-c', 'echo held; sleep 0.6'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    cleanups.push(() => holder.kill('SIGKILL'));
    await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    try {
      const t0 = Date.now();
      const got = await alloc(store, 'ctr-second');
      expect(got).toBe('198.18.64.3');
      // The transaction waited for the other holder, and the loop kept turning meanwhile.
      expect(Date.now() - t0).toBeGreaterThan(300);
      expect(ticks).toBeGreaterThan(10);
    } finally {
      clearInterval(timer);
    }
  });
});
