// The cniCacheV1 file: the exact layout libcni (and so cnitool, containerd, CRI-O) reads and writes.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { containerIdFor, parseCniArgs } from '../../src/cli/exec';
import {
  cacheFilePath,
  decodeCacheEntry,
  listCachedAttachments,
  readCachedResult,
  removeCacheEntry,
  validateAttachmentKey,
  writeCacheEntry,
  type CachedAttachment,
} from '../../src/cli/runtime/result-cache';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-cache-`));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const conf = Buffer.from('{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"a"}]}\n');
const entry = (over: Partial<CachedAttachment> = {}): CachedAttachment => ({
  networkName: 'net',
  containerId: 'cnitool-0123456789abcdef0123',
  ifName: 'eth0',
  netns: '/run/netns/p1',
  config: conf,
  cniArgs: [
    ['IgnoreUnknown', '1'],
    ['K8S_POD_NAME', 'x'],
  ],
  capabilityArgs: { portMappings: [{ hostPort: 80 }] },
  result: { cniVersion: '1.0.0', ips: [{ address: '198.18.0.2/24' }] },
  ...over,
});

describe('cache file', () => {
  test('is <dir>/results/<net>-<id>-<ifname>, dir 0700, file 0600, libcni keys in libcni order', async () => {
    await writeCacheEntry(dir, entry());
    const file = join(dir, 'results', 'net-cnitool-0123456789abcdef0123-eth0');
    expect(cacheFilePath(dir, entry())).toBe(file);
    expect(statSync(join(dir, 'results')).mode & 0o777).toBe(0o700);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).toBe(
      '{"kind":"cniCacheV1","containerId":"cnitool-0123456789abcdef0123",' +
        `"config":"${conf.toString('base64')}","ifName":"eth0","networkName":"net","netns":"/run/netns/p1",` +
        '"cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAME","x"]],"capabilityArgs":{"portMappings":[{"hostPort":80}]},' +
        '"result":{"cniVersion":"1.0.0","ips":[{"address":"198.18.0.2/24"}]}}',
    );
  });

  test('empty netns, cniArgs and capabilityArgs are left out (Go omitempty)', async () => {
    await writeCacheEntry(dir, entry({ netns: '', cniArgs: [], capabilityArgs: {} }));
    const raw = JSON.parse(readFileSync(cacheFilePath(dir, entry()), 'utf8'));
    expect(Object.keys(raw)).toEqual(['kind', 'containerId', 'config', 'ifName', 'networkName', 'result']);
  });

  test('round-trips, is listed, and its result is what CHECK/DEL read', async () => {
    await writeCacheEntry(dir, entry());
    await writeCacheEntry(dir, entry({ networkName: 'other', ifName: 'net1' }));
    expect(decodeCacheEntry(readFileSync(cacheFilePath(dir, entry()), 'utf8'))).toEqual(entry());
    expect((await listCachedAttachments(dir)).map((e) => `${e.networkName}/${e.ifName}`)).toEqual([
      'net/eth0',
      'other/net1',
    ]);
    expect(await readCachedResult(dir, entry())).toEqual(entry().result);
    await removeCacheEntry(dir, entry());
    expect(await readCachedResult(dir, entry())).toBeUndefined();
    expect(await listCachedAttachments(dir)).toHaveLength(1);
    await removeCacheEntry(dir, entry()); // removing twice is fine: DEL may repeat
  });

  test('legacy files holding only a result are read for CHECK/DEL but not listed for GC; junk is ignored', async () => {
    mkdirSync(join(dir, 'results'), { recursive: true });
    writeFileSync(cacheFilePath(dir, entry()), '{"cniVersion":"0.4.0","ips":[]}');
    writeFileSync(cacheFilePath(dir, entry({ ifName: 'eth1' })), 'garbage');
    expect(await readCachedResult(dir, entry())).toEqual({ cniVersion: '0.4.0', ips: [] });
    expect(await readCachedResult(dir, entry({ ifName: 'eth1' }))).toBeUndefined();
    expect(await listCachedAttachments(dir)).toEqual([]);
  });

  test('an entry naming no interface or no network is not listed for GC (libcni skips it too)', async () => {
    await writeCacheEntry(dir, entry());
    const o = JSON.parse(readFileSync(cacheFilePath(dir, entry()), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'results', 'zz-noif'), JSON.stringify({ ...o, ifName: '' }));
    writeFileSync(join(dir, 'results', 'zz-nonet'), JSON.stringify({ ...o, networkName: '' }));
    expect((await listCachedAttachments(dir)).map((e) => `${e.networkName}/${e.ifName}`)).toEqual([
      'net/eth0',
    ]);
  });

  test.each([
    [{ containerId: '' }, 'invalid container id ""'],
    [{ containerId: '../x' }, 'invalid container id "../x"'],
    [{ networkName: 'a/b' }, 'invalid network name "a/b"'],
    [{ ifName: '' }, 'invalid interface name ""'],
    [{ ifName: 'sixteen-bytes-xx' }, 'at most 15 bytes'],
    [{ ifName: '..' }, 'invalid interface name ".."'],
    [{ ifName: 'a:b' }, 'invalid interface name "a:b"'],
  ])('names reaching the file path are validated: %j', (over, msg) => {
    expect(() => validateAttachmentKey({ ...entry(), ...over })).toThrow(msg);
  });
});

describe('container id', () => {
  test('is cnitool- and the first 20 hex chars of sha512 of the absolute netns path (checked with sha512sum)', () => {
    const path = '/run/netns/bt-example';
    const sum = execFileSync('sha512sum', { input: path }).toString().slice(0, 20);
    expect(containerIdFor(path)).toBe(`cnitool-${sum}`);
    expect(containerIdFor(path)).toMatch(/^cnitool-[0-9a-f]{20}$/);
  });

  test('relative and unclean paths are made absolute first, as filepath.Abs does', () => {
    expect(containerIdFor('some/ns')).toBe(containerIdFor(resolve('some/ns')));
    expect(containerIdFor('/run//netns/./x')).toBe(containerIdFor('/run/netns/x'));
  });
});

test.each([
  ['', []],
  ['A=1', [['A', '1']]],
  [
    'IgnoreUnknown=1;K8S_POD_NAME=x',
    [
      ['IgnoreUnknown', '1'],
      ['K8S_POD_NAME', 'x'],
    ],
  ],
])('CNI_ARGS %j', (s, pairs) => {
  expect(parseCniArgs(s)).toEqual(pairs);
});

test.each(['A', 'A=', '=1', 'A=1=2', 'A=1;', 'A=1;;B=2'])(
  'CNI_ARGS %j is rejected like cnitool does',
  (s) => {
    expect(() => parseCniArgs(s)).toThrow('invalid CNI_ARGS pair');
  },
);
