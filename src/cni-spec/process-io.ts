// The entry adapter: the only code in this room that touches the real process (env, stdin, stdout, exit).
import { readFileSync } from 'node:fs';
import { CniError, ErrorCode } from './errors';
import { type PluginAbout, type PluginIo, type ProcessBinding, reportFailure } from './dispatch';
import { COMMANDS } from './request';

/** Reads stdin, runs one invocation through `run`, then exits with its code once output is flushed. */
export function runOnProcess(run: (io: PluginIo) => Promise<number>, about: PluginAbout): void {
  const out: Pick<PluginIo, 'stdout' | 'stderr'> = {
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
  };
  const command = process.env.CNI_COMMAND ?? '';
  readStdin(needsStdin(command))
    .then(
      (stdin) => run({ env: process.env, stdin, ...out }),
      (err: unknown) =>
        reportFailure(out, {
          about,
          command,
          err: new CniError(ErrorCode.IoFailure, `cannot read stdin: ${(err as Error).message}`, undefined, {
            cause: err,
          }),
        }),
    )
    .then(
      (code) => exitAfterFlush(code),
      (err: unknown) => exitAfterFlush(reportFailure(out, { about, command, err })),
    );
}

// VERSION answers whatever stdin holds (even a terminal), and a bad command fails before stdin matters.
function needsStdin(command: string): boolean {
  return command !== 'VERSION' && (COMMANDS as readonly string[]).includes(command);
}

async function readStdin(needed: boolean): Promise<string> {
  if (!needed) return '';
  try {
    return readFileSync(0, 'utf8');
  } catch (err) {
    // A non-blocking stdin (inherited from some parents) cannot be read synchronously.
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }
}

// A plugin runs once and must end: handles left open (sockets, timers) must not keep it alive once the
// answer is out. The empty writes call back after everything queued before them is flushed.
function exitAfterFlush(code: number): void {
  process.exitCode = code;
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

// dispatch.ts restates this module's shape (to stay free of Node's types); this keeps the two in step.
({ runOnProcess }) satisfies ProcessBinding;
