// The entry adapter: the only code in this room that touches the real process (env, stdin, stdout, exit).
import { readSync } from 'node:fs';
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
  // Read to the end in place. A non-blocking stdin (inherited from some parents) answers EAGAIN while the
  // writer is behind: wait a little and read on, keeping what came before (readFileSync dropped it).
  const chunks: Buffer[] = [];
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      await new Promise((r) => setTimeout(r, 1));
      continue;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks).toString('utf8');
}

// A plugin runs once and must end: handles left open (sockets, timers) must not keep it alive once the
// answer is out. The empty writes call back after everything queued before them is flushed.
function exitAfterFlush(code: number): void {
  process.exitCode = code;
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

// dispatch.ts restates this module's shape (to stay free of Node's types); this keeps the two in step.
({ runOnProcess }) satisfies ProcessBinding;
