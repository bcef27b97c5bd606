// Turns one invocation (CNI_* environment + stdin config) into a validated Request, or a CniError saying why not.
import { parseResult } from './convert';
import { parseCniArgs } from './env-args';
import { CniError, ErrorCode } from './errors';
import { containerIdProblem, ifnameProblem, networkNameProblem } from './identifiers';
import { type JsonObject, isJsonObject } from './json-shape';
import type { Result } from './types/result';
import {
  COMMAND_MIN_VERSION,
  isSupportedVersion,
  isVersionString,
  unsupportedVersionError,
  versionAtLeast,
} from './versions';

export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION'] as const;
export type Command = (typeof COMMANDS)[number];
/** Every command but VERSION carries a request; VERSION is answered before any parsing. */
export type RequestCommand = Exclude<Command, 'VERSION'>;

/** The stdin configuration after validation: the keys every plugin needs, the rest left to the plugin. */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  [key: string]: unknown;
}

/** One entry of GC's `cni.dev/valid-attachments`. */
export interface Attachment {
  containerID: string;
  ifname: string;
}

export interface Request {
  command: RequestCommand;
  /** '' for GC and STATUS, which concern no attachment. */
  containerId: string;
  /** '' when absent (DEL may arrive without one; GC and STATUS have none). */
  netns: string;
  /** '' for GC and STATUS. */
  ifname: string;
  /** CNI_ARGS pairs, keys as given (check unknown ones with `assertKnownCniArgs` from env-args). */
  cniArgs: Map<string, string>;
  /** CNI_PATH directories, in search order. */
  path: string[];
  /** The whole environment, forwarded to delegated plugins. */
  env: Record<string, string>;
  /** The raw stdin bytes, forwarded verbatim to delegated plugins. */
  stdin: string;
  config: NetConf;
  cniVersion: string;
  /** Already converted to the internal model. */
  prevResult?: Result;
  /** DEL only: why the prevResult given could not be read (the DEL goes on without it). */
  ignoredPrevResult?: string;
  /** `args.cni` of the config (runtime-supplied metadata such as `ips` or `mac`); {} when absent. */
  args: Readonly<Record<string, unknown>>;
  /** runtimeConfig lookup ignoring key case: containerd sends `HostPort`, CRI-O `hostPort`. */
  runtimeConfig(key: string): unknown;
  /** GC only: attachments still valid (current or legacy key); [] when the runtime sent none. */
  validAttachments?: Attachment[];
  /**
   * One line for the caller's stderr, prefixed with the plugin's name (rollback notes, warnings). Set by the
   * dispatcher from its I/O, so in berthd each request's lines reach its own caller; a no-op until then.
   */
  log(line: string): void;
  /** Text for the caller's stderr as is (a delegated plugin's own stderr). */
  stderr(text: string): void;
  /** Aborted when the caller is gone or its deadline passed (berthd); delegated plugins are killed then. */
  signal?: CancelSignal;
  /**
   * ADD only: called when the ADD makes an attachment that was not there (not a repeat of one that is).
   * berthd deletes an ADD whose caller left only then: a repeated ADD answers for a pod in use.
   */
  madeNew?(): void;
}

/**
 * The part of an AbortSignal a request needs, stated here because this room compiles without Node's
 * (or the DOM's) types; Node's AbortSignal satisfies it.
 */
export interface CancelSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** The raw material of one invocation, as the entry adapter read it. */
export interface Invocation {
  env: Readonly<Record<string, string | undefined>>;
  stdin: string;
}

const ATTACHMENT_COMMANDS: ReadonlySet<Command> = new Set(['ADD', 'DEL', 'CHECK']);
const CONFIG_COMMANDS: ReadonlySet<Command> = new Set(['ADD', 'DEL', 'CHECK', 'GC', 'STATUS']);

type EnvField = 'containerId' | 'netns' | 'ifname' | 'cniArgs' | 'path';

