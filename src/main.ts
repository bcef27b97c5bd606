// The multi-call entry: one program, three names. Each branch loads only its own modules, because every
// plugin execution pays for what it requires at start-up.
import { basename } from 'node:path';

export type ProgramName = 'berth-bridge' | 'berth-ipam' | 'berth';

/** Picks the program from the name the executable was started under (a hard link or a launcher). */
export function programFromInvocation(argv: readonly string[], execPath: string): string {
  const script = argv[1];
  // Under a single-executable build argv[1] is the executable itself, or absent.
  const invokedAs = script !== undefined && !script.startsWith('-') ? script : execPath;
  return basename(invokedAs).replace(/\.(c?js|exe)$/, '');
}

export function main(name: string = programFromInvocation(process.argv, process.execPath)): void {
  switch (name) {
    case 'berth-bridge':
      (require('./bridge/plugin') as typeof import('./bridge/plugin')).main();
      return;
    case 'berth-ipam':
      (require('./ipam/plugin') as typeof import('./ipam/plugin')).main();
      return;
    case 'berth':
      (require('./cli/main') as typeof import('./cli/main')).main();
      return;
    default:
      process.stderr.write(
        `berth: started as "${name}"; run as berth-bridge, berth-ipam or berth (hard links to one program)\n`,
      );
      process.exitCode = 1;
  }
}
