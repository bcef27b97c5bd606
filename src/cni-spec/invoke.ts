// Runs another CNI plugin (an IPAM delegate, or any plugin for a runtime): find it on CNI_PATH, exec, read its answer.
import { spawn } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseResult } from './convert';
import { CniError, ErrorCode } from './errors';
import type { CancelSignal, Request, RequestCommand } from './request';
import type { Result } from './types/result';

/** The first executable file named `type` in `dirs` (CNI_PATH order); a clear error naming the dirs if none. */
export function findPlugin(type: string, dirs: readonly string[]): string {
  if (type === '' || type.includes('/') || type.includes('\\') || type === '.' || type === '..') {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid plugin type ${JSON.stringify(type)}`);
  }
  for (const dir of dirs) {
    // CNI_PATH=. gives a bare name, which spawn would look up in PATH: the file checked is the one run.
    const joined = join(dir, type);
    const candidate = joined.includes('/') ? joined : `./${joined}`;
    if (isExecutableFile(candidate)) return candidate;
  }
  throw new CniError(
    ErrorCode.InvalidNetworkConfig,
    `failed to find plugin "${type}" in path [${dirs.join(' ')}]`,
    dirs.length === 0 ? 'CNI_PATH is empty' : `searched ${dirs.map((d) => join(d, type)).join(', ')}`,
  );
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export interface ExecPluginOptions {
  /** Absolute path of the plugin executable (see findPlugin). */
  path: string;
  /** Set as CNI_COMMAND, over whatever `env` says. */
  command: string;
  /** The plugin's whole environment; undefined values are left out. */
  env: Readonly<Record<string, string | undefined>>;
  stdin: string;
  /** Receives the plugin's stderr as it arrives (libcni copies it to its own); dropped when absent. */
  stderr?: (text: string) => void;
  /** Kills the plugin (SIGKILL) when aborted: the caller gave up or its deadline passed. */
  signal?: CancelSignal;
}

export interface PluginOutput {
  stdout: string;
  stderr: string;
}

/** Retries of a spawn that hit "text file busy" (the binary being replaced), like libcni's. */
const TEXT_FILE_BUSY_RETRIES = 5;
const TEXT_FILE_BUSY_DELAY_MS = 200;

/**
 * Executes a plugin with the given environment and stdin, no shell. On a non-zero exit throws the
 * plugin's own CniError (code, msg and details kept); with nothing on stdout the message quotes its stderr.
 */
export async function execPlugin(opts: ExecPluginOptions): Promise<PluginOutput> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await execOnce(opts);
    } catch (err) {
      const busy = (err as NodeJS.ErrnoException).code === 'ETXTBSY';
      if (!busy || attempt >= TEXT_FILE_BUSY_RETRIES) throw err;
      await new Promise((resolve) => setTimeout(resolve, TEXT_FILE_BUSY_DELAY_MS));
    }
  }
}

function childEnv(opts: ExecPluginOptions): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.env)) if (v !== undefined) env[k] = v;
  env.CNI_COMMAND = opts.command;
  return env;
}

function execOnce(opts: ExecPluginOptions): Promise<PluginOutput> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted === true) {
      reject(
        new CniError(ErrorCode.TryAgainLater, `not running plugin ${opts.path}: the call was cancelled`),
      );
      return;
    }
    const child = spawn(opts.path, [], { env: childEnv(opts), stdio: ['pipe', 'pipe', 'pipe'] });
    // Cancelled: done once the plugin itself is gone. Its own children may still hold the pipes (a script's
    // `sleep`); waiting for 'close' would wait for them, past the deadline.
    const cancelled = (how: string): void => {
      child.stdout.destroy();
      child.stderr.destroy();
      reject(
        new CniError(
          ErrorCode.TryAgainLater,
          `plugin ${opts.path} was killed: the call was cancelled (its deadline passed, or its caller left)`,
          `${opts.path}: ${how}`,
        ),
      );
    };
    // A plugin that has exited already while a child of its own holds its output open (`cmd &` in a script)
    // is not there to kill, and no 'exit' follows: the call ends here, or it would wait for that child.
    const kill = (): void => {
      if (child.exitCode !== null || child.signalCode !== null)
        cancelled(`exited (${child.exitCode ?? child.signalCode}), its output still held open by a child`);
      else child.kill('SIGKILL');
    };
    opts.signal?.addEventListener('abort', kill, { once: true });
    child.once('close', () => opts.signal?.removeEventListener('abort', kill));
    child.once('exit', (_code, signal) => {
      if (opts.signal?.aborted === true) cancelled(`killed by ${signal ?? 'SIGKILL'}`);
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    // Decoded as a stream, so a character split across chunks reaches the sink whole.
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr.push(Buffer.from(chunk, 'utf8'));
      opts.stderr?.(chunk);
    });
    // A plugin may exit without reading stdin; the broken pipe is not the failure worth reporting.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.stdin);
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ETXTBSY') return reject(err);
      reject(
        new CniError(ErrorCode.Internal, `cannot run plugin ${opts.path}: ${err.message}`, undefined, {
          cause: err,
        }),
      );
    });
    child.on('close', (code, signal) => {
      const out = {
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      };
      if (code === 0) return resolve(out);
      reject(pluginFailure({ path: opts.path, code, signal, ...out }));
    });
  });
}

interface FailedRun extends PluginOutput {
  path: string;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** libcni's reading of a failed plugin: its error object if stdout holds one, else its words quoted. */
function pluginFailure(run: FailedRun): CniError {
  const how = run.signal !== null ? `killed by ${run.signal}` : `exit status ${run.code}`;
  const details = `${run.path}: ${how}`;
  const out = run.stdout.trim();
  if (out === '') {
    const errText = run.stderr.trim();
    const msg =
      errText === ''
        ? 'netplugin failed with no error message'
        : `netplugin failed: ${JSON.stringify(errText)}`;
    return new CniError(ErrorCode.Internal, msg, details);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(out);
  } catch {
    parsed = undefined;
  }
  return (
    CniError.fromJson(parsed) ??
    new CniError(ErrorCode.Internal, `netplugin failed: ${JSON.stringify(out)}`, details)
  );
}

export interface DelegateOptions {
  /** The delegate's `type`, looked up on the request's CNI_PATH. */
  pluginType: string;
  command: RequestCommand;
  request: Request;
  /** Changes to the request's environment; an undefined value removes the variable. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Replaces the stdin forwarded (by default the request's own bytes, verbatim). */
  stdin?: string;
}

/**
 * Runs a delegated plugin (typically IPAM) with the request's environment and stdin. ADD returns its
 * result in the internal model (read in the config's version if it names none); other commands
 * return undefined. The delegate's CniError is thrown as it printed it.
 */
export async function delegate(opts: DelegateOptions): Promise<Result | undefined> {
  const { request } = opts;
  const path = findPlugin(opts.pluginType, request.path);
  const { stdout } = await execPlugin({
    path,
    command: opts.command,
    env: { ...request.env, ...opts.env },
    stdin: opts.stdin ?? request.stdin,
    stderr: request.stderr,
    ...(request.signal !== undefined ? { signal: request.signal } : {}),
  });
  if (opts.command !== 'ADD') return undefined;
  if (stdout.trim() === '') {
    throw new CniError(ErrorCode.Internal, `plugin ${opts.pluginType} printed no result for ADD`, path);
  }
  return parseResult(stdout, request.cniVersion, `result of ${opts.pluginType}`);
}
