// The on-disk format both lease stores (berth-ipam on the files, berthd) write through lease-dir.ts: the
// exact bytes host-local and the other store read back.
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import * as disk from '../../src/ipam/lease-dir';
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
    expect(disk.readState(p)).toEqual({ v: 1, gen: 3, dirMtimeNs: '123', bootId: 'b' });
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
