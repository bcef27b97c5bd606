// `berth node-agent`: what the node image runs (deploy/berth.yaml), the way flannel's and Calico's images
// do it: install the plugins into the host's CNI bin dir, then the network config into the host's conf dir,
// then run berthd in the foreground. The config goes last because a runtime calls the network ready as soon
// as its config is there: by then every plugin it names must be in place. On SIGTERM only berthd stops; the
// plugins and the config stay, so running pods keep working and their DEL still finds the plugins (the
// shims run berth standalone while no berthd answers).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  lstat,
  chmod,
  copyFile,
  open,
  readdir,
  readFile,
  rename,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { type DaemonCliOptions, daemonOptionsOf, runCheckedDaemon } from './daemon';
import { createLogger } from '../daemon/log';
import { pluginTypes } from './runtime/compat';

export interface NodeAgentCliOptions extends DaemonCliOptions {
  /** Holds `berth` and `berth-shim` (default: the directory of the running executable). */
  pluginsFrom?: string;
  cniBinDir?: string;
  cniConfDir?: string;
  /** The network config to install (a .conflist or .conf file); without it no config is written. */
  conflist?: string;
}

/** What lands in the CNI bin dir, in this order: berth first, since each shim execs the berth beside it. */
export const PLUGIN_FILES: readonly (readonly [source: string, target: string])[] = [
  ['berth', 'berth'],
  ['berth-shim', 'berth-bridge'],
  ['berth-shim', 'berth-ipam'],
];

export type InstallOutcome = 'installed' | 'unchanged';

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function sameFile(src: string, dest: string, mode: number): Promise<boolean> {
  const [a, b] = await Promise.all([stat(src), stat(dest).catch(() => undefined)]);
  if (b === undefined || !b.isFile() || b.size !== a.size || (b.mode & 0o7777) !== mode) return false;
  const [ha, hb] = await Promise.all([sha256(src), sha256(dest)]);
  return ha === hb;
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Puts `write(tmp)`'s file at dest by rename from a temp file in dest's directory: a runtime that execs
 * or reads dest at any moment sees the old file or the new one, never half of one. The temp name starts
 * with a dot and ends in neither .conf nor .conflist, so no runtime takes it for a plugin or a network.
 */
async function replaceAtomically(dest: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = join(dirname(dest), `.${basename(dest)}.new-${process.pid}-${Date.now()}`);
  try {
    await write(tmp);
    await fsyncPath(tmp);
    await rename(tmp, dest);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncPath(dirname(dest));
}

/** Copies src to dest (mode 0755) atomically, unless dest already has that content and mode. */
export async function installExecutable(src: string, dest: string): Promise<InstallOutcome> {
  if (await sameFile(src, dest, 0o755)) return 'unchanged';
  await replaceAtomically(dest, async (tmp) => {
    await copyFile(src, tmp);
    await chmod(tmp, 0o755);
  });
  return 'installed';
}

/** The config's bytes, refused unless they are a network config a runtime would load. */
export function checkNetworkConfig(file: string, text: string): void {
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file} is not JSON: ${(err as Error).message}`);
  }
  const c = config as { name?: unknown; plugins?: unknown; type?: unknown; cniVersion?: unknown };
  if (typeof config !== 'object' || config === null || Array.isArray(config))
    throw new Error(`${file} is not a JSON object`);
  if (typeof c.name !== 'string' || c.name === '') throw new Error(`${file} has no "name"`);
  if (typeof c.cniVersion !== 'string') throw new Error(`${file} has no "cniVersion"`);
  if (file.endsWith('.conflist')) {
    if (!Array.isArray(c.plugins) || c.plugins.length === 0)
      throw new Error(`${file} is a .conflist without a "plugins" list`);
  } else if (typeof c.type !== 'string') {
    throw new Error(`${file} has no "type" (a .conflist file holds a "plugins" list)`);
  }
}

export interface InstallPlan {
  pluginsFrom: string;
  cniBinDir: string;
  cniConfDir: string;
  conflist?: string;
}

/** Plugins, then the network config. Returns one line per file for the log. */
export async function installOnNode(p: InstallPlan): Promise<string[]> {
  // Read and checked before anything is installed: a broken ConfigMap stops here, the node unchanged.
  const config = p.conflist !== undefined ? await readFile(p.conflist, 'utf8') : undefined;
  if (p.conflist !== undefined) checkNetworkConfig(p.conflist, config!);
  const lines: string[] = [];
  for (const [source, target] of PLUGIN_FILES) {
    const dest = join(p.cniBinDir, target);
    lines.push(`${await installExecutable(join(p.pluginsFrom, source), dest)} ${dest}`);
  }
  if (p.conflist !== undefined) {
    // A plugin the config runs that the bin dir lacks (a portmap added to the ConfigMap on nodes without
    // it) fails every pod of a node that looks Ready: named in the log. Not refused: a symlink there may
    // point into the host's tree (not resolvable from this container), and a runtime may search other dirs.
    const missing: string[] = [];
    for (const t of new Set(pluginTypes(JSON.parse(config!) as Record<string, unknown>))) {
      try {
        await lstat(join(p.cniBinDir, t));
      } catch {
        missing.push(t);
      }
    }
    if (missing.length > 0)
      lines.push(
        `warning: ${p.conflist} runs ${missing.join(', ')}, which ${p.cniBinDir} does not hold: pods on this network fail unless the runtime finds it elsewhere`,
      );
    const dest = join(p.cniConfDir, basename(p.conflist));
    const first = await firstNetworkConfig(p.cniConfDir);
    if (first !== undefined && first < basename(p.conflist))
      lines.push(
        `warning: ${join(p.cniConfDir, first)} sorts before ${basename(p.conflist)}: runtimes use the first network config, so not berth's (remove or rename it)`,
      );
    const old = await readFile(dest, 'utf8').catch(() => undefined);
    if (old === config) {
      lines.push(`unchanged ${dest}`);
    } else {
      await replaceAtomically(dest, (tmp) => writeFile(tmp, config!, { mode: 0o644 }));
      lines.push(`installed ${dest}`);
    }
  }
  return lines;
}

