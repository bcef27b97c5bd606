// berthd's warm path: berth-bridge's and berth-ipam's handler tables run in this process through the same
// dispatcher the executables use, so a forwarded call prints the bytes the standalone program would. Many
// calls at once on one event loop; calls for one attachment in arrival order; each with a deadline.
import { posix } from 'node:path';
import { toVersion, parseResult } from '../cni-spec/convert';
import {
  type CallOutput,
  type PluginAbout,
  type PluginHandlers,
  asCniError,
  dispatchCall,
  failureOutput,
  reportFailure,
} from '../cni-spec/dispatch';
import { CniError, ErrorCode } from '../cni-spec/errors';
import { findPlugin } from '../cni-spec/invoke';
import { COMMANDS, MAX_CONFIG_DEPTH, type Request, nestedDeeperThan } from '../cni-spec/request';
import type { Result } from '../cni-spec/types/result';
import { type BridgeDeps, type IpamCall, execIpam, nftTable, runDir, systemKernel } from '../bridge/deps';
import { BRIDGE_ABOUT, bridgeHandlers } from '../bridge/handlers';
import type { CallTrace, Service } from '../ipam/daemon/service';
import { isNamespaceFile } from '../netlink/netns';
import { AttachmentQueue, attachmentOf } from './attachments';
import { type HostView, berthIpamNotShared } from './host-view';
import { type Logger, shortLogLine } from './log';
import type { Metrics } from './metrics';
import { type ForwardedCall, WARM_PLUGINS, type WarmPlugin } from './protocol';

export interface PluginHostOptions {
  service: Service;
  log: Logger;
  metrics: Metrics;
  /** Where berth-bridge's state lives; calls whose environment names another one are not served. */
  runDir: string;
  nftTable: string;
  /** The boot id file berthd read; calls naming another BERTH_BOOT_ID_FILE are not served. */
  bootIdFile: string;
  /** Each call's deadline: past it the call is cancelled and its delegated plugins killed. */
  deadlineMs: number;
  /**
   * Whether a delegated IPAM plugin (anything but berth-ipam) may run here (default true). Not in a
   * container (the node image's agent): its state (host-local's dataDir, say) would land in the
   * container's own files, beside the host's that standalone runs use; such calls get 421.
   */
  delegatedIpamHere?: boolean;
  /**
   * berthd in a container: the host's view of berth-ipam's state (src/daemon/host-view.ts). A call whose
   * dataDir or resolvConf the host does not share gets 421, so the standalone program on the host runs it
   * on the host's files, the same ones every fallback uses.
   */
  hostView?: HostView;
}

/** Default per-call deadline; a runtime gives a plugin about as long before it gives up. */
export const DEFAULT_CALL_DEADLINE_MS = 120_000;

const BERTH_IPAM_ABOUT = { name: 'berth-ipam' } as const;

/** A network config, undefined when it does not parse (dispatch says why). */
function configOf(stdin: string): unknown {
  try {
    return JSON.parse(stdin) as unknown;
  } catch {
    return undefined;
  }
}

/** The `ipam.type` of a network config, undefined when there is none. */
function ipamTypeOf(config: unknown): string | undefined {
  const t = (config as { ipam?: { type?: unknown } } | null | undefined)?.ipam?.type;
  return typeof t === 'string' ? t : undefined;
}

/** Calls seen since start, for `berth status` and /v1/status. */
export interface WarmStats {
  plugins: readonly string[];
  served: number;
  /** Served calls that ended with a CNI error (exit code 1). */
  errors: number;
  notServed: number;
  inFlight: number;
  deadlineMs: number;
  runDir: string;
  nftTable: string;
  /** The last call refused for naming another run dir, nft table or boot id file than berthd's. */
  settingsMismatch?: string;
}

/** Reasons for a 421 that are a difference of settings between the caller and berthd. */
const SETTINGS: ReadonlySet<string> = new Set(['run-dir', 'nft-table', 'boot-id-file']);

/** How often the log repeats that calls name other settings than berthd's (one kind of mismatch). */
const MISMATCH_WARN_MS = 10 * 60_000;

/**
 * A path whose meaning depends on the process that opens it: relative, or through /proc/self or /dev/fd (in
 * any spelling the kernel resolves the same: `//proc/./self/fd/5`).
 */
