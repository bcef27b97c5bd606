// Which network each tagged host veth belongs to, so that GC of one network never removes the ports of
// another network sharing its bridge: one small file per attachment under the run dir (tmpfs, so it lives
// exactly as long as the veths do). The file also says which nftables tables the ADD may put elements in,
// so that DEL lists only those (once an `nft` process each; now netlink dumps, still work saved).
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

/** The nftables tables an attachment's ADD may put elements in (from its config, decided before it does). */
export interface NftUse {
  masquerade: boolean;
  spoofCheck: boolean;
}

/** An attachment's file: the tag, then (since the record says what nft holds) a line `nft:` with the uses. */
function parseRecord(text: string): { tag: string; nft: NftUse | undefined } {
  const [tag = '', uses] = text.split('\n');
  if (uses === undefined || !uses.startsWith('nft:')) return { tag, nft: undefined };
  const words = uses.slice('nft:'.length).split(' ');
  return { tag, nft: { masquerade: words.includes('masquerade'), spoofCheck: words.includes('spoofcheck') } };
}

/**
 * Records the attachment with what it may put into nftables, before the ADD makes anything. Caller holds
 * the network lock (an unregister could otherwise remove the directory between mkdir and write). A record
 * already there (an ADD of the same attachment again, without a DEL between) keeps its uses. True when a
 * record was there before.
 */
export function registerAttachment(runDir: string, network: string, tag: string, nft: NftUse): boolean {
  const dir = networkDir(runDir, network);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { existed, nft: before } = readRecord(runDir, network, tag);
  const masquerade = nft.masquerade || (before?.masquerade ?? false);
  const spoofCheck = nft.spoofCheck || (before?.spoofCheck ?? false);
  const uses = `nft:${masquerade ? ' masquerade' : ''}${spoofCheck ? ' spoofcheck' : ''}`;
  writeFileSync(join(dir, fileOf(tag)), `${tag}\n${uses}`, { mode: 0o600 });
  return existed;
}

/**
 * What the attachment's ADD recorded about nftables; undefined when there is no record (no ADD got that
 * far, or it was deleted) or one written before records said it: then DEL must look in both tables.
 */
export function attachmentNftUse(runDir: string, network: string, tag: string): NftUse | undefined {
  return readRecord(runDir, network, tag).nft;
}

/** The attachment's file: whether there is one, and the uses it records (undefined as for attachmentNftUse). */
function readRecord(
  runDir: string,
  network: string,
  tag: string,
): { existed: boolean; nft: NftUse | undefined } {
  let text: string;
  try {
    text = readFileSync(join(networkDir(runDir, network), fileOf(tag)), 'utf8');
  } catch {
    return { existed: false, nft: undefined };
  }
  const record = parseRecord(text);
  return { existed: true, nft: record.tag === tag ? record.nft : undefined };
}

/** Whether the network has a record of the attachment (an ADD of it got as far as registering it). */
export function attachmentRecorded(runDir: string, network: string, tag: string): boolean {
  return readRecord(runDir, network, tag).existed;
}

/** The name berth gives a pod's host veth (hostVethName in add.ts). */
export const HOST_VETH_RE = /^veth[0-9a-f]{8}$/;

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
      tags.push(parseRecord(readFileSync(join(dir, f), 'utf8')).tag);
    } catch {
      // removed meanwhile
    }
  }
  return tags;
}
