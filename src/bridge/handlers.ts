// berth-bridge's handler table as a value over its services: the standalone plugin binds it to the process
// (plugin.ts), berthd runs it for every forwarded call. Each handler module is loaded only for its own
// command, since every plugin execution pays for what it requires.
import type { PluginHandlers } from '../cni-spec/dispatch';
import type { BridgeDeps } from './deps';

export function bridgeHandlers(deps: BridgeDeps): PluginHandlers {
  return {
    add: (req) => (require('./add') as typeof import('./add')).cmdAdd(req, deps),
    del: (req) => (require('./del') as typeof import('./del')).cmdDel(req, deps),
    check: (req) => (require('./check') as typeof import('./check')).cmdCheck(req, deps),
    gc: (req) => (require('./gc-status') as typeof import('./gc-status')).cmdGc(req, deps),
    status: (req) => (require('./gc-status') as typeof import('./gc-status')).cmdStatus(req, deps),
  };
}

export const BRIDGE_ABOUT = { name: 'berth-bridge' } as const;
