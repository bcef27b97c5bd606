// The `berth` admin command line. commander and every subcommand module load only here, and each
// subcommand's module only when that subcommand runs: `berth exec` should not pay for `berth daemon`.
import type { Command } from 'commander';

export function main(argv: readonly string[] = process.argv): void {
  // Output piped into a reader that stopped (`berth status | head -5`): done, as a command killed by SIGPIPE,
  // not an unhandled 'error' with a stack.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(process.exitCode ?? 0);
  });
  run(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      const msg = err instanceof Error ? err.message : String(err);
      process.stderr.write(`berth: ${msg}\n`);
      // A script that asked for JSON gets the error as JSON too (stdout was empty: nothing to parse).
      if (argv.includes('--json')) {
        const code = (err as { code?: unknown }).code;
        process.stdout.write(
          `${JSON.stringify({ error: { ...(typeof code === 'number' ? { code } : {}), msg } })}\n`,
        );
      }
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
  registerBerthd(program, (code) => (exitCode = code));

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
    if (verb === 'gc')
      sub.option('--valid <containerID/ifname>', 'an attachment still in use (repeatable)', collect, []);
    sub.action(
      async (
        network: string,
        netns: string,
        opts: { ifname?: string; cacheDir?: string; valid?: string[] },
      ) => {
        const { runExec } = require('./exec') as typeof import('./exec');
        setExit(
          await runExec(
            { ...opts, verb, network, netns },
            {
              env: process.env,
              stdout: (s) => process.stdout.write(s),
              stderr: (s) => process.stderr.write(s),
            },
          ),
        );
      },
    );
  }
}

function registerDemo(program: Command, setExit: (code: number) => void): void {
  program
    .command('demo')
    .description(
      'attach two throw-away pod namespaces with berth-bridge + berth-ipam, ping between them, remove everything (root)',
    )
    .option(
      '--reference',
      "use Debian's reference bridge + host-local from /usr/lib/cni instead (comparison)",
    )
    .action(async (opts: { reference?: boolean }) => {
      const { runDemo } = require('./demo') as typeof import('./demo');
      setExit(
        await runDemo({
          reference: opts.reference === true,
          out: (s) => process.stdout.write(s),
          err: (s) => process.stderr.write(s),
        }),
      );
    });
}

