// libcni's LoadNetworkConf rules, on real files in a temp dir.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { confListFromBytes, goJson, loadNetworkConfList } from '../../src/cli/runtime/conflist';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-conf-`));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const write = (file: string, content: unknown) =>
  writeFileSync(join(dir, file), typeof content === 'string' ? content : JSON.stringify(content));
const conflist = (name: string, type: string, extra: Record<string, unknown> = {}) => ({
  cniVersion: '1.0.0',
  name,
  plugins: [{ type }],
  ...extra,
});

describe('loadNetworkConfList', () => {
  test('takes the first *.conflist in byte order whose name matches', async () => {
    write('20-net.conflist', conflist('net', 'second'));
    write('10-net.conflist', conflist('net', 'first'));
    write('05-other.conflist', conflist('other', 'x'));
    write('00-net.conf', { cniVersion: '1.0.0', name: 'net', type: 'single' });
    const list = await loadNetworkConfList(dir, 'net');
    expect(list.plugins.map((p) => p.type)).toEqual(['first']);
    expect(list.file).toBe(join(dir, '10-net.conflist'));
  });

  test('byte order, not locale order: upper case sorts before lower case (Go sort.Strings)', async () => {
    write('a-net.conflist', conflist('net', 'lower'));
    write('B-net.conflist', conflist('net', 'upper'));
    expect((await loadNetworkConfList(dir, 'net')).plugins.map((p) => p.type)).toEqual(['upper']);
  });

  test('keeps the file bytes untouched (they go base64 into the result cache)', async () => {
    const text = '{ "cniVersion": "1.0.0", "name": "net",\n  "plugins": [ { "type": "a" } ] }\n';
    write('10-net.conflist', text);
    expect((await loadNetworkConfList(dir, 'net')).bytes.toString()).toBe(text);
  });

  test('falls back to single-plugin *.conf / *.json files, up-converted the way libcni re-serialises them', async () => {
    write('10-x.conflist', conflist('other', 'x'));
    write('30-net.json', { cniVersion: '0.4.0', name: 'net', type: 'late' });
    write('20-net.conf', {
      type: 'bridge',
      name: 'net',
      cniVersion: '0.4.0',
      bridge: 'br0',
      ipam: { type: 'host-local', b: 1, a: 2 },
    });
    write('15-net.txt', { cniVersion: '0.4.0', name: 'net', type: 'ignored-extension' });
    const list = await loadNetworkConfList(dir, 'net');
    expect(list).toMatchObject({ name: 'net', cniVersion: '0.4.0', disableCheck: false, disableGC: false });
    expect(list.plugins).toEqual([
      {
        type: 'bridge',
        name: 'net',
        cniVersion: '0.4.0',
        bridge: 'br0',
        ipam: { type: 'host-local', b: 1, a: 2 },
      },
    ]);
    expect(list.bytes.toString()).toBe(
      '{"cniVersion":"0.4.0","name":"net","plugins":[{"bridge":"br0","cniVersion":"0.4.0","ipam":{"a":2,"b":1,"type":"host-local"},"name":"net","type":"bridge"}]}',
    );
  });

  test('directories are skipped, a missing directory means no configs', async () => {
    mkdirSync(join(dir, 'net.conflist'));
    await expect(loadNetworkConfList(dir, 'net')).rejects.toThrow(`no net configurations found in ${dir}`);
    await expect(loadNetworkConfList(join(dir, 'absent'), 'net')).rejects.toThrow(
      'no net configurations found',
    );
  });

  test('names the network when configs exist but none matches', async () => {
    write('10-x.conflist', conflist('other', 'x'));
    await expect(loadNetworkConfList(dir, 'net')).rejects.toThrow(
      `no net configuration with name "net" in ${dir}`,
    );
    write('10-x.conf', { cniVersion: '1.0.0', name: 'other2', type: 'x' });
    await expect(loadNetworkConfList(dir, 'net')).rejects.toThrow(
      `no net configuration with name "net" in ${dir}`,
    );
  });

  test('a broken file stops the scan even when a later file would match (libcni does the same)', async () => {
    write('10-broken.conflist', '{ not json');
    write('20-net.conflist', conflist('net', 'a'));
    await expect(loadNetworkConfList(dir, 'net')).rejects.toThrow(/error parsing configuration list/);
  });
});

describe('confListFromBytes', () => {
  const parse = (v: unknown) => confListFromBytes(Buffer.from(JSON.stringify(v)));

  test.each([
    [{ cniVersion: '1.0.0', plugins: [{ type: 'a' }] }, 'no name'],
    [{ name: 1, plugins: [{ type: 'a' }] }, 'invalid name type'],
    [{ name: 'n', cniVersion: 1, plugins: [{ type: 'a' }] }, 'invalid cniVersion type'],
    [{ name: 'n' }, "no 'plugins' key"],
    [{ name: 'n', plugins: {} }, "invalid 'plugins' type"],
    [{ name: 'n', plugins: [] }, 'no plugins in list'],
    [{ name: 'n', plugins: [{ ipam: {} }] }, "missing 'type'"],
    [{ name: 'n', plugins: [{ type: '../../bin/sh' }] }, 'invalid plugin type'],
    [{ name: 'n', disableCheck: 'maybe', plugins: [{ type: 'a' }] }, 'invalid disableCheck value'],
    [{ name: 'n', disableGC: 1, plugins: [{ type: 'a' }] }, 'invalid disableGC type'],
    [{ name: 'n', cniVersions: ['x.y'], plugins: [{ type: 'a' }] }, 'invalid cniVersions entry'],
  ])('%j → %s', (raw, msg) => {
    expect(() => parse(raw)).toThrow(msg);
  });

  test.each([
    [{ cniVersion: '1.0.0' }, '1.0.0'],
    [{}, ''],
    [{ cniVersion: '0.4.0', cniVersions: ['1.0.0', '1.1.0'] }, '1.1.0'],
    // Versions newer than this runtime implements are skipped, including cniVersion itself.
    [{ cniVersion: '1.2.0', cniVersions: ['1.0.0', '9.0.0'] }, '1.0.0'],
    [{ cniVersion: '1.1.0', cniVersions: ['0.3.1'] }, '1.1.0'],
    // Numeric, not string, order.
    [{ cniVersions: ['0.10.0', '0.9.0'] }, '0.10.0'],
  ])('version of %j is %s', (extra, version) => {
    expect(parse({ name: 'n', plugins: [{ type: 'a' }], ...extra }).cniVersion).toBe(version);
  });

  test.each([
    [true, true],
    ['true', true],
    ['1', true],
    [false, false],
    ['false', false],
  ])('disableCheck/disableGC %j → %s', (value, expected) => {
    const list = parse({ name: 'n', disableCheck: value, disableGC: value, plugins: [{ type: 'a' }] });
    expect([list.disableCheck, list.disableGC]).toEqual([expected, expected]);
  });
});

test('goJson sorts keys at every level like Go marshalling a map, keeping array order', () => {
  expect(goJson({ b: 1, a: { d: [{ z: 1, y: 2 }, 3], c: null } })).toBe(
    '{"a":{"c":null,"d":[{"y":2,"z":1},3]},"b":1}',
  );
});
