// The rules for names that later become file paths or kernel names: container id, network name, ifname.

/** libcni's charset for container ids and network names (`pkg/utils`): no path separators, no leading dot. */
const ID_CHARSET = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Linux IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_IFNAME_BYTES = 15;

/** Describes what is wrong with a container id, or undefined when it is acceptable. */
export function containerIdProblem(id: string): string | undefined {
  if (id === '') return 'must not be empty';
  if (!ID_CHARSET.test(id)) {
    return 'must start with a letter or digit and contain only letters, digits, "_", "." and "-"';
  }
  return undefined;
}

/** Describes what is wrong with a network name (it names a directory later), or undefined. */
export function networkNameProblem(name: string): string | undefined {
  if (name === '') return 'must not be empty';
  if (!ID_CHARSET.test(name)) {
    return 'must start with a letter or digit and contain only letters, digits, "_", "." and "-"';
  }
  return undefined;
}

/** Describes what is wrong with an interface name (the kernel's and libcni's rules), or undefined. */
export function ifnameProblem(name: string): string | undefined {
  if (name === '') return 'must not be empty';
  if (utf8Length(name) > MAX_IFNAME_BYTES) return `must be at most ${MAX_IFNAME_BYTES} bytes`;
  if (name === '.' || name === '..') return 'must not be "." or ".."';
  if (name.includes('/')) return 'must not contain "/"';
  if (name.includes(':')) return 'must not contain ":"';
  if (/\s/u.test(name)) return 'must not contain whitespace';
  // The kernel cuts a name at a NUL: "cni0\0x" would be the bridge cni0 under another lock's name.
  if (/[\x00-\x1f\x7f]/.test(name)) return 'must not contain control characters';
  // The kernel takes a name with "%" as a template ("eth%d" becomes eth0, eth1, …): the link would be
  // created under another name than the one asked for, and then not be found by it.
  if (name.includes('%')) return 'must not contain "%" (the kernel treats it as a naming template)';
  return undefined;
}

// Counted by hand: TextEncoder is not part of the ES library this room compiles against.
function utf8Length(s: string): number {
  let n = 0;
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  }
  return n;
}

/**
 * A valid-list id that names no known container id but is the start of one (`berth leases` prints 12
 * characters): the container meant would be taken for stale. The first such id with the whole one, or
 * undefined. Sorted known ids and a binary search per id: a valid list may name a cluster's pods.
 */
export function shortContainerId(
  valid: Iterable<string>,
  known: Iterable<string>,
): { id: string; whole: string } | undefined {
  const knownIds = new Set(known);
  const sorted = [...knownIds].sort();
  for (const id of valid) {
    if (knownIds.has(id)) continue;
    // The smallest known id not below `id` is the only one that can start with it, if any does.
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sorted[mid]! < id) lo = mid + 1;
      else hi = mid;
    }
    const next = sorted[lo];
    if (next !== undefined && next.startsWith(id)) return { id, whole: next };
  }
  return undefined;
}
