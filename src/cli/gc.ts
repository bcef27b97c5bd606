// `berth gc`: releases every lease of a network whose attachment is not in a list of valid ones (the same
// rule as CNI GC's cni.dev/valid-attachments), or only lists them with --dry-run.
import { readFileSync, statSync } from 'node:fs';
import { openAdminBackend, type BackendOptions } from '../daemon/admin-backend';
import type { CliIo } from './leases';

export interface GcCliOptions extends BackendOptions {
  network: string;
  /** Path, or '-' for stdin. */
  valid: string;
  dryRun?: boolean;
  json?: boolean;
  /** An empty valid list means "release every lease" only with this. */
  all?: boolean;
}

/**
 * The valid attachments: a JSON list of {"containerID", "ifname"} (as in cni.dev/valid-attachments), or
 * text with one "<containerID> <ifname>" or "<containerID>/<ifname>" per line (# comments allowed).
 */
export function parseValidList(text: string): { containerID: string; ifname: string }[] {
  const t = text.trim();
  if (t.startsWith('[') || t.startsWith('{')) {
    let list: unknown;
    try {
      list = JSON.parse(t);
    } catch (err) {
      throw new Error(`the valid list is not valid JSON: ${(err as Error).message}`);
    }
    if (!Array.isArray(list)) throw new Error('the valid list must be a JSON array');
    return list.map((a: unknown, i) => {
      const o = a as Record<string, unknown>;
      if (
        typeof o !== 'object' ||
        o === null ||
        typeof o.containerID !== 'string' ||
        typeof o.ifname !== 'string'
      ) {
        throw new Error(`entry ${i} of the valid list needs string "containerID" and "ifname"`);
      }
      return { containerID: o.containerID, ifname: o.ifname };
    });
  }
  const out: { containerID: string; ifname: string }[] = [];
  t.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (line === '') return;
    const parts = line.includes('/') && !/\s/.test(line) ? line.split('/') : line.split(/\s+/);
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new Error(
        `line ${i + 1} of the valid list: expected "<containerID> <ifname>", got ${JSON.stringify(raw)}`,
      );
    }
    out.push({ containerID: parts[0]!, ifname: parts[1]! });
  });
  return out;
}

/** How far in the future a list's mtime may be (filesystem and clock granularity) before it is refused. */
const FUTURE_MTIME_TOLERANCE_MS = 2_000;

export async function runGc(o: GcCliOptions, io: CliIo): Promise<number> {
  // The list is at most this old: a lease made since belongs to a pod it cannot name, and stays. A file's
  // list is as old as the file (written, reviewed with --dry-run, then run for real: pods made meanwhile).
  const now = Date.now();
  let mtimeMs = now;
  try {
    if (o.valid !== '-') mtimeMs = statSync(o.valid).mtimeMs;
  } catch (err) {
    // `--valid <id>/eth0`, berth exec gc's form: name what the option takes.
    throw new Error(
      `--valid ${o.valid}: ${(err as Error).message}; it takes a file of valid attachments, or - for stdin`,
    );
  }
  if (mtimeMs > now + FUTURE_MTIME_TOLERANCE_MS) {
    // Written before the clock stepped back, or copied with its times (cp -p, rsync -t): how old the list
    // is cannot be told, and taking it as written now would release the leases of pods made since.
    throw new Error(
      `--valid ${o.valid}: the file was last modified at ${new Date(mtimeMs).toISOString()}, after this clock's ${new Date(now).toISOString()} (the clock stepped back, or the file kept another machine's times): how old the list is cannot be told, so leases made since could be released; write the list anew, or give it on stdin with --valid -`,
    );
  }
  const listedAt = new Date(Math.min(now, mtimeMs)).toISOString();
  const source = o.valid === '-' ? 'stdin' : o.valid;
  let valid: { containerID: string; ifname: string }[];
  try {
    valid = parseValidList(readFileSync(o.valid === '-' ? 0 : o.valid, 'utf8'));
  } catch (err) {
    throw new Error(`--valid ${source}: ${(err as Error).message}`);
  }
  if (valid.length === 0 && o.all !== true) {
    // Most often a command upstream of `--valid -` that failed and printed nothing.
    io.err(
      `berth: the valid list is empty: that would release every lease of network ${o.network}; pass --all if that is what you want\n`,
    );
    return 1;
  }
  const b = await openAdminBackend(o);
  if (b.kind === 'files')
    io.err(`berth: berthd is not answering; working on the lease files under ${b.where}\n`);
  try {
    const r = await b.gc({ network: o.network, valid, dryRun: o.dryRun === true, listedAt });
    if (o.json === true) {
      io.out(`${JSON.stringify(r, null, 2)}\n`);
      return 0;
    }
    const verb = r.dryRun ? 'would release' : 'released';
    for (const l of r.released)
      io.out(`${verb} ${l.ip} (container ${l.containerId}${l.ifname ? `/${l.ifname}` : ''})\n`);
    io.out(
      `${r.released.length} lease(s) ${verb} in network ${r.network}; ${valid.length} valid attachment(s) given\n`,
    );
    return 0;
  } finally {
    b.close();
  }
}