function namesTheCaller(path: string): boolean {
  return (
    !path.startsWith('/') ||
    /^\/(proc\/(self|thread-self)|dev\/(fd|stdin|stdout|stderr))(\/|$)/.test(posix.normalize(path))
  );
}
export class PluginHost {
  private readonly tables: Record<WarmPlugin, { handlers: PluginHandlers; about: { name: string } }>;
  private readonly attachments = new AttachmentQueue();
  private seq = 0;
  private served = 0;
  private errors = 0;
  private notServed = 0;
  private inFlight = 0;
  /** The last refusal for a difference of settings, and when (shown by `berth status` for 10 minutes). */
  private settingsMismatch: { text: string; at: number } | undefined;
  private readonly mismatchWarned = new Map<string, number>();
  /**
   * berthd in a container whose run dir is not the host's (a deployment without that mount): the attachment
   * records and locks of its calls and of the host's standalone ones would be two sets. Told once, at start.
   */
  private readonly runDirNotShared: string | undefined;

  constructor(private readonly o: PluginHostOptions) {
    const bridgeDeps: BridgeDeps = {
      runDir: o.runDir,
      nftTable: o.nftTable,
      kernel: systemKernel,
      ipam: (call) => (call.pluginType === 'berth-ipam' ? this.ipamInProcess(call) : execIpam(call)),
    };
    this.runDirNotShared = o.hostView?.notShared(o.runDir);
    // A standing condition (the host's calls may not even reach this socket): said at once, and for good.
    if (this.runDirNotShared !== undefined) {
      const text = `berthd's run dir ${this.runDirNotShared}: plugin calls run standalone`;
      this.settingsMismatch = { text, at: Infinity };
      o.log.log('warn', text, {});
    }
    this.tables = {
      'berth-bridge': { handlers: bridgeHandlers(bridgeDeps), about: BRIDGE_ABOUT },
      'berth-ipam': { handlers: this.ipamHandlers(), about: BERTH_IPAM_ABOUT },
    };
  }

  stats(): WarmStats {
    return {
      plugins: WARM_PLUGINS,
      served: this.served,
      errors: this.errors,
      notServed: this.notServed,
      inFlight: this.inFlight,
      deadlineMs: this.o.deadlineMs,
      runDir: this.o.runDir,
      nftTable: this.o.nftTable,
      ...(this.settingsMismatch !== undefined &&
      performance.now() - this.settingsMismatch.at < MISMATCH_WARN_MS
        ? { settingsMismatch: this.settingsMismatch.text }
        : {}),
    };
  }

  /**
   * Why this daemon must not serve the call (the shim then runs the standalone program), or undefined.
   * Settings that decide where state lives come from berthd's own configuration: a caller naming other
   * ones (tests with a private run dir or table) runs standalone, and no caller can point berthd elsewhere.
   */
  notServedReason(call: ForwardedCall): string | undefined {
    const reason = this.reasonOf(call);
    if (reason !== undefined) {
      const kind = reason.split(':')[0]!;
      this.countFallback(kind, call.plugin);
      if (SETTINGS.has(kind)) this.mismatch(kind, call.env);
    }
    return reason;
  }

  /**
   * A call the shim runs standalone, by why: the reasons above, or a request berthd could not read (too
   * large, malformed), which the shim also takes back to the standalone program.
   */
  countFallback(kind: string, plugin: unknown): void {
    this.notServed++;
    this.o.metrics.inc('berthd_plugin_fallbacks_total', 'Plugin calls not served here (421).', {
      plugin: (WARM_PLUGINS as readonly unknown[]).includes(plugin) ? (plugin as string) : 'other',
      reason: kind,
    });
  }

