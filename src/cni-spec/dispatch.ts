// Maps a CNI command to a plugin's handler and renders the outcome: a result or one error object on stdout.
import { toVersion } from './convert';
import { CniError, ErrorCode } from './errors';
import {
  type CancelSignal,
  type Command,
  type Invocation,
  type Request,
  type RequestCommand,
  parseCommand,
  parseRequest,
} from './request';
import type { Result } from './types/result';
import { SUPPORTED_VERSIONS, versionInfo } from './versions';

/** The process as the dispatcher sees it; tests pass plain objects and string buffers. */
export interface PluginIo {
  env: Readonly<Record<string, string | undefined>>;
  stdin: string;
  stdout(s: string): void;
  stderr(s: string): void;
  /** Cancels the request (berthd: caller gone, deadline); handed to the handler as `Request.signal`. */
  signal?: CancelSignal;
  /** Handed to the handler as `Request.madeNew`. */
  madeNew?: () => void;
}

/** A plugin is a table of handlers; a command without one fails with a clear error, never succeeds silently. */
export interface PluginHandlers {
  add?(req: Request): Promise<Result>;
  del?(req: Request): Promise<void>;
  check?(req: Request): Promise<void>;
  gc?(req: Request): Promise<void>;
  status?(req: Request): Promise<void>;
}

export interface PluginAbout {
  /** The executable's name, used in messages and logs. */
  name: string;
}

/** Code for a command the plugin has no handler for (plugin-specific range, >= 100). */
export const NOT_IMPLEMENTED_CODE = 100;

const HANDLER_OF = {
  ADD: 'add',
  DEL: 'del',
  CHECK: 'check',
  GC: 'gc',
  STATUS: 'status',
} as const satisfies Record<RequestCommand, keyof PluginHandlers>;

/** Runs one invocation and returns the exit code; all output goes through `io`. */
export async function dispatch(io: PluginIo, handlers: PluginHandlers, about: PluginAbout): Promise<number> {
  const rawCommand = io.env.CNI_COMMAND ?? '';
  let cniVersion: string | undefined;
  try {
    if (rawCommand === '') {
      // Someone ran the program by hand: say what it is and exit 0, as skel's plugins do (nothing on stdout).
      io.stderr(`${about.name}: a CNI plugin; CNI spec versions ${SUPPORTED_VERSIONS.join(', ')}\n`);
      return 0;
    }
    const command: Command = parseCommand(io.env);
    if (command === 'VERSION') {
      io.stdout(`${JSON.stringify(versionInfo())}\n`);
      return 0;
    }
    const request = parseRequest(io);
    request.log = (line) => io.stderr(`${about.name}: ${line}\n`);
    request.stderr = (text) => io.stderr(text);
    if (request.ignoredPrevResult !== undefined)
      request.log(`DEL without prevResult, which cannot be read: ${request.ignoredPrevResult}`);
    if (io.signal !== undefined) request.signal = io.signal;
    if (io.madeNew !== undefined) request.madeNew = io.madeNew;
    cniVersion = request.cniVersion;
    const result = await runHandler(handlers, request, about);
    if (result !== undefined) io.stdout(`${JSON.stringify(toVersion(result, request.cniVersion))}\n`);
    return 0;
  } catch (err) {
    return reportFailure(io, { about, command: rawCommand, cniVersion, err });
  }
}

async function runHandler(
  handlers: PluginHandlers,
  req: Request,
  about: PluginAbout,
): Promise<Result | undefined> {
  const key = HANDLER_OF[req.command];
  if (handlers[key] === undefined) {
    throw new CniError(NOT_IMPLEMENTED_CODE, `${about.name}: ${req.command} is not implemented yet`);
  }
  if (key !== 'add') {
    await handlers[key]?.(req);
    return undefined;
  }
  const result = await handlers.add?.(req);
  if (typeof result !== 'object' || result === null) {
    throw new CniError(ErrorCode.Internal, `${about.name}: ADD produced no result`);
  }
  return result;
}

/** What one invocation printed and its exit code, as the standalone program would have. */
export interface CallOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs one invocation in memory through `dispatch`, the same code the executables run, so stdout, stderr and
 * the exit code are those of the standalone program. `onStderr` sees stderr as it is written (berthd copies
 * it to its log).
 */
