// Stands in for node-gyp-build inside the single executable (scripts/package.js aliases it): netlink's
// `require('node-gyp-build')(dir)` then gets its addon from the embedded asset instead of prebuilds/.
import { loadEmbeddedAddon } from './native-assets';

export = function nodeGypBuild(_dir: string): unknown {
  return loadEmbeddedAddon('netlink');
};
