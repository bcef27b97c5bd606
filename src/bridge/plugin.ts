// berth-bridge's entry: the handler table over services read from the process environment, bound to the
// process. The only place in this room that touches the process.
import { runPlugin } from '../cni-spec/dispatch';
import { depsFromEnv } from './deps';
import { BRIDGE_ABOUT, bridgeHandlers } from './handlers';

export function main(): void {
  runPlugin(bridgeHandlers(depsFromEnv(process.env)), BRIDGE_ABOUT);
}
