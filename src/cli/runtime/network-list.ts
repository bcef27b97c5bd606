// The runtime half of CNI for one network list (libcni's *NetworkList functions): which plugins run, in
// which order, with what, and what is cached — the contract `berth exec` shares with cnitool.
import { parseResult as readResult } from '../../cni-spec/convert';
import { CniError, ErrorCode, toCniError } from '../../cni-spec/errors';
import type { NetworkConfigList, PluginConf } from './conflist';
import type { PluginRequestInput, RuntimeCommand, RuntimeConf } from './request-config';
import { buildPluginConfig, buildPluginEnv, NO_ATTACHMENT } from './request-config';
import type { AttachmentKey } from './result-cache';
import {
  listCachedAttachments,
  readCachedResult,
  removeCacheEntry,
  validateAttachmentKey,
  writeCacheEntry,
} from './result-cache';
import { COMMAND_MIN_VERSION, versionAtLeast as atLeast } from '../../cni-spec/versions';

/** How plugins are found and executed; tests and the demo use the real one, on real executables. */
export interface PluginRunner {
  /** Absolute path of the executable named `type` in one of `dirs`, or a CniError naming the dirs searched. */
  find(type: string, dirs: readonly string[]): Promise<string>;
  /** Runs it; resolves to stdout on exit 0, rejects with the plugin's CniError (code and msg kept) otherwise. */
  run(exec: { path: string; env: Record<string, string>; stdin: string }): Promise<string>;
}

/** Converts a result object to another spec version (the cached result becomes the list's version). */
export type ResultConverter = (result: Record<string, unknown>, toVersion: string) => Record<string, unknown>;

export interface Runtime {
  /** CNI_PATH directories. */
  path: string[];
  /** Holds `results/` (libcni's CacheDir, default /var/lib/cni). */
  cacheDir: string;
  runner: PluginRunner;
  convertResult: ResultConverter;
  /** The environment every plugin inherits (the runtime's own, as libcni passes os.Environ()). */
  env: Record<string, string | undefined>;
  /** Where a GC reports the failures it continued past. */
  log?: (line: string) => void;
}

export interface GcArgs {
  /** undefined: the caller passed no list, so every cached attachment is stale and no key is sent. */
  validAttachments?: { containerID: string; ifname: string }[];
}

function keyOf(list: NetworkConfigList, rt: RuntimeConf): AttachmentKey {
  return { networkName: list.name, containerId: rt.containerId, ifName: rt.ifName };
}

function describe(plugin: PluginConf): string {
  return typeof plugin.name === 'string' && plugin.name !== ''
    ? `type="${plugin.type}" name="${plugin.name}"`
    : `type="${plugin.type}"`;
}

// Keeps the plugin's code (callers and tests branch on it) while saying which plugin and step failed.
function wrap(err: unknown, prefix: string): CniError {
  const e = toCniError(err);
  return new CniError(e.code, `${prefix}: ${e.message}`, e.details, { cause: err });
}

async function invoke(
  runtime: Runtime,
  command: RuntimeCommand,
  input: Omit<PluginRequestInput, 'command'>,
): Promise<string> {
  const path = await runtime.runner.find(input.plugin.type, runtime.path);
  const stdin = buildPluginConfig({ command, ...input });
  const env = buildPluginEnv({ base: runtime.env, command, rt: input.rt, path: runtime.path });
  return runtime.runner.run({ path, env, stdin });
}

