// berth-bridge's entry: a table of handlers on the cni-spec dispatcher. Each handler module is loaded only
// for its own command, since every plugin execution pays for what it requires.
import { runPlugin } from '../cni-spec/dispatch';

export function main(): void {
  runPlugin(
    {
      add: (req) => (require('./add') as typeof import('./add')).cmdAdd(req),
      del: (req) => (require('./del') as typeof import('./del')).cmdDel(req),
      check: (req) => (require('./check') as typeof import('./check')).cmdCheck(req),
      gc: (req) => (require('./gc-status') as typeof import('./gc-status')).cmdGc(req),
      status: (req) => (require('./gc-status') as typeof import('./gc-status')).cmdStatus(req),
    },
    { name: 'berth-bridge' },
  );
}
