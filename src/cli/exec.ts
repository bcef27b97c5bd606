// `berth exec add|check|del|gc|status <network> <netns>`: a runtime for people and tests with cnitool's
// exact contract (environment, container id, result cache), so either tool can undo the other's work.
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { shortContainerId } from '../cni-spec/identifiers';
import { execPlugin, findPlugin } from '../cni-spec/invoke';
import { loadNetworkConfList, type NetworkConfigList } from './runtime/conflist';
import type { GcArgs, PluginRunner, Runtime } from './runtime/network-list';
import {
  addNetworkList,
  checkNetworkList,
  delNetworkList,
  gcNetworkList,
  statusNetworkList,
} from './runtime/network-list';
import type { RuntimeConf } from './runtime/request-config';
import { DEFAULT_CACHE_DIR, listCachedAttachments } from './runtime/result-cache';
import { convertCachedResult } from './runtime/result-version';

export const EXEC_VERBS = ['add', 'check', 'del', 'gc', 'status'] as const;
export type ExecVerb = (typeof EXEC_VERBS)[number];

export interface ExecOptions {
  verb: ExecVerb;
  network: string;
  /** Path of the network namespace (made absolute; it also derives the container id). */
  netns: string;
  /** Overrides CNI_IFNAME. */
  ifname?: string;
  /** Overrides BERTH_CACHE_DIR (the directory holding `results/`). */
  cacheDir?: string;
  /** gc: `<containerID>/<ifname>` pairs still in use; without any, every cached attachment is stale. */
  valid?: string[];
}

export interface ExecIo {
  env: Record<string, string | undefined>;
  stdout(s: string): void;
  stderr(s: string): void;
}

/** cnitool's rule: "cnitool-" + the first 10 bytes of sha512(absolute netns path), hex. */
export function containerIdFor(netnsPath: string): string {
  return `cnitool-${createHash('sha512').update(resolve(netnsPath)).digest('hex').slice(0, 20)}`;
}

/** cnitool's strict CNI_ARGS: `K=V;K=V`, each pair exactly one `=` with both sides non-empty. */
export function parseCniArgs(s: string): [string, string][] {
  if (s === '') return [];
  return s.split(';').map((kv) => {
    const parts = kv.split('=');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new CniError(ErrorCode.InvalidEnvironmentVariables, `invalid CNI_ARGS pair "${kv}"`);
    }
    return [parts[0], parts[1]] as [string, string];
  });
}

function parseCapArgs(s: string | undefined): Record<string, unknown> {
  if (s === undefined || s === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(s);
  } catch (err) {
    throw new CniError(ErrorCode.DecodingFailure, `CAP_ARGS is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new CniError(ErrorCode.DecodingFailure, 'CAP_ARGS must be a JSON object');
  }
  return parsed as Record<string, unknown>;
}

function parseValid(pairs: string[] | undefined): GcArgs {
  if (pairs === undefined || pairs.length === 0) return {};
  return {
    validAttachments: pairs.map((p) => {
      const slash = p.lastIndexOf('/');
      if (slash <= 0 || slash === p.length - 1) {
        throw new CniError(
          ErrorCode.InvalidEnvironmentVariables,
          `--valid wants <containerID>/<ifname>, got "${p}"`,
        );
      }
      return { containerID: p.slice(0, slash), ifname: p.slice(slash + 1) };
    }),
  };
}

/**
 * A --valid id that is only the start of a cached attachment's id (`berth leases` prints 12 characters) names
 * no attachment: the one meant would be DELed as stale, its pod cut off. Refused, as `berth gc` refuses it
 * (libcni would go ahead).
 */
async function refuseShortIds(cacheDir: string, list: NetworkConfigList, gc: GcArgs): Promise<void> {
  const valid = gc.validAttachments ?? [];
  if (valid.length === 0 || list.disableGC) return;
  const cached = (await listCachedAttachments(cacheDir)).filter((c) => c.networkName === list.name);
  const short = shortContainerId(
    valid.map((v) => v.containerID),
    cached.map((c) => c.containerId),
  );
  if (short !== undefined) {
    const v = valid.find((a) => a.containerID === short.id)!;
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `--valid ${v.containerID}/${v.ifname} is only the start of ${short.whole}: give whole ids`,
    );
  }
}

/** Real executables through cni-spec/invoke: their stderr flows through to ours, as under libcni. */
const processRunner: PluginRunner = {
  find: async (type, dirs) => findPlugin(type, dirs),
  run: async ({ path, env, stdin }) =>
    (
      await execPlugin({
        path,
        command: env.CNI_COMMAND ?? '',
        env,
        stdin,
        stderr: (t) => void process.stderr.write(t),
      })
    ).stdout,
};

/** The runtime `berth exec` (and `berth demo`) uses: plugins from CNI_PATH, the cache under cacheDir. */
export function runtimeFromEnv(
  env: Record<string, string | undefined>,
  io: Pick<ExecIo, 'stderr'>,
  cacheDir?: string,
): Runtime {
  return {
    // Go's filepath.SplitList: an empty CNI_PATH is no directory at all.
    path: (env.CNI_PATH ?? '') === '' ? [] : (env.CNI_PATH as string).split(':'),
    cacheDir: cacheDir ?? (env.BERTH_CACHE_DIR || DEFAULT_CACHE_DIR),
    runner: processRunner,
    convertResult: convertCachedResult,
    env,
    log: (line) => io.stderr(`${line}\n`),
  };
}

/** Runs one verb; resolves to the exit code. Errors go to stderr as one line (cnitool prints err.Error()). */
export async function runExec(opts: ExecOptions, io: ExecIo): Promise<number> {
  const { verb, network, netns } = opts;
  try {
    const env = io.env;
    const list = await loadNetworkConfList(env.NETCONFPATH || '/etc/cni/net.d', network);
    const runtime = runtimeFromEnv(env, io, opts.cacheDir);
    const netnsPath = resolve(netns);
    const rt: RuntimeConf = {
      containerId: containerIdFor(netnsPath),
      netns: netnsPath,
      // cnitool: an exported but empty CNI_IFNAME stays empty (and then fails validation).
      ifName: opts.ifname ?? env.CNI_IFNAME ?? 'eth0',
      args: parseCniArgs(env.CNI_ARGS ?? ''),
      capabilityArgs: parseCapArgs(env.CAP_ARGS),
    };
    switch (verb) {
      case 'add': {
        const result = await addNetworkList(runtime, list, rt);
        io.stdout(`${JSON.stringify(result, null, 4)}\n`);
        break;
      }
      case 'check':
        await checkNetworkList(runtime, list, rt);
        break;
      case 'del':
        await delNetworkList(runtime, list, rt);
        break;
      case 'gc': {
        const gc = parseValid(opts.valid);
        await refuseShortIds(runtime.cacheDir, list, gc);
        await gcNetworkList(runtime, list, gc);
        break;
      }
      case 'status':
        await statusNetworkList(runtime, list);
        break;
    }
    return 0;
  } catch (err) {
    io.stderr(`${errorLine(err)}\n`);
    return 1;
  }
}

function errorLine(err: unknown): string {
  if (err instanceof CniError) return err.details ? `${err.message}; ${err.details}` : err.message;
  return err instanceof Error ? err.message : String(err);
}
