// Converts a cached result to the list's current version before it is sent as prevResult (libcni
// GetAsVersion): the list may have changed version since the ADD that produced the cache.
import { parseResult, toVersion } from '../../cni-spec/convert';

export function convertCachedResult(
  result: Record<string, unknown>,
  version: string,
): Record<string, unknown> {
  // Same version: passed on as cached, so keys a chained plugin added beyond the spec survive.
  if (result.cniVersion === version) return result;
  return toVersion(parseResult(result, version), version) as unknown as Record<string, unknown>;
}