  /**
   * Calls that name another run dir, table or boot id file than berthd's all run standalone: on a node
   * whose plugins set none of them, berthd's own flag is wrong and the warm path serves nothing. Said in
   * the log (once per kind every 10 minutes) and by `berth status`, not only in a metric.
   */
  private mismatch(kind: string, env: Record<string, string>): void {
    // A run dir not the host's refuses every call: said at start (the constructor), and what matters.
    if (this.runDirNotShared !== undefined) return;
    const theirs =
      kind === 'run-dir'
        ? `run dir ${runDir(env)} (berthd's: ${this.o.runDir})`
        : kind === 'nft-table'
          ? `nft table ${nftTable(env)} (berthd's: ${this.o.nftTable})`
          : `boot id file ${env.BERTH_BOOT_ID_FILE} (berthd's: ${this.o.bootIdFile})`;
    const text = `plugin calls name ${theirs}: they run standalone`;
    const now = performance.now();
    this.settingsMismatch = { text, at: now };
    if (now - (this.mismatchWarned.get(kind) ?? -Infinity) < MISMATCH_WARN_MS) return;
    this.mismatchWarned.set(kind, now);
    this.o.log.log(
      'warn',
      `${text}; without BERTH_* settings in the runtime's environment, berthd's own flag is the one to fix`,
      {},
    );
  }

  private reasonOf(call: ForwardedCall): string | undefined {
    const env = call.env;
    if (!(WARM_PLUGINS as readonly string[]).includes(call.plugin))
      return `plugin: ${JSON.stringify(call.plugin)} is not served by berthd`;
    if (runDir(env) !== this.o.runDir) return `run-dir: the caller's BERTH_RUN_DIR is not berthd's`;
    if (this.runDirNotShared !== undefined) return `run-dir: berthd's run dir ${this.runDirNotShared}`;
    if (nftTable(env) !== this.o.nftTable) return `nft-table: the caller's BERTH_NFT_TABLE is not berthd's`;
    const boot = env.BERTH_BOOT_ID_FILE;
    if (boot !== undefined && boot !== '' && boot !== this.o.bootIdFile)
      return `boot-id-file: the caller's BERTH_BOOT_ID_FILE is not berthd's`;
    if (env.BERTH_TEST_FAULT !== undefined && env.BERTH_TEST_FAULT !== '')
      return 'test-fault: fault injection runs standalone only';
    // Checked before anything parses it: the program, in a process of its own that exits, takes it.
    if (nestedDeeperThan(call.stdin, MAX_CONFIG_DEPTH))
      return `config: nested deeper than ${MAX_CONFIG_DEPTH} levels; run standalone`;
    return this.notVisibleHere(call);
  }

  /**
   * berthd may run in a mount namespace of its own (the DaemonSet's container): a pod namespace or a
   * delegated IPAM plugin the runtime names on the host must also be there, else the standalone program
   * (on the host, beside the shim) serves the call instead of berthd failing it.
   */
  private notVisibleHere(call: ForwardedCall): string | undefined {
    const env = call.env;
    const command = env.CNI_COMMAND;
    const config =
      this.o.hostView !== undefined || call.plugin === 'berth-bridge' ? configOf(call.stdin) : undefined;
    const ipamType = ipamTypeOf(config);
    if (this.o.hostView !== undefined && (call.plugin === 'berth-ipam' || ipamType === 'berth-ipam')) {
      const why = berthIpamNotShared(this.o.hostView, config);
      if (why !== undefined) return `data-dir: ${why}`;
    }
    // berth-ipam never enters the namespace, nor runs another plugin.
    if (call.plugin !== 'berth-bridge') return undefined;
    if (command !== 'ADD' && command !== 'CHECK' && command !== 'DEL') return undefined;
    const netns = env.CNI_NETNS;
    // A path that names the calling process's own files (its fds, its cwd) would name berthd's here: a pod's
    // namespace another call holds open (/proc/self/fd/N), entered for this one.
    if (netns !== undefined && netns !== '' && namesTheCaller(netns))
      return `netns: ${netns} is relative to the calling process, which berthd is not`;
    // Missing here, or only the file it is mounted on (a mount the container did not get: propagation).
    if (command !== 'DEL' && netns !== undefined && netns !== '' && !isNamespaceFile(netns))
      return `netns: ${netns} is not visible to berthd as a namespace`;
    if (ipamType === undefined || ipamType === 'berth-ipam') return undefined;
    if (this.o.delegatedIpamHere === false)
      return `ipam: delegated plugin ${ipamType} keeps its state on the host; berthd runs in a container`;
    const dirs = (env.CNI_PATH ?? '').split(':').filter((d) => d !== '');
    // Relative to the caller's directory, which berthd does not share.
    if (dirs.some((d) => !d.startsWith('/')))
      return `ipam: CNI_PATH has a relative directory; berthd does not run in the caller's directory`;
    try {
      findPlugin(ipamType, dirs);
    } catch {
      return `ipam: plugin ${ipamType} is not on CNI_PATH as berthd sees it`;
    }
    return undefined;
  }

