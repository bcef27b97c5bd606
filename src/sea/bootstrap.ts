// The single executable's main script: compiles the bundled program (an asset) with its code cache, which
// scripts/package.js made after running a VERSION, so the functions every start runs come compiled too
// (the code cache Node makes for a main script holds only what compiling it produced).
import { Script } from 'node:vm';
import { CHUNK_PREFIX, CHUNK_SUFFIX, chunkAssets } from './chunks';

const sea = require('node:sea') as typeof import('node:sea');
const names = chunkAssets('core');
const script = new Script(`${CHUNK_PREFIX}${sea.getAsset(names.source, 'utf8')}${CHUNK_SUFFIX}`, {
  filename: 'berth:core.js',
  cachedData: new Uint8Array(sea.getRawAsset(names.cache) as ArrayBuffer),
});
// `berth --version` reports it (src/sea/build-info.ts): a rejected cache still works, only slower.
(globalThis as Record<symbol, unknown>)[Symbol.for('berth.codeCache')] =
  script.cachedDataRejected === true ? 'rejected' : 'accepted';
(script.runInThisContext() as (...args: unknown[]) => void)(exports, require, module, __filename, __dirname);