/** berthd and its admin commands (issue 6); each module loads only when its subcommand runs. */
function registerBerthd(program: Command, setExit: (code: number) => void): void {
  const io = {
    out: (s: string) => void process.stdout.write(s),
    err: (s: string) => void process.stderr.write(s),
  };
  const where = (c: Command): Command =>
    c
      .option('--socket <path>', 'berthd socket (default /run/berth/berthd.sock)')
      .option('--data-dir <dir>', 'lease data dir when no daemon answers (default /var/lib/cni/networks)')
      .option(
        '--state-dir <dir>',
        "berthd's --state-dir, for the data dirs it served when it does not answer (default: the socket's directory and /var/lib/berth)",
      );
  daemonOptions(
    program
      .command('daemon')
      .description(
        'run berthd in the foreground: the IPAM daemon and the warm path (plugin calls forwarded by the shim), HTTP+JSON on a root-only unix socket',
      ),
  ).action(async (o: import('./daemon').DaemonCliOptions) => {
    const { runDaemonCommand } = require('./daemon') as typeof import('./daemon');
    setExit(await runDaemonCommand(o, io.err));
  });
  daemonOptions(
    program
      .command('node-agent')
      .description(
        "the node image's entrypoint: install the plugins and the network config on the host, then run berthd",
      )
      .option(
        '--plugins-from <dir>',
        'holds berth and berth-shim (default: the directory of this executable)',
      )
      .option('--cni-bin-dir <dir>', "the host's plugin dir, mounted (default /host/opt/cni/bin)")
      .option('--cni-conf-dir <dir>', "the host's network config dir, mounted (default /host/etc/cni/net.d)")
      .option('--conflist <file>', 'network config to install there, after the plugins (default: none)'),
  ).action(async (o: import('./node-agent').NodeAgentCliOptions) => {
    const { runNodeAgent } = require('./node-agent') as typeof import('./node-agent');
    setExit(await runNodeAgent(o, io.err));
  });
  const leases = where(
    program.command('leases').description('list leases: network, IP, container, ifname, pod, age'),
  )
    .option('--network <name>', 'only this network')
    .option('--json', 'JSON instead of a table')
    .action(async (o: import('./leases').LeaseCliOptions) => {
      const { runLeasesList } = require('./leases') as typeof import('./leases');
      setExit(await runLeasesList(o, io));
    });
  // `berth leases list` as `berth leases` (beside show and release, where operators look for it).
  where(leases.command('list').description('the same as `berth leases`'))
    .option('--network <name>', 'only this network')
    .option('--json', 'JSON instead of a table')
    .action(async (_o: unknown, cmd: Command) => {
      const { runLeasesList } = require('./leases') as typeof import('./leases');
      setExit(await runLeasesList(cmd.optsWithGlobals(), io));
    });
  where(leases.command('show <ip|container>').description("one lease (or a container's leases) in detail"))
    .option('--network <name>', 'only this network')
    .option('--json', 'JSON output')
    .action(async (q: string, _o: unknown, cmd: Command) => {
      const { runLeasesShow } = require('./leases') as typeof import('./leases');
      // --socket/--data-dir may land on `leases` itself: take the merged view.
      setExit(await runLeasesShow(q, cmd.optsWithGlobals(), io));
    });
  where(leases.command('release <ip>').description('release one lease by hand (asks first unless --yes)'))
    .option('--network <name>', 'the network holding it (needed when several do)')
    .option('-y, --yes', 'do not ask for confirmation')
    .option('--json', 'JSON output')
    .action(async (ip: string, _o: unknown, cmd: Command) => {
      const { runLeasesRelease, terminalAsk } = require('./leases') as typeof import('./leases');
      const ask = terminalAsk();
      setExit(await runLeasesRelease(ip, { ...cmd.optsWithGlobals(), ...(ask ? { ask } : {}) }, io));
    });
  where(
    program
      .command('gc')
      .description('release the leases of a network whose attachment is not in the valid list'),
  )
    .requiredOption('--network <name>', 'the network')
    .requiredOption(
      '--valid <file>',
      'valid attachments: JSON [{containerID, ifname}] or "<id> <ifname>" lines; - for stdin',
    )
    .option('--dry-run', 'only list what would be released')
    .option('--all', 'with an empty valid list: release every lease of the network')
    .option('--json', 'JSON output')
    .action(async (o: import('./gc').GcCliOptions) => {
      const { runGc } = require('./gc') as typeof import('./gc');
      setExit(await runGc(o, io));
    });
  program
    .command('doctor')
    .description(
      'check the node: network configs a runtime here cannot read (cniVersion), missing loopback or plugins',
    )
    .option('--conf-dir <dir>', 'network configs (default /etc/cni/net.d)')
    .option('--bin-dir <dir>', 'plugin dir (default /opt/cni/bin)')
    .option(
      '--runtime <name=version>',
      'containerd|cri-o|podman=VERSION instead of detecting (repeatable)',
      collect,
      [],
    )
    .option('--json', 'JSON output')
    .action(async (o: import('./doctor').DoctorCliOptions) => {
      const { runDoctor } = require('./doctor') as typeof import('./doctor');
      setExit(await runDoctor(o, io));
    });
  where(program.command('status').description('is berthd up, and leases and free addresses per network'))
    .option('--network <name>', 'only this network')
    .option('--json', 'JSON output')
    .action(async (o: import('./status').StatusCliOptions) => {
      const { runStatus } = require('./status') as typeof import('./status');
      setExit(await runStatus(o, io));
    });
  const cluster = program.command('cluster').description('cluster networks: state shared between nodes');
  const clusterCmd = (
    name: string,
    description: string,
    run: (o: import('./cluster').ClusterCliOptions) => Promise<number>,
  ): void => {
    cluster
      .command(name)
      .description(description)
      .option('--socket <path>', 'berthd socket (default /run/berth/berthd.sock)')
      .option('--json', 'JSON output')
      .action(async (o: import('./cluster').ClusterCliOptions) => setExit(await run(o)));
  };
  clusterCmd(
    'status',
    "nodes, blocks per node, this node's free/used addresses, etcd health, last contact",
    (o) => (require('./cluster') as typeof import('./cluster')).runClusterStatus(o, io),
  );
  clusterCmd(
    'check',
    'like calicoctl ipam check: overlaps, blocks outside pools, absent nodes, local vs etcd',
    (o) => (require('./cluster') as typeof import('./cluster')).runClusterCheck(o, io),
  );
  const node = program.command('node').description('this node, or another, in the cluster');
  node
    .command('forget <node>')
    .description("free a dead node's blocks (refused until it has been absent past its ownership horizon)")
    .option('--socket <path>', 'berthd socket (default /run/berth/berthd.sock)')
    .option('--force', 'accept the risk of duplicate addresses: do not wait for the horizon')
    .option('--json', 'JSON output')
    .action(async (name: string, o: import('./cluster').ClusterCliOptions & { force?: boolean }) => {
      const { runNodeForget } = require('./cluster') as typeof import('./cluster');
      setExit(await runNodeForget(name, o, io));
    });
  for (const [name, description] of [
    ['leave', 'this node leaves the cluster: releases its (empty) blocks and its identity'],
    ['rejoin', "after a forget, once this boot's pods are drained: register again"],
  ] as const) {
    node
      .command(name)
      .description(description)
      .option('--socket <path>', 'berthd socket (default /run/berth/berthd.sock)')
      .option('--json', 'JSON output')
      .action(async (o: import('./cluster').ClusterCliOptions) => {
        const { runNodeSelf } = require('./cluster') as typeof import('./cluster');
        setExit(await runNodeSelf(name, o, io));
      });
  }
  cluster
    .command('routes')
    .description("routes berthd keeps to other nodes' blocks (proto 190), and whether the kernel agrees")
    .option('--socket <path>', 'berthd socket (default /run/berth/berthd.sock)')
    .option('--json', 'JSON output')
    .action(async (o: import('./cluster-routes').ClusterRoutesCliOptions) => {
      const { runClusterRoutes } = require('./cluster-routes') as typeof import('./cluster-routes');
      setExit(await runClusterRoutes(o, io));
    });
}

