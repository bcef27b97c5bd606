// The on-disk format both lease stores (berth-ipam on the files, berthd) write through lease-dir.ts: the
// exact bytes host-local and the other store read back.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { formatIp, parseIp } from '../../src/address/ip';
import * as disk from '../../src/ipam/lease-dir';
import { loadNativeAddon } from '../../src/native-addon';
import { tempDataDir } from './harness';

let cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

describe('lease files', () => {
  test("host-local's content, legacy id-only files, and what is not a lease", () => {
    expect(disk.leaseContent({ containerId: 'ctr-1', ifname: 'eth0' })).toBe('ctr-1\r\neth0');
    expect(disk.leaseContent({ containerId: 'ctr-1', ifname: '' })).toBe('ctr-1');
    expect(disk.parseLeaseContent('ctr-1\r\neth0')).toEqual({ containerId: 'ctr-1', ifname: 'eth0' });
    expect(disk.parseLeaseContent('ctr-1\n')).toEqual({ containerId: 'ctr-1', ifname: '' });
    expect(disk.parseLeaseContent('')).toBeUndefined();
    expect(disk.parseLeaseContent('{"v":1}')).toBeUndefined();
    expect(disk.parseLeaseContent('ctr\r\neth/0')).toBeUndefined();
  });

  test('only canonical address names are leases; lock, cursors and .berth are bookkeeping', () => {
    expect(disk.leaseNameIp('198.18.0.7')?.value).toBe((198n << 24n) | (18n << 16n) | 7n);
    expect(disk.leaseNameIp('198.18.0.07')).toBeUndefined();
    expect(disk.leaseNameIp('fd00::1')).toBeDefined();
    expect(disk.leaseNameIp('fd00:0::1')).toBeUndefined();
    expect(disk.leaseNameIp('lock')).toBeUndefined();
    expect(['lock', '.berth', 'last_reserved_ip.0'].map(disk.isBookkeepingName)).toEqual([true, true, true]);
    expect(disk.isBookkeepingName('198.18.0.7')).toBe(false);
  });
});

describe('.berth index files', () => {
  test('a record is JSON starting with "{" in a fixed key order, and reads back', () => {
    const meta = { bootId: 'b', createdAt: '2026-01-01T00:00:00.000Z', origin: 'berth' as const };
    const text = disk.encodeRecord({ containerId: 'c', ifname: 'eth0', ips: new Set(['198.18.0.2']), meta });
    expect(text).toBe(
      '{"v":1,"containerId":"c","ifname":"eth0","ips":["198.18.0.2"],"meta":{"bootId":"b","createdAt":"2026-01-01T00:00:00.000Z","origin":"berth"}}',
    );
    expect(disk.isRecord(JSON.parse(text))).toBe(true);
    expect(disk.isRecord({ v: 1, ips: [], meta: {} })).toBe(false);
  });

  test('state.json round trip; missing or corrupt is undefined', () => {
    const t = tempDataDir('fmt');
    cleanups.push(t.cleanup);
    const p = disk.leaseDirPaths(t.dir, 'n1');
    mkdirSync(p.berth, { recursive: true });
    expect(disk.readState(p)).toBeUndefined();
    writeFileSync(p.state, disk.encodeState({ gen: 3, dirMtimeNs: '123', bootId: 'b' }));
    expect(disk.readState(p)).toEqual({ v: 2, gen: 3, dirMtimeNs: '123', bootId: 'b' });
    writeFileSync(p.state, disk.encodeState({ gen: 4, dirMtimeNs: '123', found: 'f1' }));
    expect(disk.readState(p)).toEqual({ v: 2, gen: 4, dirMtimeNs: '123', found: 'f1' });
    // Written by a berth of before the found index: still read.
    writeFileSync(p.state, '{"v":1,"gen":3,"dirMtimeNs":"123"}');
    expect(disk.readState(p)).toEqual({ v: 1, gen: 3, dirMtimeNs: '123' });
    writeFileSync(p.state, '{"v":1,"gen":3}');
    expect(disk.readState(p)).toBeUndefined();
  });

  test('the sentinel is the mtime the kernel stored, and any later change of the directory breaks it', () => {
    const t = tempDataDir('fmt');
    cleanups.push(t.cleanup);
    const p = disk.leaseDirPaths(t.dir, 'n1');
    mkdirSync(p.dir, { recursive: true });
    const warnings: string[] = [];
    const stamp = disk.stampSentinel(p.dir, new Date(), (m) => warnings.push(m));
    expect(stamp).toBe(statSync(p.dir, { bigint: true }).mtimeNs.toString());
    writeFileSync(join(p.dir, '198.18.0.9'), 'x\r\neth0');
    expect(statSync(p.dir, { bigint: true }).mtimeNs.toString()).not.toBe(stamp);
    expect(warnings).toEqual([]);
  });
});