  /**
   * Runs one forwarded call. `clientGone` aborts when the caller disconnected: its delegates are killed,
   * and an ADD that still succeeded is deleted again (nobody will ever use or delete it otherwise).
   * `deliver`, when given, sends the reply from within the attachment's turn and says whether it reached the
   * caller's socket: an ADD whose reply could not be written (the caller left as the ADD ended) is deleted
   * too, before the attachment's next call runs.
   */
  async serve(
    call: ForwardedCall & { plugin: WarmPlugin },
    clientGone: AbortSignal,
    deliver?: (out: CallOutput) => Promise<boolean>,
  ): Promise<CallOutput> {
    const id = (++this.seq).toString(36);
    const command = call.env.CNI_COMMAND ?? '';
    const table = this.tables[call.plugin];
    const t0 = process.hrtime.bigint();
    const fields = { req: id, plugin: call.plugin, command, container: call.env.CNI_CONTAINERID };
    // The caller's stderr, line by line; a stack's frames only at debug (the failure's own line says it).
    const onStderr = lineLogger((line) =>
      this.o.log.log(STACK_FRAME.test(line) ? 'debug' : 'info', line, fields),
    );
    let deadline: AbortSignal | undefined;
    this.inFlight++;
    this.served++;
    try {
      const out = await this.attachments.run(attachmentOf(call.env, call.stdin), async () => {
        // The deadline counts from the call's turn: a DEL queued behind its slow ADD gets the whole of it.
        // The wait itself is bounded by the caller (the shim gives up after BERTH_SHIM_TIMEOUT: clientGone).
        deadline = AbortSignal.timeout(this.o.deadlineMs);
        // An ADD whose caller left while it waited for its turn is not run: nobody would ever see its pod.
        if (command === 'ADD' && clientGone.aborted) {
          this.o.log.log('warn', 'caller left before its ADD could run; not run', fields);
          return callerLeft(table.about);
        }
        const signal = AbortSignal.any([clientGone, deadline]);
        let madeNew = false;
        const r = await dispatchCall(
          { env: call.env, stdin: call.stdin, signal, onStderr, madeNew: () => (madeNew = true) },
          table.handlers,
          table.about,
        );
        const delivered = !clientGone.aborted && (deliver === undefined || (await deliver(r)));
        // Only what this ADD made goes again: a repeated ADD answered for a pod that is in use.
        if (command === 'ADD' && r.code === 0 && !delivered && madeNew) await this.undoAdd(call, id);
        return r;
      });
      if (deadline?.aborted === true) this.o.log.log('warn', 'call passed its deadline', fields);
      if (out.code !== 0) this.logFailure(out, fields);
      this.count(call.plugin, command, out.code, t0);
      return out;
    } finally {
      this.inFlight--;
    }
  }

  /**
   * One line per failed call, with the CNI error it answered: at warn, so that `--log-level warn` shows every
   * failed ADD, DEL, CHECK and GC; a STATUS (a runtime polls it every few seconds while a pool is full) at info.
   */
  private logFailure(out: CallOutput, fields: Record<string, string | undefined>): void {
    let error: { code?: unknown; msg?: unknown } = {};
    try {
      error = JSON.parse(out.stdout) as typeof error;
    } catch {
      // Not JSON (a plugin that printed nothing): the exit code is what there is.
    }
    this.o.log.log(fields.command === 'STATUS' ? 'info' : 'warn', 'call failed', {
      ...fields,
      code: typeof error.code === 'number' ? error.code : `exit ${out.code}`,
      ...(typeof error.msg === 'string' ? { msg: shortLogLine(error.msg) } : {}),
    });
  }

