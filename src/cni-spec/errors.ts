// The one error type that crosses the plugin boundary: a CNI error object with a well-known code.

/** Codes from the CNI spec (section "Error"), plus the Go library's 999 for untyped failures. */
export const ErrorCode = {
  IncompatibleCniVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironmentVariables: 4,
  IoFailure: 5,
  DecodingFailure: 6,
  InvalidNetworkConfig: 7,
  InvalidNetns: 8,
  TryAgainLater: 11,
  PluginNotAvailable: 50,
  PluginNotAvailableLimitedConnectivity: 51,
  Internal: 999,
} as const;
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode] | number;

/** The wire shape of a CNI error (stdout of a failed plugin, body of a failed daemon call). */
export interface CniErrorJson {
  cniVersion?: string;
  code: number;
  msg: string;
  details?: string;
}

/**
 * A CNI error: raised where the cause is known, rendered once by the entry adapter.
 * `cause` keeps the underlying error (errno, stack) for stderr logging; it never reaches stdout.
 */
export class CniError extends Error {
  readonly code: ErrorCodeValue;
  readonly details: string | undefined;

  constructor(code: ErrorCodeValue, msg: string, details?: string, options?: { cause?: unknown }) {
    super(msg, options);
    this.name = 'CniError';
    this.code = code;
    this.details = details;
  }

  toJSON(cniVersion?: string): CniErrorJson {
    const json = {} as CniErrorJson;
    if (cniVersion !== undefined) json.cniVersion = cniVersion;
    json.code = this.code;
    json.msg = this.message;
    if (this.details !== undefined && this.details !== '') json.details = this.details;
    return json;
  }

  /** Reads an error object printed by another plugin (or a daemon); keeps its code and message. */
  static fromJson(json: unknown): CniError | undefined {
    if (typeof json !== 'object' || json === null) return undefined;
    const o = json as Record<string, unknown>;
    if (typeof o.code !== 'number' || typeof o.msg !== 'string') return undefined;
    return new CniError(o.code, o.msg, typeof o.details === 'string' ? o.details : undefined);
  }
}

/**
 * Turns anything thrown into a CniError: a CniError passes through, anything else becomes code 999
 * with its message (and the original kept as `cause` for the stderr log).
 */
export function toCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  if (err instanceof Error) {
    return new CniError(ErrorCode.Internal, err.message || err.name, undefined, { cause: err });
  }
  return new CniError(ErrorCode.Internal, `unexpected failure: ${String(err)}`);
}