describe('the found index (.berth/found)', () => {
  const meta = { bootId: 'b', createdAt: '2026-01-01T00:00:00.000Z', origin: 'found' as const };
  const entries = Array.from({ length: 1000 }, (_, i) => ({
    containerId: `ctr-${i}`,
    ifname: i % 7 === 0 ? '' : 'eth0',
    ips:
      i % 5 === 0
        ? [`198.18.${i >> 8}.${i & 255}`, `fd00::${i.toString(16)}`]
        : [`198.18.${i >> 8}.${i & 255}`],
    meta,
  }));

  test('one file starting with "{"; a lookup finds each attachment, and nothing else', () => {
    const t = tempDataDir('fmt');
    cleanups.push(t.cleanup);
    const p = disk.leaseDirPaths(t.dir, 'n1');
    mkdirSync(p.tmp, { recursive: true });
    disk.writeFound(p, disk.encodeFound('id-1', entries));
    expect(readFileSync(p.found).subarray(0, 1).toString()).toBe('{');
    const idx = disk.FoundIndex.open(p.found, 'id-1')!;
    for (const e of entries) expect(idx.lookup(disk.attKey(e))).toEqual(e);
    expect(idx.lookup('ctr-1:eth1')).toBeUndefined();
    expect(idx.lookup('nope:eth0')).toBeUndefined();
    expect(idx.all().sort((a, b) => a.containerId.localeCompare(b.containerId))).toEqual(
      [...entries].sort((a, b) => a.containerId.localeCompare(b.containerId)),
    );
  });

  test('another id, a missing file, or a damaged one: absent or CorruptFoundIndex, never a wrong answer', () => {
    const t = tempDataDir('fmt');
    cleanups.push(t.cleanup);
    const p = disk.leaseDirPaths(t.dir, 'n1');
    mkdirSync(p.tmp, { recursive: true });
    expect(disk.FoundIndex.open(p.found, 'id-1')).toBeUndefined();
    const buf = disk.encodeFound('id-1', entries);
    writeFileSync(p.found, buf);
    expect(() => disk.FoundIndex.open(p.found, 'id-2')).toThrow(disk.CorruptFoundIndex);
    writeFileSync(p.found, buf.subarray(0, buf.length - 100));
    expect(() => disk.FoundIndex.open(p.found, 'id-1')!.all()).toThrow(disk.CorruptFoundIndex);
    writeFileSync(p.found, 'garbage');
    expect(() => disk.FoundIndex.open(p.found, 'id-1')).toThrow(disk.CorruptFoundIndex);
  });
});

describe('lease names', () => {
  test('the dotted-quad fast path answers what parseIp and formatIp answer together', () => {
    const names = [
      '0.0.0.0',
      '255.255.255.255',
      '198.18.0.7',
      '1.2.3',
      '1.2.3.4.5',
      '01.2.3.4',
      '1.2.3.04',
      '256.1.1.1',
      '1.2.3.4 ',
      '1..2.3',
      '.1.2.3',
      '1.2.3.',
      '1.2.3.1000',
      '10.0.0.0',
      '10.00.0.1',
      '1a.2.3.4',
      '',
    ];
    for (const n of names) {
      const ip = parseIp(n);
      const want = ip !== undefined && formatIp(ip) === n ? ip : undefined;
      expect(disk.leaseNameIp(n), n).toEqual(want);
    }
  });
});

