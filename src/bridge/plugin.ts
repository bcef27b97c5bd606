// Placeholder entry until the bridge plugin lands: answers VERSION, refuses every other command clearly.
import { runPlugin } from '../cni-spec/dispatch';

export function main(): void {
  runPlugin({}, { name: 'berth-bridge' });
}
