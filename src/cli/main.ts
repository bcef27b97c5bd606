// The `berth` admin command line. commander and every subcommand module load only here, and each
// subcommand's module only when that subcommand runs: `berth exec` should not pay for `berth daemon`.
import type { Command } from 'commander';

export function main(argv: readonly string[] = process.argv): void {
  run(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`berth: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

/** Parses argv and runs one subcommand; resolves to the exit code. */
export async function run(argv: readonly string[]): Promise<number> {
  const { Command: CommandClass, CommanderError } = require('commander') as typeof import('commander');
  let exitCode = 0;
  const program: Command = new CommandClass('berth')
    .description('berth: CNI bridge + IPAM plugins — admin command line')
    .exitOverride()
    .showHelpAfterError();

  // One register* per subcommand; later subcommands (daemon, leases, gc, status) add theirs here.
  registerExec(program, (code) => (exitCode = code));
  registerDemo(program, (code) => (exitCode = code));

  try {
    await program.parseAsync([...argv], { from: 'node' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    throw err;
  }
  return exitCode;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function registerExec(program: Command, setExit: (code: number) => void): void {
  const exec = program
    .command('exec')
    .description(
      'run a network config against a netns like cnitool (env: NETCONFPATH, CNI_PATH, CNI_IFNAME, CNI_ARGS, CAP_ARGS, BERTH_CACHE_DIR)',
    );
  const verbs = { add: 'ADD', check: 'CHECK', del: 'DEL', gc: 'GC', status: 'STATUS' } as const;
  for (const [verb, command] of Object.entries(verbs) as [keyof typeof verbs, string][]) {
    const sub = exec
      .command(`${verb} <network> <netns>`)
      .description(`${command} the network list <network> for the namespace at path <netns>`)
      .option('-i, --ifname <name>', 'interface name inside the netns (default: $CNI_IFNAME or eth0)')
      .option('--cache-dir <dir>', 'directory holding results/ (default: $BERTH_CACHE_DIR or /var/lib/cni)');
    if (verb === 'gc') sub.option('--valid <containerID/ifname>', 'an attachment still in use (repeatable)', collect, []);
    sub.action(async (network: string, netns: string, opts: { ifname?: string; cacheDir?: string; valid?: string[] }) => {
      const { runExec } = require('./exec') as typeof import('./exec');
      setExit(
        await runExec(verb, network, netns, opts, {
          env: process.env,
          stdout: (s) => process.stdout.write(s),
          stderr: (s) => process.stderr.write(s),
        }),
      );
    });
  }
}

function registerDemo(program: Command, setExit: (code: number) => void): void {
  program
    .command('demo')
    .description('attach two throw-away pod namespaces with berth-bridge + berth-ipam, ping between them, remove everything (root)')
    .option('--reference', "use Debian's reference bridge + host-local from /usr/lib/cni instead (comparison)")
    .action(async (opts: { reference?: boolean }) => {
      const { runDemo } = require('./demo') as typeof import('./demo');
      setExit(await runDemo({ reference: opts.reference === true, out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) }));
    });
}
