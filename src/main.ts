// The multi-call entry: one program, three names. Each branch loads only its own modules, because every
// plugin execution pays for what it requires at start-up.
import { basename } from 'node:path';

export type ProgramName = 'berth-bridge' | 'berth-ipam' | 'berth';

const PROGRAMS: readonly string[] = ['berth-bridge', 'berth-ipam', 'berth'] satisfies ProgramName[];

/** Picks the program from the name the executable was started under (a hard link or a launcher). */
export function programFromInvocation(argv: readonly string[], execPath: string): string {
  const script = argv[1];
  // Under a single-executable build argv[1] is the caller's argv[0], or absent; a caller may set argv[0]
  // to anything, while execPath keeps the hard link's name (symlinks are resolved), so either may name us.
  const names = [script !== undefined && !script.startsWith('-') ? script : execPath, execPath].map((p) =>
    basename(p).replace(/\.(c?js|exe)$/, ''),
  );
  return names.find((n) => PROGRAMS.includes(n)) ?? (names[0] as string);
}

/**
 * berth-shim's fallback runs `berth` under a plugin's name: argv[0] tells the single executable, and this
 * variable tells a development tree's Node launcher (a script cannot see argv[0]). It is removed before the
 * program runs, so the plugin sees exactly the caller's environment.
 */
export function takeFallbackProgram(name: string, env: NodeJS.ProcessEnv): string {
  const shimmed = env.BERTH_FALLBACK_PROGRAM;
  if (shimmed === undefined) return name;
  delete env.BERTH_FALLBACK_PROGRAM;
  return name === 'berth' && (shimmed === 'berth-bridge' || shimmed === 'berth-ipam') ? shimmed : name;
}

export function main(invokedAs: string = programFromInvocation(process.argv, process.execPath)): void {
  const name = takeFallbackProgram(invokedAs, process.env);
  switch (name) {
    case 'berth-bridge':
      (require('./bridge/plugin') as typeof import('./bridge/plugin')).main();
      return;
    case 'berth-ipam':
      (require('./ipam/plugin') as typeof import('./ipam/plugin')).main();
      return;
    case 'berth':
      if (process.argv[2] === '--version' || process.argv[2] === '-V') {
        process.stdout.write(
          (require('./sea/build-info') as typeof import('./sea/build-info')).describeBuild(),
        );
        return;
      }
      (require('./cli/main') as typeof import('./cli/main')).main();
      return;
    default: {
      const msg = `started as "${name}"; run as berth-bridge, berth-ipam or berth (hard links to one program)`;
      // Run by a runtime (a copy installed under another name): it reads a CNI error on stdout, as the
      // shim prints one in the same case.
      if (process.env.CNI_COMMAND !== undefined && process.env.CNI_COMMAND !== '')
        process.stdout.write(`${JSON.stringify({ code: 999, msg })}\n`);
      process.stderr.write(`berth: ${msg}\n`);
      process.exitCode = 1;
    }
  }
}