export async function dispatchCall(
  call: Invocation & { signal?: CancelSignal; onStderr?: (s: string) => void; madeNew?: () => void },
  handlers: PluginHandlers,
  about: PluginAbout,
): Promise<CallOutput> {
  let stdout = '';
  let stderr = '';
  const io: PluginIo = {
    env: call.env,
    stdin: call.stdin,
    stdout: (s) => void (stdout += s),
    stderr: (s) => {
      stderr += s;
      call.onStderr?.(s);
    },
  };
  if (call.signal !== undefined) io.signal = call.signal;
  if (call.madeNew !== undefined) io.madeNew = call.madeNew;
  let code: number;
  try {
    code = await dispatch(io, handlers, about);
  } catch (err) {
    code = reportFailure(io, { about, command: call.env.CNI_COMMAND ?? '', err });
  }
  return { code, stdout, stderr };
}

export interface FailureReport {
  about: PluginAbout;
  command: string;
  /** The config's version, when it was read; echoed in the error object as the spec shows it. */
  cniVersion?: string | undefined;
  err: unknown;
}

/** A failure rendered as `reportFailure` does, as the output of a call that was not run. */
export function failureOutput(report: FailureReport): CallOutput {
  let stdout = '';
  let stderr = '';
  const code = reportFailure(
    { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t) },
    report,
  );
  return { code, stdout, stderr };
}

/**
 * Renders a failure once: the error object as the only stdout output, the story (with any stack) on
 * stderr. Anything that is not a CniError becomes code 999 naming what was thrown.
 */
export function reportFailure(io: Pick<PluginIo, 'stdout' | 'stderr'>, report: FailureReport): number {
  const { about, command, err } = report;
  const cniErr = asCniError(err, about, command);
  const json = JSON.stringify(cniErr.toJSON(report.cniVersion));
  const details = cniErr.details === undefined ? '' : ` (${cniErr.details})`;
  io.stderr(
    `${about.name}: ${command === '' ? 'no command' : command} failed: code ${cniErr.code}: ${cniErr.message}${details}\n`,
  );
  const cause = err instanceof CniError ? err.cause : err;
  if (cause instanceof Error && cause.stack !== undefined && !saidInTheMessage(cause, cniErr))
    io.stderr(`${cause.stack}\n`);
  io.stdout(`${json}\n`);
  return 1;
}

/**
 * A failed system call that the error's message already quotes (EACCES, ENOSPC, EBUSY…: the machine's
 * state): its stack adds only berth's own frames to an operator's log. Unexpected failures (999) keep
 * theirs, and so do the errnos that mean a bug in berth (a bad descriptor or argument).
 */
function saidInTheMessage(cause: Error, cniErr: CniError): boolean {
  const { syscall, code } = cause as { syscall?: unknown; code?: unknown };
  return (
    cniErr.code !== ErrorCode.Internal &&
    typeof syscall === 'string' &&
    typeof code === 'string' &&
    !BUG_ERRNOS.has(code) &&
    cniErr.message.includes(cause.message)
  );
}

const BUG_ERRNOS = new Set(['EBADF', 'EINVAL', 'EFAULT', 'ENOTSOCK']);

/** The CniError a plugin reports for `err`: itself, or code 999 naming an unexpected failure. */
export function asCniError(err: unknown, about: PluginAbout, command: string): CniError {
  return err instanceof CniError ? err : unexpected(err, about, command);
}

function unexpected(err: unknown, about: PluginAbout, command: string): CniError {
  const what = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return new CniError(
    ErrorCode.Internal,
    `${about.name} ${command}: unexpected failure: ${what}`,
    undefined,
    {
      cause: err,
    },
  );
}

// Node's CommonJS `require`, declared here rather than through @types/node: this room compiles without
// Node's types, and only runPlugin (the one binding to the real process) needs it.
declare const require: (id: './process-io') => ProcessBinding;

/** What ./process-io exports, restated so that this module does not pull Node's types in. */
export interface ProcessBinding {
  runOnProcess(run: (io: PluginIo) => Promise<number>, about: PluginAbout): void;
}

/** Binds `dispatch` to the real process: env, stdin, stdout, stderr, exit code. */
export function runPlugin(handlers: PluginHandlers, about: PluginAbout): void {
  require('./process-io').runOnProcess((io) => dispatch(io, handlers, about), about);
}
