// The single executable's program (bundled by scripts/package.js, started by src/sea/bootstrap.ts): native
// addons come from the embedded assets, then the multi-call entry picks the program from the name it was
// started under. The asset code loads on first use of an addon only (node:crypto alone costs ~2 ms).
import { main } from '../main';
import { type NativeAddon, setEmbeddedAddonLoader } from '../native-addon';

setEmbeddedAddonLoader(
  () =>
    (require('./native-assets') as typeof import('./native-assets')).loadEmbeddedAddon(
      'berth_native',
    ) as NativeAddon,
);
main();