/** ADD every plugin in order, each getting the previous result; stops at the first failure; caches the last. */
export async function addNetworkList(
  runtime: Runtime,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<Record<string, unknown>> {
  validateAttachmentKey(keyOf(list, rt));
  let result: Record<string, unknown> | undefined;
  for (const plugin of list.plugins) {
    try {
      const stdout = await invoke(runtime, 'ADD', { list, plugin, rt, prevResult: result });
      result = parseResult(stdout, list.cniVersion);
    } catch (err) {
      throw wrap(err, `plugin ${describe(plugin)} failed (add)`);
    }
  }
  const final = result as Record<string, unknown>;
  try {
    await writeCacheEntry(runtime.cacheDir, {
      ...keyOf(list, rt),
      netns: rt.netns,
      config: list.bytes,
      cniArgs: rt.args,
      capabilityArgs: rt.capabilityArgs,
      result: final,
    });
  } catch (err) {
    throw wrap(err, `failed to set network "${list.name}" cached result`);
  }
  return final;
}

/** libcni fixupResultVersion: a result without cniVersion is taken to be in the config's version. */
function parseResult(stdout: string, configVersion: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch (err) {
    throw new CniError(
      ErrorCode.DecodingFailure,
      `failed to unmarshal raw result: ${(err as Error).message}`,
      stdout.slice(0, 200),
    );
  }
  if (parsed === null) parsed = {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new CniError(ErrorCode.DecodingFailure, 'plugin result is not a JSON object', stdout.slice(0, 200));
  }
  const result = parsed as Record<string, unknown>;
  if (typeof result.cniVersion !== 'string' || result.cniVersion === '') result.cniVersion = configVersion;
  // Read as libcni decodes it (an unknown version, a field of the wrong type is an error), though passed on
  // and cached as the plugin wrote it: a result a runtime would refuse must not pass here and be cached for
  // the runtime's DEL to trip on.
  readResult(result, configVersion || '0.1.0');
  return result;
}

async function cachedPrevResult(
  runtime: Runtime,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<Record<string, unknown> | undefined> {
  const cached = await readCachedResult(runtime.cacheDir, keyOf(list, rt));
  if (cached === undefined) return undefined;
  try {
    return runtime.convertResult(cached, list.cniVersion);
  } catch (err) {
    throw wrap(err, `failed to convert cached result to config version "${list.cniVersion}"`);
  }
}

/** CHECK every plugin in order with the cached result; needs a >= 0.4.0 list; a no-op under disableCheck. */
export async function checkNetworkList(
  runtime: Runtime,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<void> {
  requireVersion(
    list,
    'CHECK',
    `configuration version "${list.cniVersion}" does not support the CHECK command`,
  );
  if (list.disableCheck) return;
  validateAttachmentKey(keyOf(list, rt));
  const prevResult = await cachedPrevResult(runtime, list, rt);
  for (const plugin of list.plugins) {
    try {
      await invoke(runtime, 'CHECK', { list, plugin, rt, prevResult });
    } catch (err) {
      throw wrap(err, `plugin ${describe(plugin)} failed (check)`);
    }
  }
}

/**
 * DEL every plugin in reverse order (a plugin undoes its work after the ones chained on it); stops at the
 * first failure and keeps the cache file so the DEL can be retried; removes it once all succeeded.
 */
export async function delNetworkList(
  runtime: Runtime,
  list: NetworkConfigList,
  rt: RuntimeConf,
): Promise<void> {
  validateAttachmentKey(keyOf(list, rt));
  // Cached prevResult on DEL arrived with 0.4.0; older lists never get one. A cached result that cannot be
  // read or converted is ignored and the DEL goes on without one, as libcni does (else the attachment could
  // never be deleted); the entry goes with the DEL's success, below.
  const prevResult = versionAtLeast(list, '0.4.0')
    ? await cachedPrevResult(runtime, list, rt).catch(() => undefined)
    : undefined;
  for (const plugin of [...list.plugins].reverse()) {
    try {
      await invoke(runtime, 'DEL', { list, plugin, rt, prevResult });
    } catch (err) {
      throw wrap(err, `plugin ${describe(plugin)} failed (delete)`);
    }
  }
  await removeCacheEntry(runtime.cacheDir, keyOf(list, rt));
}

/**
 * libcni GCNetworkList: (1) a normal DEL, with its cached netns and args, for every cached attachment of this
 * network that is not valid; (2) for >= 1.1.0 lists, GC to every plugin. Both phases go on past failures,
 * which are reported together at the end. A no-op under disableGC.
 */
export async function gcNetworkList(
  runtime: Runtime,
  list: NetworkConfigList,
  gc: GcArgs = {},
): Promise<void> {
  if (list.disableGC) return;
  const errors: CniError[] = [];
  const valid = new Set((gc.validAttachments ?? []).map((a) => `${a.containerID}\0${a.ifname}`));
  for (const cached of await listCachedAttachments(runtime.cacheDir)) {
    if (cached.networkName !== list.name || valid.has(`${cached.containerId}\0${cached.ifName}`)) continue;
    const rt: RuntimeConf = {
      containerId: cached.containerId,
      netns: cached.netns,
      ifName: cached.ifName,
      args: cached.cniArgs,
      capabilityArgs: cached.capabilityArgs,
    };
    try {
      await delNetworkList(runtime, list, rt);
    } catch (err) {
      errors.push(wrap(err, `failed to delete stale attachment ${rt.containerId} ${rt.ifName}`));
    }
  }
  if (versionAtLeast(list, COMMAND_MIN_VERSION.GC)) {
    for (const plugin of list.plugins) {
      try {
        await invoke(runtime, 'GC', {
          list,
          plugin,
          rt: NO_ATTACHMENT,
          validAttachments: gc.validAttachments,
        });
      } catch (err) {
        errors.push(wrap(err, `plugin ${describe(plugin)} failed (gc)`));
      }
    }
  }
  const [only] = errors;
  if (only !== undefined && errors.length === 1) throw only;
  if (errors.length > 1) {
    // Each failure once, in the error (libcni's errors.Join): logging them too printed them twice.
    throw new CniError(
      errors[0]?.code ?? ErrorCode.Internal,
      errors.map((e) => e.message).join('\n'),
      `${errors.length} failures`,
    );
  }
}

/** STATUS every plugin in order (>= 1.1.0 lists; older ones have no STATUS and count as ready). */
export async function statusNetworkList(runtime: Runtime, list: NetworkConfigList): Promise<void> {
  if (!versionAtLeast(list, COMMAND_MIN_VERSION.STATUS)) return;
  for (const plugin of list.plugins) {
    try {
      await invoke(runtime, 'STATUS', { list, plugin, rt: NO_ATTACHMENT });
    } catch (err) {
      // libcni returns the first failure as is, so the caller sees the plugin's own code (50/51).
      throw wrap(err, `plugin ${describe(plugin)} failed (status)`);
    }
  }
}

function versionAtLeast(list: NetworkConfigList, min: string): boolean {
  try {
    // No cniVersion is 0.1.0, as libcni's ParseVersion("") reads it.
    return atLeast(list.cniVersion === '' ? '0.1.0' : list.cniVersion, min);
  } catch (err) {
    throw new CniError(ErrorCode.IncompatibleCniVersion, (err as Error).message, undefined, { cause: err });
  }
}

function requireVersion(list: NetworkConfigList, command: 'CHECK', msg: string): void {
  if (!versionAtLeast(list, COMMAND_MIN_VERSION[command]))
    throw new CniError(ErrorCode.IncompatibleCniVersion, msg);
}
