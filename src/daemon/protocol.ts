// The warm path's wire contract between the shim (native/shim/, C, no JSON parser) and berthd: one CNI
// invocation forwarded whole, its output sent back as the bytes the standalone program would print.
//
// Request:  POST /v1/cni, body {"v":1,"plugin":"berth-bridge"|"berth-ipam","env":{…whole env…},"stdin":"…"}
// Reply:    200 whenever the dispatcher ran (whatever the exit code), with Content-Length (never chunked),
//           Berth-Exit-Code: <n>, Berth-Stdout-Length: <bytes>; body = stdout bytes then stderr bytes.
//           421 not served here, 503 draining, 400 malformed envelope, 403 caller not root: the daemon did
//           nothing and the shim runs the standalone program instead.

export const CNI_PATH = '/v1/cni';
export const ENVELOPE_VERSION = 1;
export const EXIT_CODE_HEADER = 'berth-exit-code';
export const STDOUT_LENGTH_HEADER = 'berth-stdout-length';
/** Names a reply's reason for not serving (421, 403, 503), for people and logs; the shim ignores it. */
export const REASON_HEADER = 'berth-reason';

export const WARM_PLUGINS = ['berth-bridge', 'berth-ipam'] as const;
export type WarmPlugin = (typeof WARM_PLUGINS)[number];

/** One forwarded invocation, as berthd reads it. */
export interface ForwardedCall {
  v: 1;
  plugin: string;
  env: Record<string, string>;
  stdin: string;
}

/** Checks the envelope's shape; returns what is wrong, or undefined. */
export function envelopeProblem(body: unknown): string | undefined {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'body must be a JSON object';
  const b = body as Record<string, unknown>;
  if (b.v !== ENVELOPE_VERSION) return `"v" must be ${ENVELOPE_VERSION}`;
  if (typeof b.plugin !== 'string') return '"plugin" must be a string';
  if (typeof b.stdin !== 'string') return '"stdin" must be a string (the config text)';
  const env = b.env;
  if (typeof env !== 'object' || env === null || Array.isArray(env)) return '"env" must be an object';
  for (const [k, v] of Object.entries(env)) {
    if (typeof v !== 'string') return `"env"."${k}" must be a string`;
  }
  return undefined;
}
