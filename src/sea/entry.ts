// The single executable's main script (bundled by scripts/package.js): native addons come from the
// embedded assets, then the multi-call entry picks the program from the name it was started under.
import { main } from '../main';
import { type NativeAddon, setEmbeddedAddonLoader } from '../native-addon';
import { loadEmbeddedAddon } from './native-assets';

setEmbeddedAddonLoader(() => loadEmbeddedAddon('berth_native') as NativeAddon);
main();
