// nftables through `nft -j`: libnftables' JSON schema in, JSON out; one call = one atomic transaction.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetlinkError } from './errors';
import { withNetns, type NetnsSpec } from './netns';

export type NftFamily = 'ip' | 'ip6' | 'inet' | 'arp' | 'bridge' | 'netdev';

/** One command of the JSON schema, e.g. `{ add: { table: { family: 'inet', name: 'berth' } } }`. */
export type NftCommand = Record<string, unknown>;
/** One object of a `nft -j list …` answer, e.g. `{ set: { name, elem, … } }` (metainfo dropped). */
export type NftObject = Record<string, Record<string, unknown>>;

export interface NftOptions {
  /** Run nft in this network namespace (the child is forked while the thread is inside it). */
  netns?: NetnsSpec;
  /** The nft binary (default `nft` on PATH). */
  nft?: string;
}

export interface TableRef {
  family: NftFamily;
  name: string;
}
export interface ChainSpec {
  family: NftFamily;
  table: string;
  name: string;
  /** Base chains: filter | nat | route, with hook and priority. */
  type?: 'filter' | 'nat' | 'route';
  hook?: 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting' | 'ingress';
  prio?: number;
  policy?: 'accept' | 'drop';
}
export interface SetSpec {
  family: NftFamily;
  table: string;
  name: string;
  /** e.g. 'ipv4_addr', 'ether_addr', or a concatenation ['ipv4_addr', 'ifname']. */
  type: string | string[];
  flags?: Array<'constant' | 'interval' | 'timeout'>;
  comment?: string;
}
export interface ElementsSpec {
  family: NftFamily;
  table: string;
  /** The set's name. */
  name: string;
  /** Values as the JSON schema writes them: '198.18.0.2', or `{ elem: { val, comment } }`. */
  elem: unknown[];
}
export interface RuleSpec {
  family: NftFamily;
  table: string;
  chain: string;
  expr: unknown[];
  comment?: string;
}

export const addTable = (t: TableRef): NftCommand => ({ add: { table: { ...t } } });
export const deleteTable = (t: TableRef): NftCommand => ({ delete: { table: { ...t } } });
export const addChain = (c: ChainSpec): NftCommand => ({ add: { chain: { ...c } } });
export const deleteChain = (c: Pick<ChainSpec, 'family' | 'table' | 'name'>): NftCommand => ({
  delete: { chain: { family: c.family, table: c.table, name: c.name } },
});
export const addSet = (s: SetSpec): NftCommand => ({ add: { set: { ...s } } });
export const deleteSet = (s: Pick<SetSpec, 'family' | 'table' | 'name'>): NftCommand => ({
  delete: { set: { family: s.family, table: s.table, name: s.name } },
});
export const addElements = (e: ElementsSpec): NftCommand => ({ add: { element: { ...e } } });
export const deleteElements = (e: ElementsSpec): NftCommand => ({ delete: { element: { ...e } } });
export const addRule = (r: RuleSpec): NftCommand => ({ add: { rule: { ...r } } });

/** Above this size the batch goes through a private temp file instead of the command line (ARG_MAX per string is 128 KiB). */
const MAX_INLINE = 96 * 1024;

/** nft prints strerror text; callers branch on errno names. */
const STRERROR: ReadonlyArray<[RegExp, string]> = [
  [/No such file or directory/, 'ENOENT'],
  [/File exists/, 'EEXIST'],
  [/Device or resource busy/, 'EBUSY'],
  [/Operation not permitted/, 'EPERM'],
  [/Operation not supported/, 'EOPNOTSUPP'],
  [/Invalid argument/, 'EINVAL'],
];

function run(args: string[], opts: NftOptions): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const start = () => spawn(opts.nft ?? 'nft', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    // spawn() forks before it returns, so a child started inside withNetns lives in that namespace.
    const child = opts.netns === undefined ? start() : withNetns(opts.netns, start);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    // Not nft's own answer: an nft that cannot be started (not installed: ENOENT) must not read as a
    // missing table (ENOENT), which DEL and GC take for "nothing to remove" and ADD for "set it all up".
    child.on('error', (err) =>
      reject(
        new NetlinkError({
          code: 'EIO',
          errno: 0,
          op: 'nft',
          message: `cannot run nft (${(err as NodeJS.ErrnoException).code ?? 'error'}: ${err.message}; is nftables installed?)`,
          cause: err,
        }),
      ),
    );
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

function failure(what: string, stderr: string): NetlinkError {
  const text = stderr.trim();
  const code = STRERROR.find(([re]) => re.test(text))?.[1] ?? 'EIO';
  const first = text.split('\n').find((l) => /Error/.test(l)) ?? text.split('\n')[0] ?? '';
  return new NetlinkError({ code, errno: 0, op: 'nft', object: what, message: `nft ${what}: ${first}` });
}

/**
 * Applies `commands` as one nft transaction: all of them or none. Errors: NetlinkError op 'nft' with
 * the errno name nft reported (`EEXIST` for `create` of an existing object, `ENOENT` for a missing
 * table/set/element on delete, 'EIO' otherwise), the message carries nft's first error line.
 */
export async function nftApply(commands: readonly NftCommand[], opts: NftOptions = {}): Promise<void> {
  if (commands.length === 0) return;
  const batch = JSON.stringify({ nftables: commands });
  // `nft -f -` cannot read Node's stdin pipes (they are sockets; opening /dev/stdin gives ENXIO), so the
  // batch goes as an argument, or through a file when it is too long for one.
  let dir: string | undefined;
  let args = ['-j', batch];
  if (batch.length > MAX_INLINE) {
    dir = mkdtempSync(join(tmpdir(), 'berth-nft-'));
    writeFileSync(join(dir, 'batch.json'), batch, { mode: 0o600 });
    args = ['-j', '-f', join(dir, 'batch.json')];
  }
  try {
    const r = await run(args, opts);
    if (r.code !== 0) throw failure(`apply (${commands.length} commands)`, r.stderr);
  } finally {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }
}

/** `nft -j list <what…>`: the listed objects without metainfo. Errors as nftApply (ENOENT when missing). */
export async function nftList(what: readonly string[], opts: NftOptions = {}): Promise<NftObject[]> {
  const r = await run(['-j', 'list', ...what], opts);
  if (r.code !== 0) throw failure(`list ${what.join(' ')}`, r.stderr);
  const parsed = JSON.parse(r.stdout) as { nftables?: NftObject[] };
  return (parsed.nftables ?? []).filter((o) => !('metainfo' in o));
}

/** A table's objects (table, chains, sets with elements, rules), or undefined when it does not exist. */
export async function listTable(t: TableRef, opts: NftOptions = {}): Promise<NftObject[] | undefined> {
  try {
    return await nftList(['table', t.family, t.name], opts);
  } catch (err) {
    if (err instanceof NetlinkError && err.code === 'ENOENT') return undefined;
    throw err;
  }
}