export interface EnvVarRule {
  name: string;
  field: EnvField;
  /** Commands that read the variable; for the others it is ignored (libcni sends it empty). */
  usedBy: ReadonlySet<Command>;
  /** Commands that fail without it (an empty value counts as absent). */
  requiredFor: ReadonlySet<Command>;
  /** Describes what is wrong with a present value, or undefined. */
  problem?: (value: string) => string | undefined;
}

/** Which variable each command needs, written once (spec table in section 1; DEL tolerates no netns). */
export const ENV_VARS: readonly EnvVarRule[] = [
  {
    name: 'CNI_CONTAINERID',
    field: 'containerId',
    usedBy: ATTACHMENT_COMMANDS,
    requiredFor: ATTACHMENT_COMMANDS,
    problem: containerIdProblem,
  },
  { name: 'CNI_NETNS', field: 'netns', usedBy: ATTACHMENT_COMMANDS, requiredFor: new Set(['ADD', 'CHECK']) },
  {
    name: 'CNI_IFNAME',
    field: 'ifname',
    usedBy: ATTACHMENT_COMMANDS,
    requiredFor: ATTACHMENT_COMMANDS,
    problem: ifnameProblem,
  },
  {
    name: 'CNI_ARGS',
    field: 'cniArgs',
    usedBy: ATTACHMENT_COMMANDS,
    requiredFor: new Set(),
    problem: cniArgsProblem,
  },
  // The spec requires CNI_PATH for GC and leaves it optional for STATUS; plugins that delegate need it anyway.
  {
    name: 'CNI_PATH',
    field: 'path',
    usedBy: CONFIG_COMMANDS,
    requiredFor: new Set(['ADD', 'DEL', 'CHECK', 'GC']),
  },
];

function cniArgsProblem(value: string): string | undefined {
  try {
    parseCniArgs(value);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

function isCommand(s: string): s is Command {
  return (COMMANDS as readonly string[]).includes(s);
}

/** Reads CNI_COMMAND; absent or unknown → code 4. */
export function parseCommand(env: Invocation['env']): Command {
  const raw = env.CNI_COMMAND ?? '';
  if (raw === '') {
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      'required env variables [CNI_COMMAND] missing',
      `CNI_COMMAND must be one of ${COMMANDS.join(', ')}`,
    );
  }
  if (!isCommand(raw)) {
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `unknown CNI_COMMAND: ${raw}`,
      `CNI_COMMAND must be one of ${COMMANDS.join(', ')}`,
    );
  }
  return raw;
}

/** Parses and validates everything a handler needs; VERSION has no request and is refused here. */
export function parseRequest(input: Invocation): Request {
  const command = parseCommand(input.env);
  if (command === 'VERSION') {
    throw new CniError(ErrorCode.InvalidEnvironmentVariables, 'CNI_COMMAND=VERSION carries no request');
  }
  const fromEnv = readEnvVars(input.env, command);
  const config = parseNetConf(input.stdin, command);
  // DEL is best effort and prevResult optional there: one berth cannot read (another plugin's output the
  // runtime cached) must not fail it for good, which would leave its lease and veth behind. Said on stderr.
  let prevResult: Result | undefined;
  let ignoredPrevResult: string | undefined;
  try {
    prevResult = readPrevResult(config);
  } catch (err) {
    if (command !== 'DEL' || !(err instanceof CniError)) throw err;
    ignoredPrevResult = err.message;
  }
  const runtimeConfig = readObjectKey(config, 'runtimeConfig');
  const args = readArgsCni(config);
  const request: Request = {
    command,
    ...fromEnv,
    env: definedEnv(input.env),
    stdin: input.stdin,
    config,
    cniVersion: config.cniVersion,
    args,
    log: () => undefined,
    stderr: () => undefined,
    runtimeConfig: (key) =>
      runtimeConfig === undefined ? undefined : caseInsensitiveGet(runtimeConfig, key),
  };
  if (prevResult !== undefined) request.prevResult = prevResult;
  if (ignoredPrevResult !== undefined) request.ignoredPrevResult = ignoredPrevResult;
  if (command === 'GC') request.validAttachments = readValidAttachments(config);
  return request;
}

