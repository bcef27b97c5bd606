// `berth demo`: the main job in one command — two throw-away pods on a bridge, their addresses, a ping
// between them, then everything removed again (also on failure or Ctrl-C). Root only: it creates namespaces.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { containerIdFor, runtimeFromEnv } from './exec';
import { confListFromBytes, type NetworkConfigList } from './runtime/conflist';
import { addNetworkList, delNetworkList, type Runtime } from './runtime/network-list';
import type { RuntimeConf } from './runtime/request-config';
import { runDir } from '../bridge/deps';
import { bridgeLockFile, networkLockFile } from '../bridge/lock';

const run = promisify(execFile);

export interface DemoOptions {
  /** Debian's reference bridge + host-local (/usr/lib/cni) instead of berth's plugins: same flow, for comparison. */
  reference: boolean;
  out(s: string): void;
  err(s: string): void;
}

interface Pod {
  name: string;
  netns: string;
  rt: RuntimeConf;
  added: boolean;
}

export async function runDemo(opts: DemoOptions): Promise<number> {
  if (process.getuid?.() !== 0) {
    opts.err('berth demo creates network namespaces and a bridge: run it as root\n');
    return 1;
  }
  const prefix = `bt${process.pid}d`;
  const bridge = `${prefix}br`;
  const network = `${prefix}-net`;
  const [bridgeType, ipamType, pluginDir] = opts.reference
    ? ['bridge', 'host-local', '/usr/lib/cni']
    : ['berth-bridge', 'berth-ipam', berthPluginDir()];

  // Ctrl-C (or a kill) aborts the running command and every step after it; the finally below cleans up.
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const tmp = await mkdtemp(join(tmpdir(), `${prefix}-`));
  const pods: Pod[] = ['a', 'b'].map((x) => {
    const netns = `/run/netns/${prefix}-${x}`;
    return {
      name: `${prefix}-${x}`,
      netns,
      added: false,
      rt: { containerId: containerIdFor(netns), netns, ifName: 'eth0', args: [], capabilityArgs: {} },
    };
  });
  const step = (what: string): void => {
    if (abort.signal.aborted) throw new Error('interrupted');
    opts.out(`$ ${what}\n`);
  };
  const sh = async (cmd: string, ...args: string[]): Promise<string> => {
    step(`${cmd} ${args.join(' ')}`);
    const { stdout } = await run(cmd, args, { signal: abort.signal });
    return stdout;
  };

  let code = 0;
  let chain: { runtime: Runtime; list: NetworkConfigList } | undefined;
  try {
    const subnet = await pickSubnet();
    const conflist = {
      cniVersion: '1.0.0',
      name: network,
      plugins: [
        {
          type: bridgeType,
          bridge,
          isGateway: true,
          ipMasq: false,
          ipam: { type: ipamType, dataDir: join(tmp, 'ipam'), ranges: [[{ subnet }]] },
        },
      ],
    };
    const confDir = join(tmp, 'net.d');
    await mkdir(confDir);
    const bytes = Buffer.from(JSON.stringify(conflist, null, 2));
    await writeFile(join(confDir, `${network}.conflist`), bytes);
    const list = confListFromBytes(bytes);
    // The same runtime `berth exec` uses, with a private result cache so the demo leaves nothing in /var/lib/cni.
    const runtime = runtimeFromEnv(
      { ...process.env, CNI_PATH: pluginDir },
      { stderr: opts.err },
      join(tmp, 'cache'),
    );
    chain = { runtime, list };
    opts.out(
      `# network ${network}: ${bridgeType} on bridge ${bridge}, ${ipamType} from ${subnet}, plugins in ${pluginDir}\n`,
    );

    const addresses: string[] = [];
    for (const pod of pods) {
      await sh('ip', 'netns', 'add', pod.name);
      step(`berth exec add ${network} ${pod.netns}`);
      pod.added = true; // from here on a DEL is owed, even if the ADD fails half way
      const result = await addNetworkList(runtime, list, pod.rt);
      const ip = ((result.ips ?? []) as { address: string }[])
        .map((i) => i.address)
        .find((a) => !a.includes(':'));
      if (ip === undefined) throw new Error(`ADD for ${pod.name} returned no IPv4 address`);
      addresses.push(ip.split('/')[0] as string);
      opts.out(`  -> ${ip}\n`);
    }
    for (const pod of pods) opts.out(await sh('ip', '-n', pod.name, '-br', 'addr', 'show', 'dev', 'eth0'));
    const [from, to] = pods as [Pod, Pod];
    opts.out(
      await sh('ip', 'netns', 'exec', from.name, 'ping', '-n', '-c', '3', '-W', '2', addresses[1] as string),
    );

    for (const pod of pods) {
      step(`berth exec del ${network} ${pod.netns}`);
      await delNetworkList(runtime, list, pod.rt);
      pod.added = false;
    }
    opts.out(`# ${from.name} reached ${to.name}; removing the namespaces and the bridge\n`);
  } catch (err) {
    code = 1;
    opts.err(`berth demo: ${abort.signal.aborted ? 'interrupted' : `failed: ${describeError(err)}`}\n`);
  } finally {
    await cleanup({
      pods,
      bridge,
      tmp,
      chain,
      lockFiles: opts.reference
        ? []
        : [networkLockFile(runDir(process.env), network), bridgeLockFile(runDir(process.env), bridge)],
      err: opts.err,
    });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return abort.signal.aborted ? 130 : code;
}

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const stderr = (err as { stderr?: unknown }).stderr;
    return typeof stderr === 'string' && stderr.trim() !== ''
      ? `${err.message.split('\n')[0]}: ${stderr.trim()}`
      : err.message;
  }
  return String(err);
}