/** berthd's options, shared by `berth daemon` and `berth node-agent`. */
function daemonOptions(cmd: Command): Command {
  return cmd
    .option(
      '--socket <path>',
      'where to listen (default /run/berth/berthd.sock; systemd may pass it via LISTEN_FDS)',
    )
    .option('--data-dir <dir>', 'where `GET /v1/leases` looks for networks (default /var/lib/cni/networks)')
    .option(
      '--state-dir <dir>',
      "berthd's own state: the data dirs it served, listed again after a restart (default: the socket's directory)",
    )
    .option('--log-format <format>', 'text or json (JSON lines)', 'text')
    .option('--log-level <level>', 'debug, info, warn or error', 'info')
    .option(
      '--metrics-address <host:port>',
      'also serve /metrics and /v1/health over TCP there (off by default)',
    )
    .option(
      '--etcd-endpoints <urls>',
      'cluster IPAM: etcd client URLs, comma-separated (makes this a cluster node)',
    )
    .option('--etcd-cacert <file>', 'CA bundle for https etcd endpoints')
    .option('--etcd-cert <file>', 'client certificate for etcd')
    .option('--etcd-key <file>', 'client key for etcd')
    .option('--etcd-user <name>', 'etcd user (password from $BERTH_ETCD_PASSWORD)')
    .option('--etcd-prefix <prefix>', "root of berth's keys in etcd (default /berth/v1)")
    .option('--node-name <name>', 'this node in the cluster (default: hostname)')
    .option(
      '--underlay-address <ip>',
      "where other nodes route this node's blocks, one per family (repeatable; default: detected)",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option(
      '--node-id-file <file>',
      "holds this machine's node uid, created once (default /var/lib/berth/node-id)",
    )
    .option('--node-lease-ttl <duration>', 'liveness lease TTL (default 15s)')
    .option('--ownership-horizon <duration>', 'without etcd for this long, stop allocating (default 1h)')
    .option('--claim-timeout <duration>', 'longest an ADD waits for a block claim (default 5s)')
    .option('--block-release-after <duration>', 'release blocks empty for this long (default 5m)')
    .option('--reserve-window <duration>', 'how long the largest ADD burst sizes the reserve (default 1m)')
    .option(
      '--forget-margin <duration>',
      'clock-skew margin before `berth node forget` is accepted (default 30s)',
    )
    .option(
      '--run-dir <dir>',
      "berth-bridge's run dir for plugin calls (default $BERTH_RUN_DIR or /run/berth)",
    )
    .option(
      '--nft-table <name>',
      "berth-bridge's nftables table for plugin calls (default $BERTH_NFT_TABLE or berth)",
    )
    .option(
      '--call-timeout <duration>',
      'deadline of one plugin call; delegates are killed then (default 120s)',
    )
    .option('--no-plugins', 'do not serve plugin calls (/v1/cni answers 421: the shim runs them standalone)')
    .option(
      '--host-root <dir>',
      "berthd runs in a container: the host's / as seen from it; calls whose state it does not share run on the host (node-agent: /proc/1/root)",
    );
}