describe('the scan of a lease directory', () => {
  test('the native one-call read and the file-by-file read see the same leases, problems and foreign names', () => {
    const t = tempDataDir('scan');
    cleanups.push(t.cleanup);
    const d = join(t.dir, 'n1');
    mkdirSync(join(d, '.berth'), { recursive: true });
    writeFileSync(join(d, '198.18.0.2'), 'ctr-a\r\neth0');
    writeFileSync(join(d, '198.18.0.3'), 'legacy');
    writeFileSync(join(d, 'fd00::7'), 'ctr-b\r\neth1');
    writeFileSync(join(d, '198.18.0.4'), '{"not":"a lease"}');
    writeFileSync(join(d, 'lock'), '');
    writeFileSync(join(d, 'last_reserved_ip.0'), '198.18.0.2');
    writeFileSync(join(d, 'README'), 'hello');
    symlinkSync(join(d, '198.18.0.2'), join(d, '198.18.0.5'));
    mkdirSync(join(d, '198.18.0.6'));
    execFileSync('mkfifo', [join(d, '198.18.0.8')]);
    const run = (native: boolean) => {
      const seen: unknown[] = [];
      const { foreign } = disk.scanLeaseDir(
        d,
        (l) => seen.push([l.name, l.att, l.corrupt === true, l.problem !== undefined]),
        { native },
      );
      return { seen: seen.sort((a, b) => String(a).localeCompare(String(b))), foreign: foreign.sort() };
    };
    const native = run(true);
    expect(native).toEqual(run(false));
    expect(native.foreign).toEqual(['README']);
    expect(native.seen).toEqual(
      [
        ['198.18.0.2', { containerId: 'ctr-a', ifname: 'eth0' }, false, false],
        ['198.18.0.3', { containerId: 'legacy', ifname: '' }, false, false],
        ['198.18.0.4', undefined, true, true],
        ['198.18.0.5', undefined, false, true],
        ['198.18.0.6', undefined, false, true],
        ['198.18.0.8', undefined, false, true],
        ['fd00::7', { containerId: 'ctr-b', ifname: 'eth1' }, false, false],
      ].sort((a, b) => String(a).localeCompare(String(b))),
    );
    expect(loadNativeAddon().readSmallFiles).toBeTypeOf('function');
  });
});