/** Best effort, every step on its own: one failing removal must not keep the others from running. */
async function cleanup(c: {
  pods: Pod[];
  bridge: string;
  tmp: string;
  chain: { runtime: Runtime; list: NetworkConfigList } | undefined;
  /** berth-bridge's lock files of this throw-away network and bridge: nobody else uses them, so they can go. */
  lockFiles: string[];
  err(s: string): void;
}): Promise<void> {
  // The DEL releases what only the plugins know about (leases, nftables entries), so it goes first.
  for (const pod of c.pods.filter((p) => p.added)) {
    if (c.chain === undefined) break;
    await delNetworkList(c.chain.runtime, c.chain.list, pod.rt).catch((e: unknown) =>
      c.err(`cleanup: DEL ${pod.name}: ${describeError(e)}\n`),
    );
  }
  const quiet = (cmd: string, ...args: string[]): Promise<unknown> =>
    run(cmd, args).catch((e: unknown) => {
      // Absent already is the expected case after a successful run.
      if (
        !/Cannot find device|No such file|does not exist|Cannot open network namespace/i.test(
          describeError(e),
        )
      ) {
        c.err(`cleanup: ${cmd} ${args.join(' ')}: ${describeError(e)}\n`);
      }
    });
  for (const pod of c.pods) await quiet('ip', 'netns', 'del', pod.name);
  await quiet('ip', 'link', 'del', c.bridge);
  await rm(c.tmp, { recursive: true, force: true }).catch((e: unknown) =>
    c.err(`cleanup: rm ${c.tmp}: ${describeError(e)}\n`),
  );
  for (const file of c.lockFiles)
    await rm(file, { force: true }).catch((e: unknown) =>
      c.err(`cleanup: rm ${file}: ${describeError(e)}\n`),
    );
}

/** Where berth-bridge lives: the repo's bin/ launchers, or beside the single executable (out/). */
function berthPluginDir(): string {
  const candidates = [resolve(__dirname, '../../bin'), dirname(process.execPath)];
  return candidates.find((dir) => existsSync(join(dir, 'berth-bridge'))) ?? (candidates[0] as string);
}

/** A /24 of 198.18.0.0/15 no route on this host uses yet, starting from one derived from our pid. */
async function pickSubnet(): Promise<string> {
  const { stdout } = await run('ip', ['-j', '-4', 'route', 'show', 'table', 'all']);
  const used = new Set(
    (JSON.parse(stdout) as { dst?: string }[])
      .map((r) => /^198\.(18|19)\.(\d+)\./.exec(r.dst ?? ''))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => `${m[1]}.${m[2]}`),
  );
  for (let i = 0; i < 512; i++) {
    const n = (process.pid + i) % 512;
    const candidate = `${18 + (n >> 8)}.${n & 255}`;
    if (!used.has(candidate)) return `198.${candidate}.0/24`;
  }
  throw new Error('no free /24 left in 198.18.0.0/15');
}
