// `berth doctor`: gathers the facts (installed runtimes and their versions, network configs, plugin dir)
// and prints what runtime/compat.ts concludes. Exit 1 when anything is wrong, so scripts can use it.
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { execPlugin } from '../cni-spec/invoke';
import {
  diagnose,
  parseRuntimeVersion,
  pluginTypes,
  type InstalledRuntime,
  type NetworkConfigFile,
  type RuntimeName,
} from './runtime/compat';
import type { CliIo } from './leases';

export interface DoctorCliOptions {
  confDir?: string;
  binDir?: string;
  /** name=version pairs that replace detection (e.g. containerd=1.6.20), for tests and remote checks. */
  runtime?: string[];
  json?: boolean;
}

const commands: Record<RuntimeName, string> = { containerd: 'containerd', 'cri-o': 'crio', podman: 'podman' };

function versionOutput(cmd: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(cmd, ['--version'], { timeout: 5_000 }, (err, stdout) => resolve(err ? undefined : stdout));
  });
}

async function detectRuntimes(): Promise<InstalledRuntime[]> {
  const found: InstalledRuntime[] = [];
  for (const name of Object.keys(commands) as RuntimeName[]) {
    const out = await versionOutput(commands[name]);
    const version = out === undefined ? undefined : parseRuntimeVersion(name, out);
    if (version !== undefined) found.push({ name, version });
  }
  return found;
}

function parseRuntimeArg(s: string): InstalledRuntime {
  const [name, version] = s.split('=');
  const names = Object.keys(commands);
  if (name === undefined || version === undefined || !names.includes(name))
    throw new Error(`--runtime ${s}: expected NAME=VERSION with NAME one of ${names.join(', ')}`);
  return { name: name as RuntimeName, version };
}

async function readConfigs(dir: string): Promise<NetworkConfigFile[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const files = names.filter((n) => /\.(conf|conflist|json)$/.test(n));
  return Promise.all(
    files.map(async (file): Promise<NetworkConfigFile> => {
      try {
        const config = JSON.parse(await readFile(`${dir}/${file}`, 'utf8')) as unknown;
        if (typeof config !== 'object' || config === null || Array.isArray(config))
          return { file, error: 'not a JSON object' };
        return { file, config: config as Record<string, unknown> };
      } catch (err) {
        return { file, error: err instanceof Error ? err.message : String(err) };
      }
    }),
  );
}

/**
 * A plugin's answer to VERSION: its supportedVersions (undefined when it says nothing usable), or why it failed.
 * Run with a socket path no berthd listens on, so berth's shim runs its standalone fallback (`berth` beside it):
 * answered by a running berthd, a shim whose fallback is missing would pass until berthd stops.
 */
async function versionAnswerOf(path: string): Promise<{ versions?: string[]; failure?: string }> {
  let stdout: string;
  try {
    ({ stdout } = await execPlugin({
      path,
      command: 'VERSION',
      env: { PATH: process.env.PATH, BERTH_SOCKET: '/nonexistent/berth-doctor.sock' },
      stdin: '{"cniVersion":"1.0.0"}',
      signal: AbortSignal.timeout(5_000),
    }));
  } catch (err) {
    return { failure: err instanceof Error ? err.message : String(err) };
  }
  try {
    const v = (JSON.parse(stdout) as { supportedVersions?: unknown }).supportedVersions;
    return Array.isArray(v) && v.every((x) => typeof x === 'string') ? { versions: v } : {};
  } catch {
    return {};
  }
}

export async function runDoctor(o: DoctorCliOptions, io: CliIo): Promise<number> {
  const confDir = o.confDir ?? '/etc/cni/net.d';
  const binDir = o.binDir ?? '/opt/cni/bin';
  const runtimes =
    o.runtime !== undefined && o.runtime.length > 0 ? o.runtime.map(parseRuntimeArg) : await detectRuntimes();
  const plugins = await readdir(binDir).catch(() => [] as string[]);
  const configs = await readConfigs(confDir);
  const pluginVersions: Record<string, string[]> = {};
  const pluginFailures: Record<string, string> = {};
  const named = new Set(configs.flatMap((c) => (c.config !== undefined ? pluginTypes(c.config) : [])));
  for (const t of named) {
    if (!plugins.includes(t)) continue;
    const answer = await versionAnswerOf(`${binDir}/${t}`);
    if (answer.versions !== undefined) pluginVersions[t] = answer.versions;
    if (answer.failure !== undefined) pluginFailures[t] = answer.failure;
  }
  const findings = diagnose({ confDir, binDir, configs, plugins, runtimes, pluginVersions, pluginFailures });
  if (o.json === true) io.out(`${JSON.stringify({ confDir, binDir, runtimes, findings }, null, 2)}\n`);
  else for (const f of findings) io.out(`${f.level === 'warn' ? 'WARN' : 'ok  '} ${f.message}\n`);
  return findings.some((f) => f.level === 'warn') ? 1 : 0;
}
