// The file store on temp dirs, in-process: host-local's layout, berth files host-local cannot mistake for
// leases, crash leftovers, and the index noticing (and rebuilding after) changes it did not make.
import { spawn } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { type Ip, formatIp, parseIp } from '../../src/address/ip';
import { allocateFromSet } from '../../src/ipam/allocator';
import { openLeaseFileStore } from '../../src/ipam/lease-file-store';
import { canonicalizeRangeSet } from '../../src/ipam/range-set';
import type { LeaseStore } from '../../src/ipam/store';
import { BERTH_IPAM, assertBuilt, tempDataDir } from './harness';

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
  requested?: Ip,
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
        ...(requested !== undefined ? { requested } : {}),
      }),
    ),
  );
}

function walk(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

describe('a requested address', () => {
  test('already taken: refused from the index, without a rebuild of the directory (a static IP retried)', async () => {
    const { store, warnings } = open();
    const req = (containerId: string): Promise<string> =>
      alloc(store, containerId, 'round-robin', parseIp('198.18.64.15'));
    await alloc(store, 'c0'); // the index exists
    expect(await req('c1')).toBe('198.18.64.15');
    warnings.length = 0;
    for (let i = 0; i < 3; i++)
      await expect(req(`c${i + 2}`)).rejects.toThrow(/requested IP address 198\.18\.64\.15 is not available/);
    expect(warnings).toEqual([]);
  });
});

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

// Issue 12 item 6: the first berth call on a large host-local directory costs one read of every lease file
// and a constant number of writes (the found index, the occupancy map, the state), not a record per lease.
describe('taking over a host-local directory', () => {
  const v16 = canonicalizeRangeSet([{ subnet: '198.18.0.0/16' }], 't');
  const at = (i: number): string => `198.18.${((i + 2) >> 8) & 255}.${(i + 2) & 255}`;

  /** host-local's files for `n` attachments (one lease each), one legacy id-only lease and a corrupt one. */
  function prefill(dir: string, n: number): void {
    mkdirSync(dir, { recursive: true });
    for (let i = 0; i < n; i++) writeFileSync(join(dir, at(i)), `found-${i}\r\neth0`, { mode: 0o600 });
    writeFileSync(join(dir, '198.18.250.1'), 'legacy-ctr');
    writeFileSync(join(dir, '198.18.250.2'), '\0\0junk');
    writeFileSync(join(dir, 'last_reserved_ip.0'), at(n - 1));
  }

  /** The truth: address → content of every IP-named file. */
  function truth(dir: string): Map<string, string> {
    const out = new Map<string, string>();
    for (const f of readdirSync(dir)) if (/^198\./.test(f)) out.set(f, readFileSync(join(dir, f), 'utf8'));
    return out;
  }

  const addIn = (store: LeaseStore, containerId: string): Promise<string> =>
    store.transact(async (s) =>
      formatIp(
        await allocateFromSet({
          session: s,
          set: v16,
          setId: 0,
          containerId,
          ifname: 'eth0',
          meta: { bootId: 'boot-1', origin: 'berth' },
          policy: 'round-robin',
          exclude: [],
        }),
      ),
    );
  const delIn = (store: LeaseStore, containerId: string, ifname = 'eth0'): Promise<string[]> =>
    store.transact(async (s) => {
      const ls = await s.leasesOf({ containerId, ifname });
      for (const l of ls) await s.release(l);
      return ls.map((l) => formatIp(l.ip));
    });

  /** Every lease the index lists equals the files, lease for lease (the corrupt file is no lease). */
  async function expectIndexMatchesFiles(store: LeaseStore, dir: string): Promise<void> {
    const all = await store.transact((s) => s.all(), { readOnly: true });
    const listed = new Map(
      all.map((l) => [formatIp(l.ip), l.ifname === '' ? l.containerId : `${l.containerId}\r\n${l.ifname}`]),
    );
    const files = truth(dir);
    files.delete('198.18.250.2');
    expect(listed.size).toBe(files.size);
    expect(new Map([...listed].sort())).toEqual(new Map([...files].sort()));
  }

  test('the first ADD writes no record per found lease; the found leases are still matched by DEL, listed and kept', async () => {
    const { store, dir, dataDir, warnings } = open();
    const n = 3000;
    prefill(dir, n);
    expect(await addIn(store, 'new-1')).toBe(at(n));
    expect(warnings.join('\n')).toMatch(/rebuilt the lease index .*no index yet/);
    // One record: the new attachment's. Before: one per lease found (3,002 files under .berth/att).
    expect(readdirSync(join(dir, '.berth', 'att'))).toEqual(['new-1:eth0']);
    expect(walk(join(dir, '.berth')).length).toBeLessThanOrEqual(6);
    for (const f of walk(join(dir, '.berth'))) expect(readFileSync(f).subarray(0, 1).toString(), f).toBe('{');

    // Another process (a new store) trusts the index: no rebuild, and finds what host-local wrote.
    warnings.length = 0;
    const next = openLeaseFileStore({
      dataDir,
      network: 'n1',
      bootId: 'boot-1',
      warn: (m) => warnings.push(m),
    });
    const found = await next.transact((s) => s.leasesOf({ containerId: 'found-17', ifname: 'eth0' }), {
      readOnly: true,
    });
    expect(found.map((l) => formatIp(l.ip))).toEqual([at(17)]);
    expect(found[0]!.meta).toMatchObject({ origin: 'found', bootId: 'boot-1' });
    expect(typeof found[0]!.meta.createdAt).toBe('string');
    expect(
      await next.transact((s) => s.leasesOf({ containerId: 'legacy-ctr', ifname: 'eth1' })),
    ).toHaveLength(1);
    expect(await delIn(next, 'found-17')).toEqual([at(17)]);
    expect(existsSync(join(dir, at(17)))).toBe(false);
    // Released once: gone from the index for good, also for a DEL repeated by the runtime.
    expect(await delIn(next, 'found-17')).toEqual([]);
    expect(await delIn(openLeaseFileStore({ dataDir, network: 'n1', bootId: 'boot-1' }), 'found-17')).toEqual(
      [],
    );
    // Its address goes to the next attachment, which then owns it alone.
    expect(
      await next.transact(async (s) =>
        s.reserve({ ip: ip(at(17)), containerId: 'new-2', ifname: 'eth0', meta: {} }, 0),
      ),
    ).toBe(true);
    expect(await delIn(next, 'found-17')).toEqual([]);
    expect(await delIn(next, 'found-18')).toEqual([at(18)]);
    // The cursor stands at at(17) (the reserve above): the same attachment takes its old address again.
    expect(await addIn(next, 'found-18')).toBe(at(18));
    expect(await delIn(next, 'found-18')).toEqual([at(18)]);
    expect(warnings).toEqual([]);
    await expectIndexMatchesFiles(next, dir);

    // host-local changes the directory behind berth's back: the next call rebuilds and still agrees.
    writeFileSync(join(dir, '198.18.251.9'), 'hl-late\r\neth0');
    rmSync(join(dir, at(19)));
    await expectIndexMatchesFiles(next, dir);
    expect(await delIn(next, 'hl-late')).toEqual(['198.18.251.9']);
    expect(await delIn(next, 'found-19')).toEqual([]);
    expect(await delIn(next, 'found-20')).toEqual([at(20)]);
    expect(readdirSync(join(dir, '.berth', 'att')).length).toBeLessThanOrEqual(3);
    await expectIndexMatchesFiles(next, dir);
    // 3,000 files written and read a few times: seconds on a loaded shared machine.
  }, 60_000);

  test("a rebuild in the middle of a session keeps the session's own records (pod identity of a lease it took)", async () => {
    const { store, dir, dataDir } = open();
    prefill(dir, 50);
    await addIn(store, 'first');
    const meta = { bootId: 'boot-1', origin: 'berth' as const, pod: { namespace: 'ns', name: 'web-0' } };
    const taken = await store.transact(async (s) => {
      expect(await s.reserve({ ip: ip('198.18.99.1'), containerId: 'pod', ifname: 'eth0', meta }, 0)).toBe(
        true,
      );
      // host-local writes the next address behind the session's back: the link fails, the index is rebuilt.
      writeFileSync(join(dir, '198.18.99.2'), 'hl\r\neth0');
      expect(await s.reserve({ ip: ip('198.18.99.2'), containerId: 'pod', ifname: 'eth0', meta }, 1)).toBe(
        false,
      );
      return s.leasesOf({ containerId: 'pod', ifname: 'eth0' });
    });
    expect(taken.map((l) => [formatIp(l.ip), l.meta.pod?.name])).toEqual([['198.18.99.1', 'web-0']]);
    const again = openLeaseFileStore({ dataDir, network: 'n1', bootId: 'boot-1' });
    const leases = await again.transact((s) => s.leasesOf({ containerId: 'pod', ifname: 'eth0' }));
    expect(leases.map((l) => [formatIp(l.ip), l.meta.pod?.name])).toEqual([['198.18.99.1', 'web-0']]);
    expect(
      (await again.transact((s) => s.leasesOf({ containerId: 'hl', ifname: 'eth0' })))[0]!.meta.origin,
    ).toBe('found');
    await expectIndexMatchesFiles(again, dir);
  }, 60_000);

  test('kill -9 at any moment of the take-over leaves a directory the next call takes over correctly', async () => {
    assertBuilt();
    const t = tempDataDir('takeover');
    cleanups.push(t.cleanup);
    const template = join(t.dir, 'template', 'n1');
    const n = 3000;
    prefill(template, n);
    const config = JSON.stringify({
      cniVersion: '1.0.0',
      name: 'n1',
      type: 'berth-ipam',
      ipam: { type: 'berth-ipam', daemonSocket: false, ranges: [[{ subnet: '198.18.0.0/16' }]] },
    });
    const runAdd = (dataDir: string, killAfterMs: number | undefined): Promise<number | null> =>
      new Promise((resolve, reject) => {
        const child = spawn(BERTH_IPAM, [], {
          env: {
            PATH: process.env.PATH ?? '/usr/bin:/bin',
            CNI_COMMAND: 'ADD',
            CNI_CONTAINERID: 'killed',
            CNI_NETNS: '/run/netns/x',
            CNI_IFNAME: 'eth0',
            CNI_PATH: '/usr/lib/cni',
          },
          stdio: ['pipe', 'ignore', 'ignore'],
        });
        child.stdin.end(
          JSON.stringify({ ...JSON.parse(config), ipam: { ...JSON.parse(config).ipam, dataDir } }),
        );
        const timer =
          killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
        child.on('error', reject);
        child.on('exit', (code) => {
          if (timer !== undefined) clearTimeout(timer);
          resolve(code);
        });
      });
    // How long a whole take-over takes here, then kills spread over it (and one at its very start).
    const full = join(t.dir, 'full');
    cpSync(join(t.dir, 'template'), full, { recursive: true });
    const t0 = Date.now();
    expect(await runAdd(full, undefined)).toBe(0);
    const span = Date.now() - t0;
    for (const frac of [0.05, 0.4, 0.7, 0.9]) {
      const dataDir = join(t.dir, `kill-${frac}`);
      cpSync(join(t.dir, 'template'), dataDir, { recursive: true });
      const dir = join(dataDir, 'n1');
      await runAdd(dataDir, Math.round(span * frac));
      const before = truth(dir);
      const store = openLeaseFileStore({ dataDir, network: 'n1', bootId: 'boot-1' });
      await expectIndexMatchesFiles(store, dir);
      // The killed ADD holds its address or nothing; found attachments are matched; no address is given twice.
      const killed = before.get(at(n)) === 'killed\r\neth0' ? [at(n)] : [];
      expect(
        (await store.transact((s) => s.leasesOf({ containerId: 'killed', ifname: 'eth0' }))).map((l) =>
          formatIp(l.ip),
        ),
      ).toEqual(killed);
      expect(await delIn(store, 'found-5')).toEqual([at(5)]);
      const got = await addIn(store, 'after');
      expect(before.has(got)).toBe(false);
      await expectIndexMatchesFiles(openLeaseFileStore({ dataDir, network: 'n1', bootId: 'boot-1' }), dir);
      rmSync(dataDir, { recursive: true, force: true });
    }
    t.cleanup();
  }, 240_000);
});