// The take-over keeps a scan's leases as byte ranges (FoundSet) and writes the found index from them; the
// reference is what the rebuild did before, one object per lease: scanLeaseDir, grouped by attachment key
// in the order read, and encodeFound of those entries.
describe('found attachments kept as the bytes of the scan (FoundSet)', () => {
  const meta = { bootId: 'b', createdAt: '2026-01-01T00:00:00.000Z', origin: 'found' as const };

  function leaseDir(): string {
    const t = tempDataDir('foundset');
    cleanups.push(t.cleanup);
    const d = join(t.dir, 'n1');
    mkdirSync(join(d, '.berth'), { recursive: true });
    for (let i = 0; i < 300; i++)
      writeFileSync(join(d, `198.18.${i >> 8}.${i & 255}`), `${(i % 250).toString(16).repeat(8)}\r\neth0`);
    const files: [string, string | Buffer][] = [
      ['198.18.9.1', 'dual\r\neth0'],
      ['fd00::9:1', 'dual\r\neth0'],
      ['198.18.9.2', 'legacy-only'],
      ['198.18.9.3', '  spaced\r\neth1 \n'],
      ['198.18.9.4', 'ctr-ü\r\neth0'],
      ['198.18.9.5', Buffer.from([0x63, 0xff, 0x0d, 0x0a, 0x65])],
      ['198.18.9.6', 'a:b\r\nc'],
      ['198.18.9.7', 'a\r\nb:c'],
      ['198.18.9.8', 'tab\tin-id\r\neth0'],
      ['198.18.9.9', `${'x'.repeat(4001)}\r\neth0`],
      ['198.18.9.10', `long-if\r\n${'i'.repeat(65)}`],
      ['198.18.9.11', `max-if\r\n${'i'.repeat(64)}`],
      ['198.18.9.12', '{"v":1}'],
      ['198.18.9.13', 'ctr\r\neth/0'],
      ['198.18.9.14', 'nbsp\u00a0id\r\neth0'],
      ['198.18.9.15', ''],
      ['198.18.09.16', 'not-canonical\r\neth0'],
    ];
    for (const [name, content] of files) writeFileSync(join(d, name), content);
    writeFileSync(join(d, 'last_reserved_ip.0'), '198.18.0.2');
    return d;
  }

  function reference(d: string, native: boolean): disk.FoundEntry[] {
    const byKey = new Map<string, disk.FoundEntry>();
    disk.scanLeaseDir(
      d,
      (l) => {
        if (l.att === undefined) return;
        const e = byKey.get(disk.attKey(l.att));
        if (e === undefined) byKey.set(disk.attKey(l.att), { ...l.att, ips: [l.name], meta });
        else e.ips.push(l.name);
      },
      { native },
    );
    return [...byKey.values()];
  }

  test('the found index written from the scan is the one the entries of a scan by objects give, byte for byte', () => {
    const d = leaseDir();
    for (const native of [true, false]) {
      const entries = reference(d, native);
      // Checks the reference itself: the odd files above are what they look like.
      const byId = new Map(entries.map((e) => [e.containerId, e]));
      expect([...byId.get('dual')!.ips].sort()).toEqual(['198.18.9.1', 'fd00::9:1']);
      expect(byId.get('legacy-only')?.ifname).toBe('');
      expect(byId.get('spaced')?.ifname).toBe('eth1');
      expect(byId.get('ctr-ü')?.ips).toEqual(['198.18.9.4']);
      expect(byId.get('c\ufffd')?.ifname).toBe('e');
      expect(byId.get('max-if')?.ips).toEqual(['198.18.9.11']);
      for (const gone of ['tab', 'x'.repeat(4001), 'long-if', 'ctr', 'nbsp\u00a0id', 'not-canonical'])
        expect(byId.has(gone), gone).toBe(false);
      // "a:b" on "c" and "a" on "b:c" have one key, so one entry (as any Map of the keys has them).
      expect([...byId.get('a:b')!.ips].sort()).toEqual(['198.18.9.6', '198.18.9.7']);
      expect(entries).toHaveLength(250 + 7);

      const set = disk.FoundSet.fromScan(disk.scanLeases(d, { native }), meta);
      expect(set.size).toBe(entries.length);
      expect(set.encode('id-1')).toEqual(disk.encodeFound('id-1', entries));
      for (const e of entries) expect(set.get(disk.attKey(e))).toEqual(e);
      expect(set.get('dual:eth1')).toBeUndefined();
      expect(set.sameAs(new Map(entries.map((e) => [disk.attKey(e), e])))).toBe(true);
    }
  });

  test('delete, setMeta, entries by meta, sameAs', () => {
    const d = leaseDir();
    const entries = reference(d, true);
    const old = new Map(entries.map((e) => [disk.attKey(e), e]));
    const set = disk.FoundSet.fromScan(disk.scanLeases(d), meta);
    expect(set.delete('dual:eth0')).toBe(true);
    expect(set.delete('dual:eth0')).toBe(false);
    expect(set.has('dual:eth0')).toBe(false);
    expect(set.size).toBe(entries.length - 1);
    expect(set.sameAs(old)).toBe(false);
    const earlier = { bootId: 'earlier', origin: 'found' as const };
    set.setMeta('ctr-ü:eth0', earlier);
    set.setMeta('dual:eth0', earlier);
    expect([...set.entries((m) => m.bootId !== 'b')].map(([k]) => k)).toEqual(['ctr-ü:eth0']);
    expect([...set.entries()]).toHaveLength(entries.length - 1);
    const rest = entries
      .filter((e) => e.containerId !== 'dual')
      .map((e) => (e.containerId === 'ctr-ü' ? { ...e, meta: earlier } : e));
    expect(set.encode('id-2')).toEqual(disk.encodeFound('id-2', rest));
    const idx = disk.FoundIndex.open(
      (() => {
        const p = disk.leaseDirPaths(join(d, '..'), 'n1');
        mkdirSync(p.tmp, { recursive: true });
        disk.writeFound(p, set.encode('id-2'));
        return p.found;
      })(),
      'id-2',
    )!;
    expect(idx.lookup('ctr-ü:eth0')?.meta).toEqual(earlier);
    expect(idx.lookup('dual:eth0')).toBeUndefined();
  });

  test('the addresses of the leases: from the scan and from the listing alike', () => {
    const d = leaseDir();
    const sorted = (a: disk.LeaseAddrs) => ({
      v4: [...a.v4].sort((x, y) => x - y),
      other: a.other.map((ip) => formatIp(ip)).sort(),
    });
    const fromScan = sorted(disk.scanLeases(d).addrs());
    expect(fromScan).toEqual(sorted(disk.listLeaseAddrs(d)));
    expect(fromScan.v4).toHaveLength(300 + 15);
    expect(fromScan.other).toEqual(['fd00::9:1']);
  });
});
