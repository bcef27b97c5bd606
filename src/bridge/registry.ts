// Which network each tagged host veth belongs to, so that GC of one network never removes the ports of
// another network sharing its bridge: one small file per attachment under the run dir (tmpfs, so it lives
// exactly as long as the veths do).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { networkKey } from './lock';

/** `runDir` is berth's run directory (BridgeDeps.runDir). */
function baseDir(runDir: string): string {
  return join(runDir, 'bridge');
}

function networkDir(runDir: string, network: string): string {
  return join(baseDir(runDir), `${networkKey(network)}.attachments`);
}

function fileOf(tag: string): string {
  return createHash('sha256').update(tag).digest('hex').slice(0, 24);
}

/** Caller holds the network lock (an unregister could otherwise remove the directory between mkdir and write). */
export function registerAttachment(runDir: string, network: string, tag: string): void {
  const dir = networkDir(runDir, network);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, fileOf(tag)), tag, { mode: 0o600 });
}

/** Caller holds the network lock; the network's directory goes with its last attachment. */
export function unregisterAttachment(runDir: string, network: string, tag: string): void {
  const dir = networkDir(runDir, network);
  rmSync(join(dir, fileOf(tag)), { force: true });
  try {
    rmdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOENT') throw err;
  }
}

/** True when another network (not `network`) has registered this tag. */
export function registeredElsewhere(runDir: string, network: string, tag: string): boolean {
  const mine = `${networkKey(network)}.attachments`;
  let dirs: string[];
  try {
    dirs = readdirSync(baseDir(runDir)).filter((d) => d.endsWith('.attachments') && d !== mine);
  } catch {
    return false;
  }
  const file = fileOf(tag);
  return dirs.some((d) => existsSync(join(baseDir(runDir), d, file)));
}

/** The tags registered for a network. */
export function registeredTags(runDir: string, network: string): string[] {
  const dir = networkDir(runDir, network);
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return [];
  }
  const tags: string[] = [];
  for (const f of files) {
    try {
      tags.push(readFileSync(join(dir, f), 'utf8'));
    } catch {
      // removed meanwhile
    }
  }
  return tags;
}
