// Converts a cached result to the list's current version before it is sent as prevResult (libcni
// GetAsVersion): the list may have changed version since the ADD that produced the cache.
import { CniError, ErrorCode } from '../../cni-spec/errors';

const SAME_LAYOUT = new Set(['1.0.0', '1.1.0']);

export function convertCachedResult(result: Record<string, unknown>, toVersion: string): Record<string, unknown> {
  const from = typeof result.cniVersion === 'string' ? result.cniVersion : '';
  if (from === toVersion) return result;
  if (SAME_LAYOUT.has(from) && SAME_LAYOUT.has(toVersion)) return { ...result, cniVersion: toVersion };
  throw new CniError(ErrorCode.IncompatibleCniVersion, `cannot convert a ${from} result to ${toVersion}`);
}
