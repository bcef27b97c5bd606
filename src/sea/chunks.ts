// Lazily loaded parts of the single executable. A Node 20 single executable runs one script, and the
// time to load a script grows with its size even with a code cache, so scripts/package.js cuts the bundle
// where the sources already load lazily (each program, each bridge command, the CLI): the main script keeps
// what every start needs, and each cut-off part is an asset compiled (with its own code cache) on first
// require. A part gets the main script's instance of every module the main script holds (one CniError
// class, one addon loader) through `berth-core:` ids, and reaches other parts through `berth-chunk:` ids.
import { Script } from 'node:vm';

/** The asset names of a part, as scripts/package.js writes them. */
export function chunkAssets(id: string): { source: string; cache: string } {
  return { source: `berth/chunk/${id}.js`, cache: `berth/chunk/${id}.cache` };
}

/** The wrapper each part's CommonJS code is placed in (scripts/package.js uses the same text for its cache). */
export const CHUNK_PREFIX = '(function (exports, require, module, __filename, __dirname) {';
export const CHUNK_SUFFIX = '\n})';

type ModuleFactory = () => unknown;

export interface ChunkLoaderOptions {
  /** The main script's modules, by id (path below dist/ without .js): `berth-core:<id>`. */
  core: Record<string, ModuleFactory>;
  /** require() for built-in modules. */
  builtin: (id: string) => unknown;
  /** An asset as text, and as bytes (undefined when absent). */
  source: (name: string) => string;
  bytes: (name: string) => Uint8Array | undefined;
}

export function createChunkRequire(opts: ChunkLoaderOptions): (id: string) => unknown {
  const loaded = new Map<string, unknown>();

  const load = (id: string): unknown => {
    const done = loaded.get(id);
    if (done !== undefined) return done;
    const names = chunkAssets(id);
    const cachedData = opts.bytes(names.cache);
    const filename = `berth:${id}.js`;
    const script = new Script(`${CHUNK_PREFIX}${opts.source(names.source)}${CHUNK_SUFFIX}`, {
      filename,
      ...(cachedData !== undefined ? { cachedData } : {}),
    });
    const module = { exports: {} as unknown };
    // Set before running, as Node does, so a cycle back into this part sees its partial exports.
    loaded.set(id, module.exports);
    (script.runInThisContext() as (...args: unknown[]) => void)(
      module.exports,
      chunkRequire,
      module,
      filename,
      '/',
    );
    loaded.set(id, module.exports);
    return module.exports;
  };

  function chunkRequire(id: string): unknown {
    if (id.startsWith('berth-core:')) {
      const factory = opts.core[id.slice('berth-core:'.length)];
      if (factory === undefined) throw new Error(`berth: no module ${id} in the executable`);
      return factory();
    }
    if (id.startsWith('berth-chunk:')) return load(id.slice('berth-chunk:'.length));
    return opts.builtin(id);
  }
  return chunkRequire;
}
