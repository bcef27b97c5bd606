// CNI_ARGS: the legacy `K=V;K=V` channel runtimes still fill (K8S_POD_*, IP=, MAC=, IgnoreUnknown).
import { CniError, ErrorCode } from './errors';

/** Splits CNI_ARGS into its pairs, keys as given; a segment without exactly one "=" is refused. */
export function parseCniArgs(raw: string): Map<string, string> {
  const args = new Map<string, string>();
  for (const pair of raw.split(';')) {
    if (pair === '') continue; // a trailing ";" carries nothing; being strict about it helps nobody
    const parts = pair.split('=');
    const key = parts[0] ?? '';
    if (parts.length !== 2 || key === '') {
      throw new CniError(
        ErrorCode.InvalidEnvironmentVariables,
        `invalid CNI_ARGS pair "${pair}": expected KEY=VALUE`,
      );
    }
    args.set(key, parts[1] ?? '');
  }
  return args;
}

const BOOL_WORDS: Readonly<Record<string, boolean>> = { '1': true, true: true, '0': false, false: false };

/** The `IgnoreUnknown` switch: "1"/"true"/"0"/"false" in any case; absent means false. */
export function ignoreUnknownCniArgs(args: ReadonlyMap<string, string>): boolean {
  const raw = args.get('IgnoreUnknown');
  if (raw === undefined) return false;
  const value = BOOL_WORDS[raw.toLowerCase()];
  if (value === undefined) {
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `invalid CNI_ARGS IgnoreUnknown="${raw}": expected 1, true, 0 or false`,
    );
  }
  return value;
}

/**
 * For plugins that follow the Go reference strictly: refuses keys the plugin does not know unless
 * `IgnoreUnknown` is set (containerd and CRI-O always set it). `IgnoreUnknown` itself is always known.
 */
export function assertKnownCniArgs(args: ReadonlyMap<string, string>, known: readonly string[]): void {
  if (ignoreUnknownCniArgs(args)) return;
  const unknown = [...args.keys()].filter((k) => k !== 'IgnoreUnknown' && !known.includes(k));
  if (unknown.length > 0) {
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `unknown CNI_ARGS ${unknown.map((k) => `"${k}"`).join(', ')} (set IgnoreUnknown=1 to ignore them)`,
    );
  }
}
