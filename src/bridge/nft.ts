// Runs nftables transactions and listings through the `nft` binary in JSON mode, for the bridge's
// masquerade and spoof-check tables. Kept minimal: a batch is one atomic nft transaction.
import { spawn } from 'node:child_process';
import { CniError, ErrorCode } from '../cni-spec/errors';

/** One command of libnftables' JSON schema, e.g. `{ add: { element: {...} } }`. */
export type NftCommand = Record<string, unknown>;

/** The objects of a `nft -j list …` answer (metainfo dropped). */
export type NftObject = Record<string, Record<string, unknown>>;

export interface Nft {
  /** Applies the commands as one transaction (all or nothing). */
  apply(cmds: NftCommand[]): Promise<void>;
  /** Lists a table; undefined when it does not exist. */
  listTable(family: string, table: string): Promise<NftObject[] | undefined>;
}

function run(args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('nft', args, { stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) =>
      reject(new CniError(ErrorCode.Internal, `cannot run nft: ${err.message}`, undefined, { cause: err })),
    );
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    if (stdin !== undefined && child.stdin !== null) {
      // A failed spawn reports through 'error'; the pipe error would only repeat it.
      child.stdin.on('error', () => undefined);
      child.stdin.end(stdin);
    }
  });
}

export const systemNft: Nft = {
  async apply(cmds) {
    if (cmds.length === 0) return;
    // The batch goes as one argument: `nft -f -` opens /dev/stdin, which fails on Node's socket pipes.
    const r = await run(['-j', JSON.stringify({ nftables: cmds })]);
    if (r.code !== 0) {
      throw new CniError(ErrorCode.Internal, `nftables transaction failed: ${r.stderr.trim().split('\n')[0] ?? ''}`, r.stderr.trim());
    }
  },
  async listTable(family, table) {
    const r = await run(['-j', 'list', 'table', family, table]);
    if (r.code !== 0) {
      if (/No such file or directory/.test(r.stderr)) return undefined;
      throw new CniError(ErrorCode.Internal, `nft list table ${family} ${table} failed: ${r.stderr.trim()}`);
    }
    const parsed = JSON.parse(r.stdout) as { nftables?: NftObject[] };
    return (parsed.nftables ?? []).filter((o) => !('metainfo' in o));
  },
};

/** Default table name for both families (inet: masquerade, bridge: spoof check). */
export const DEFAULT_NFT_TABLE = 'berth';

/** BERTH_NFT_TABLE overrides the table name so tests can work in a private table. */
export function nftTable(env: Record<string, string | undefined>): string {
  const t = env.BERTH_NFT_TABLE;
  return t !== undefined && /^[A-Za-z][A-Za-z0-9_]{0,30}$/.test(t) ? t : DEFAULT_NFT_TABLE;
}

/** nft's comment limit is 128 bytes; a longer tag is shortened the same way at ADD, DEL and GC. */
export function attachmentTag(containerId: string, ifname: string): string {
  const tag = `${containerId}/${ifname}`;
  if (Buffer.byteLength(tag) <= 127) return tag;
  const { createHash } = require('node:crypto') as typeof import('node:crypto');
  return `${containerId.slice(0, 64)}~${createHash('sha256').update(tag).digest('hex').slice(0, 32)}/${ifname}`;
}

/** Set elements as listed: the key value and the attachment comment. */
export interface SetElement {
  val: unknown;
  comment: string | undefined;
}

export function setElements(objects: readonly NftObject[], name: string): SetElement[] | undefined {
  for (const o of objects) {
    const set = o.set;
    if (set !== undefined && set.name === name) {
      const elems = (set.elem as unknown[] | undefined) ?? [];
      return elems.map((e) => {
        if (typeof e === 'object' && e !== null && 'elem' in e) {
          const inner = (e as { elem: { val: unknown; comment?: string } }).elem;
          return { val: inner.val, comment: inner.comment };
        }
        return { val: e, comment: undefined };
      });
    }
  }
  return undefined;
}