function readEnvVars(env: Invocation['env'], command: RequestCommand): Pick<Request, EnvField> {
  const out: Pick<Request, EnvField> = {
    containerId: '',
    netns: '',
    ifname: '',
    cniArgs: new Map(),
    path: [],
  };
  const missing: string[] = [];
  const problems: string[] = [];
  for (const rule of ENV_VARS) {
    if (!rule.usedBy.has(command)) continue;
    const value = env[rule.name] ?? '';
    if (value === '') {
      if (rule.requiredFor.has(command)) missing.push(rule.name);
      continue;
    }
    const problem = rule.problem?.(value);
    if (problem !== undefined) {
      problems.push(`${rule.name} ${JSON.stringify(value)} ${problem}`);
      continue;
    }
    setEnvField(out, rule.field, value);
  }
  if (missing.length > 0 || problems.length > 0) {
    const parts = [
      ...(missing.length > 0 ? [`required env variables [${missing.join(' ')}] missing`] : []),
      ...problems,
    ];
    throw new CniError(ErrorCode.InvalidEnvironmentVariables, parts.join('; '));
  }
  return out;
}

// One setter per field keeps the table declarative while the Request stays precisely typed.
const ENV_FIELD_SETTERS: Readonly<Record<EnvField, (out: Pick<Request, EnvField>, value: string) => void>> = {
  containerId: (out, v) => (out.containerId = v),
  netns: (out, v) => (out.netns = v),
  ifname: (out, v) => (out.ifname = v),
  cniArgs: (out, v) => (out.cniArgs = parseCniArgs(v)),
  path: (out, v) => (out.path = v.split(':').filter((d) => d !== '')),
};

function setEnvField(out: Pick<Request, EnvField>, field: EnvField, value: string): void {
  ENV_FIELD_SETTERS[field](out, value);
}

function definedEnv(env: Invocation['env']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  return out;
}

function invalidConfig(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

/** Parses the stdin configuration: JSON (6), cniVersion (7, unsupported → 1), name and type (7), gating (1). */
export function parseNetConf(stdin: string, command: RequestCommand): NetConf {
  let value: unknown;
  try {
    value = JSON.parse(stdin);
  } catch (err) {
    const what = stdin.trim() === '' ? 'stdin is empty' : (err as Error).message;
    throw new CniError(ErrorCode.DecodingFailure, `error decoding network config from stdin: ${what}`);
  }
  if (!isJsonObject(value)) {
    throw new CniError(
      ErrorCode.DecodingFailure,
      'error decoding network config from stdin: expected a JSON object',
    );
  }
  // No cniVersion (or an empty or null one) is 0.1.0, the version before the field existed: as skel's plugins read
  // it (a runtime that passes an old .conf as it is gets the same answer as from the reference plugins).
  const raw = value.cniVersion;
  const cniVersion = raw === undefined || raw === null || raw === '' ? '0.1.0' : raw;
  if (typeof cniVersion !== 'string' || !isVersionString(cniVersion)) {
    throw invalidConfig(
      `invalid cniVersion ${JSON.stringify(cniVersion)}: expected a version such as "1.1.0"`,
    );
  }
  if (!isSupportedVersion(cniVersion)) throw unsupportedVersionError('config', cniVersion);

  const name = value.name;
  if (typeof name !== 'string') throw invalidConfig('network config has no name (a string)');
  const nameProblem = networkNameProblem(name);
  if (nameProblem !== undefined)
    throw invalidConfig(`invalid network name ${JSON.stringify(name)}: ${nameProblem}`);

  const type = value.type;
  if (typeof type !== 'string' || type === '') throw invalidConfig('network config has no type (a string)');
  if (type.includes('/') || type.includes('\\')) {
    throw invalidConfig(
      `invalid plugin type ${JSON.stringify(type)}: must be an executable name, not a path`,
    );
  }

  const minVersion = (COMMAND_MIN_VERSION as Partial<Record<Command, string>>)[command];
  if (minVersion !== undefined && !versionAtLeast(cniVersion, minVersion)) {
    throw new CniError(
      ErrorCode.IncompatibleCniVersion,
      `config version does not allow "${command}"`,
      `${command} needs cniVersion >= ${minVersion}, config is ${JSON.stringify(cniVersion)}`,
    );
  }
  return { ...value, cniVersion, name, type };
}

/** `o[key]` when it is an object; absent for undefined and null (as Go's decoder reads null); else code 7. */
function readObjectKey(o: JsonObject, key: string, path = key): JsonObject | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!isJsonObject(v)) throw invalidConfig(`network config "${path}" must be an object`);
  return v;
}