/** The config file runtimes pick from a conf dir: the first `.conf`, `.conflist` or `.json` by name. */
async function firstNetworkConfig(dir: string): Promise<string | undefined> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => /\.(conf|conflist|json)$/.test(n)).sort()[0];
}

export async function runNodeAgent(o: NodeAgentCliOptions, err: (s: string) => void): Promise<number> {
  const plan: InstallPlan = {
    pluginsFrom: o.pluginsFrom ?? dirname(process.execPath),
    cniBinDir: o.cniBinDir ?? '/host/opt/cni/bin',
    cniConfDir: o.cniConfDir ?? '/host/etc/cni/net.d',
    ...(o.conflist !== undefined ? { conflist: o.conflist } : {}),
  };
  // berthd's flags are checked before anything is installed: a typo in the DaemonSet's args must not leave
  // a node that turns Ready (the config is there) while berthd cannot start.
  // The node image's container (hostPID: pid 1's root is the host's): a delegated IPAM plugin, and berth-ipam
  // state outside the mounted directories, stay on the host, where the fallback's state is.
  const options = daemonOptionsOf({ ...o, hostRoot: o.hostRoot ?? '/proc/1/root' }, err);
  if (typeof options === 'number') return options;
  // With --log-format json the agent's lines are JSON lines too: a collector parsing them keeps these.
  const json = createLogger({ format: 'json', level: 'info', write: err });
  const say = (level: 'info' | 'warn' | 'error', line: string): void => {
    if (options.logFormat === 'json') json.log(level, line, { component: 'node-agent' });
    else
      err(
        `berth node-agent: ${level === 'info' ? '' : `${level === 'warn' ? 'warning' : 'error'}: `}${line}\n`,
      );
  };
  try {
    for (const line of await installOnNode(plan))
      say(line.startsWith('warning: ') ? 'warn' : 'info', line.replace(/^warning: /, ''));
  } catch (e) {
    say('error', (e as Error).message);
    return 1;
  }
  return runCheckedDaemon(options, err);
}