  /** The caller left after its ADD succeeded: the runtime will retry with a new ADD, so this one goes. */
  private async undoAdd(call: ForwardedCall & { plugin: WarmPlugin }, id: string): Promise<void> {
    const table = this.tables[call.plugin];
    const fields = { req: id, plugin: call.plugin, container: call.env.CNI_CONTAINERID };
    this.o.log.log('warn', 'caller left before the ADD reply; deleting what it made', fields);
    const del = await dispatchCall(
      {
        env: { ...call.env, CNI_COMMAND: 'DEL' },
        stdin: call.stdin,
        signal: AbortSignal.timeout(this.o.deadlineMs),
        onStderr: lineLogger((line) => this.o.log.log('info', line, { ...fields, command: 'DEL' })),
      },
      table.handlers,
      table.about,
    );
    if (del.code !== 0)
      this.o.log.log('error', 'DEL after the caller left failed', { ...fields, out: del.stdout });
  }

  private count(plugin: string, command: string, code: number, t0: bigint): void {
    // A label value per command CNI knows: whatever else a caller puts in CNI_COMMAND is one series, not one each.
    const known = (COMMANDS as readonly string[]).includes(command);
    const labels = { plugin, command: command === '' ? 'none' : known ? command : 'other' };
    this.o.metrics.inc(
      'berthd_plugin_calls_total',
      'Plugin calls served in-process, by plugin and command.',
      labels,
    );
    if (code !== 0) this.errors++;
    if (code !== 0)
      this.o.metrics.inc('berthd_plugin_errors_total', 'Plugin calls that ended with a CNI error.', labels);
    this.o.metrics.observe(
      'berthd_plugin_call_duration_seconds',
      'Time a served plugin call took, by plugin and command.',
      labels,
      Number(process.hrtime.bigint() - t0) / 1e9,
    );
  }

  /** berth-ipam's handlers over the daemon's lease stores (never the file store: §2.2 row 18). */
  private ipamHandlers(): PluginHandlers {
    const run = async (req: Request): Promise<Result | undefined> => {
      const trace: CallTrace = { reserved: [] };
      const result = await this.o.service.run(req, trace);
      // Leases this ADD reserved (none when it repeated an earlier ADD's answer).
      if (trace.reserved.length > 0) req.madeNew?.();
      return result;
    };
    return {
      add: async (req) => (await run(req)) as Result,
      del: async (req) => void (await run(req)),
      check: async (req) => void (await run(req)),
      gc: async (req) => void (await run(req)),
      status: async (req) => void (await run(req)),
    };
  }

  /**
   * berth-bridge's IPAM call when the type is berth-ipam: straight into the lease store. The result takes
   * the way it would through an executable (printed in the config's version, read back), so both modes
   * hand the bridge the same result.
   */
  private async ipamInProcess(call: IpamCall): Promise<Result | undefined> {
    const req: Request = { ...call.request, command: call.command };
    let result: Result | undefined;
    try {
      result = await this.o.service.run(req);
    } catch (err) {
      // The line the executable prints on its stderr, which berth-bridge passes on to its caller: the same
      // bytes in both modes (a stack trace's frames aside).
      const report = { about: BERTH_IPAM_ABOUT, command: call.command, cniVersion: req.cniVersion, err };
      reportFailure({ stdout: () => undefined, stderr: (text) => call.request.stderr(text) }, report);
      // What berth-bridge gets from the executable is its printed error object: code, msg and details, no
      // cause (whose stack berth-bridge's own report would print a second time).
      const printed = asCniError(err, BERTH_IPAM_ABOUT, call.command).toJSON();
      throw new CniError(printed.code, printed.msg, printed.details);
    }
    if (call.command !== 'ADD' || result === undefined) return undefined;
    const printed = JSON.stringify(toVersion(result, req.cniVersion));
    return parseResult(printed, req.cniVersion, 'result of berth-ipam');
  }
}

/** Splits stderr text into lines for the daemon's log (the caller gets the bytes as they are). */
function lineLogger(log: (line: string) => void): (text: string) => void {
  let partial = '';
  return (text) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) if (l !== '') log(shortLogLine(l));
  };
}

/** A stack frame line of an error's stack, as a failure prints it on stderr. */
const STACK_FRAME = /^\s+at /;

/** The reply of an ADD not run because its caller had left (read by nobody; the log and metrics see it). */
function callerLeft(about: PluginAbout): CallOutput {
  const err = new CniError(ErrorCode.TryAgainLater, 'the caller left before its ADD could run; not run');
  return failureOutput({ about, command: 'ADD', err });
}