function readArgsCni(config: NetConf): Readonly<Record<string, unknown>> {
  const args = readObjectKey(config, 'args');
  return (args && readObjectKey(args, 'cni', 'args.cni')) ?? {};
}

/** prevResult is read in the config's version when it does not name its own. */
function readPrevResult(config: NetConf): Result | undefined {
  const prev = readObjectKey(config, 'prevResult');
  if (prev === undefined) return undefined;
  return parseResult(prev, config.cniVersion, 'prevResult');
}

const VALID_ATTACHMENT_KEYS = ['cni.dev/valid-attachments', 'cni.dev/attachments'] as const;

function readValidAttachments(config: NetConf): Attachment[] {
  // null is an empty list, as Go reads it: libcni writes a nil slice as null (CRI-O's GC of a network with
  // no live pod sends exactly that).
  const key = VALID_ATTACHMENT_KEYS.find((k) => config[k] !== undefined && config[k] !== null);
  if (key === undefined) return []; // cnitool sends none: nothing is valid any more
  const list = config[key];
  if (!Array.isArray(list)) throw invalidConfig(`"${key}" must be an array`);
  return list.map((item, i) => {
    if (!isJsonObject(item) || typeof item.containerID !== 'string' || typeof item.ifname !== 'string') {
      throw invalidConfig(`"${key}"[${i}] must be an object with string containerID and ifname`);
    }
    return { containerID: item.containerID, ifname: item.ifname };
  });
}

/**
 * `obj` with each of `names` read as Go's encoding/json reads a struct field: the exact key, else one that
 * differs only in case. The reference plugins read their config structs that way (host-local honours
 * "datadir" and "RangeStart"), so a drop-in must too.
 */
export function withGoFieldNames(
  obj: Readonly<Record<string, unknown>>,
  names: readonly string[],
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...obj };
  for (const name of names) {
    if (Object.hasOwn(obj, name)) continue;
    const v = caseInsensitiveGet(obj, name);
    if (v !== undefined) out[name] = v;
  }
  return out;
}

/** Looks a key up exactly, then ignoring case: runtimes disagree on capitalisation (HostPort/hostPort). */
export function caseInsensitiveGet(obj: Readonly<Record<string, unknown>>, key: string): unknown {
  if (Object.hasOwn(obj, key)) return obj[key];
  const lower = key.toLowerCase();
  for (const [k, v] of Object.entries(obj)) if (k.toLowerCase() === lower) return v;
  return undefined;
}

/**
 * How deep a config's JSON may nest for berthd to parse it (deeper ones run in the program on the files, a
 * process of its own). Real configs nest a few levels; one nested 400,000 levels (under berthd's body limit)
 * cost ~21 MB of heap per parse, which berthd kept, and stalled every other call while it was parsed.
 */
export const MAX_CONFIG_DEPTH = 64;

/** Whether JSON text nests arrays and objects deeper than `limit` (brackets inside strings do not count). */
export function nestedDeeperThan(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: the next character is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}
