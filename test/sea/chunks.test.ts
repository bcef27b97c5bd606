// The loader of the single executable's lazily loaded parts: ids routed to the main script's modules,
// to other parts (compiled once, with a code cache when there is one) or to built-ins.
import { Script } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { CHUNK_PREFIX, CHUNK_SUFFIX, chunkAssets, createChunkRequire } from '../../src/sea/chunks';

function loaderFor(parts: Record<string, string>, caches: Record<string, Uint8Array> = {}) {
  const sources = new Map<string, string>();
  const bytes = new Map<string, Uint8Array>();
  for (const [id, code] of Object.entries(parts)) sources.set(chunkAssets(id).source, code);
  for (const [id, cache] of Object.entries(caches)) bytes.set(chunkAssets(id).cache, cache);
  const reads: string[] = [];
  const shared = { calls: 0 };
  const req = createChunkRequire({
    core: { 'cni-spec/errors': () => shared },
    builtin: (id) => (id === 'node:path' ? { builtin: true } : undefined),
    source: (name) => {
      reads.push(name);
      const code = sources.get(name);
      if (code === undefined) throw new Error(`no asset ${name}`);
      return code;
    },
    bytes: (name) => bytes.get(name),
  });
  return { req, reads, shared };
}

describe('createChunkRequire', () => {
  it('gives a part the main script’s module instance, built-ins, and other parts', () => {
    const { req, shared } = loaderFor({
      'bridge/plugin': `
        const errors = require('berth-core:cni-spec/errors');
        errors.calls++;
        exports.same = errors;
        exports.path = require('node:path');
        exports.add = () => require('berth-chunk:bridge/add');`,
      'bridge/add': `module.exports = { errors: require('berth-core:cni-spec/errors'), file: __filename };`,
    });
    const plugin = req('berth-chunk:bridge/plugin') as {
      same: unknown;
      path: unknown;
      add: () => { errors: unknown; file: string };
    };
    expect(plugin.same).toBe(shared);
    expect(plugin.path).toEqual({ builtin: true });
    expect(plugin.add().errors).toBe(shared);
    expect(plugin.add().file).toBe('berth:bridge/add.js');
    expect(shared.calls).toBe(1);
  });

  it('compiles and runs each part once', () => {
    const { req, reads } = loaderFor({
      once: 'exports.n = (globalThis.__bertChunkRuns = (globalThis.__bertChunkRuns ?? 0) + 1);',
    });
    const first = req('berth-chunk:once');
    expect(req('berth-chunk:once')).toBe(first);
    expect(reads).toEqual([chunkAssets('once').source]);
    delete (globalThis as Record<string, unknown>).__bertChunkRuns;
  });

  it('lets a cycle between parts see the partial exports, as Node does', () => {
    const { req } = loaderFor({
      a: `exports.early = 1; exports.fromB = require('berth-chunk:b').seen; exports.late = 2;`,
      b: `exports.seen = Object.keys(require('berth-chunk:a'));`,
    });
    expect(req('berth-chunk:a')).toEqual({ early: 1, fromB: ['early'], late: 2 });
  });

  it('runs a part given the code cache made for its wrapped source', () => {
    const code = 'exports.v = 42;';
    const cache = new Script(`${CHUNK_PREFIX}${code}${CHUNK_SUFFIX}`, {
      filename: 'berth:cached.js',
    }).createCachedData();
    const { req } = loaderFor({ cached: code }, { cached: cache });
    expect(req('berth-chunk:cached')).toEqual({ v: 42 });
  });

  it('names a missing main-script module', () => {
    const { req } = loaderFor({});
    expect(() => req('berth-core:nope')).toThrow('no module berth-core:nope in the executable');
  });
});
