// Executes plugin binaries for the runtime with libcni's RawExec semantics: stdin in, stdout parsed,
// stderr passed through on success and used as the message when a failed plugin printed nothing.
import { spawn } from 'node:child_process';
import { access, constants, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CniError, ErrorCode } from '../../cni-spec/errors';
import type { PluginRunner } from './network-list';

export function processRunner(opts: { stderr?: (chunk: string) => void } = {}): PluginRunner {
  return {
    find: findInPath,
    run: async ({ path, env, stdin }) => {
      const { code, signal, stdout, stderr } = await runOnce(path, env, stdin);
      if (code === 0) {
        if (stderr !== '') opts.stderr?.(stderr);
        return stdout;
      }
      throw pluginError({ code, signal, stdout, stderr });
    },
  };
}

async function findInPath(type: string, dirs: readonly string[]): Promise<string> {
  if (dirs.length === 0) throw new CniError(ErrorCode.InvalidEnvironmentVariables, 'no paths provided (CNI_PATH is empty)');
  for (const dir of dirs) {
    const candidate = join(dir, type);
    try {
      if ((await stat(candidate)).isFile()) {
        await access(candidate, constants.X_OK);
        return candidate;
      }
    } catch {
      // not here or not executable: keep looking, like Go's FindInPath
    }
  }
  throw new CniError(ErrorCode.PluginNotAvailable, `failed to find plugin "${type}" in path [${dirs.join(' ')}]`);
}

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runOnce(path: string, env: Record<string, string>, stdin: string): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(path, [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) =>
      reject(new CniError(ErrorCode.PluginNotAvailable, `cannot execute ${path}: ${e.message}`, undefined, { cause: e })),
    );
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }),
    );
    // A plugin that exits before reading stdin closes the pipe: that is its answer, not ours to fail on.
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin);
  });
}

function pluginError(o: Outcome): CniError {
  const how = o.signal !== null ? `signal: ${o.signal}` : `exit status ${String(o.code)}`;
  if (o.stdout.trim() === '') {
    return o.stderr === ''
      ? new CniError(ErrorCode.Internal, `netplugin failed with no error message: ${how}`)
      : new CniError(ErrorCode.Internal, `netplugin failed: ${JSON.stringify(o.stderr)}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(o.stdout);
  } catch (e) {
    return new CniError(
      ErrorCode.Internal,
      `netplugin failed but error parsing its diagnostic message ${JSON.stringify(o.stdout)}: ${(e as Error).message}`,
    );
  }
  return (
    CniError.fromJson(parsed) ??
    new CniError(ErrorCode.Internal, `netplugin failed with an unexpected diagnostic message ${JSON.stringify(o.stdout)}`)
  );
}
