// The kernel's boot id: a lease stamped with another boot's id cannot belong to a live pod (no network
// namespace survives a reboot), which is what lets berth-ipam release host-local's classic leak.
import { readFileSync, statSync } from 'node:fs';

export const BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id';

/**
 * Reads the boot id from `file` (BOOT_ID_FILE unless a test points BERTH_BOOT_ID_FILE elsewhere). When it
 * cannot be read, reboot detection is off: the caller gets undefined and a warning.
 */
export function readBootId(file: string, warn: (msg: string) => void): string | undefined {
  try {
    const id = readFileSync(file, 'utf8').trim();
    if (id !== '') return id;
    warn(`berth-ipam: ${file} is empty; leases from earlier boots will not be released`);
  } catch (err) {
    warn(
      `berth-ipam: cannot read the boot id from ${file} (${(err as Error).message}); leases from earlier boots will not be released`,
    );
  }
  return undefined;
}

/**
 * When the boot `file` names began, by the wall clock (ms): the kernel's from /proc/uptime; a test's boot id
 * file (BERTH_BOOT_ID_FILE), when it was last written (a simulated reboot). Undefined when unknown.
 */
export function bootStartedMs(file: string, now: number = Date.now()): number | undefined {
  try {
    if (file !== BOOT_ID_FILE) return statSync(file).mtimeMs;
    const up = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    return Number.isFinite(up) ? now - up * 1000 : undefined;
  } catch {
    return undefined;
  }
}
