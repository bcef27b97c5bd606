// POST /v1/cni: one plugin invocation forwarded by the shim. Every answer but 200 means "berthd did
// nothing, run the standalone program" (see protocol.ts), so each refusal is decided before any work.
import type * as http from 'node:http';
import { loadNativeAddon } from '../native-addon';
import type { CallOutput } from '../cni-spec/dispatch';
import type { PluginHost } from './plugin-host';
import {
  EXIT_CODE_HEADER,
  type ForwardedCall,
  REASON_HEADER,
  STDOUT_LENGTH_HEADER,
  type WarmPlugin,
  envelopeProblem,
} from './protocol';

export interface RawReply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export interface CniRouteContext {
  plugins: PluginHost | undefined;
  draining: boolean;
  /** Peer uids served (ServerOptions.writerUids). */
  writerUids: readonly number[];
  clientGone: AbortSignal;
  readJson(): Promise<unknown>;
  /** Writes a reply; true once it is all in the caller's socket, false when the caller was gone. */
  deliver(raw: RawReply): Promise<boolean>;
}

function replyOf(out: CallOutput): RawReply {
  const stdout = Buffer.from(out.stdout, 'utf8');
  return {
    status: 200,
    headers: { [EXIT_CODE_HEADER]: String(out.code), [STDOUT_LENGTH_HEADER]: String(stdout.length) },
    body: Buffer.concat([stdout, Buffer.from(out.stderr, 'utf8')]),
  };
}

function refusal(status: number, reason: string): { raw: RawReply } {
  return {
    raw: {
      status,
      headers: { [REASON_HEADER]: reason.replace(/[^\x20-\x7e]/g, '?'), connection: 'close' },
      body: Buffer.from(`${reason}\n`),
    },
  };
}

/**
 * The uid at the other end of the request's unix socket, or why it cannot be known (the native addon not
 * loading, say: named in every refusal, or berthd would refuse all callers without saying why).
 */
function peerUid(req: http.IncomingMessage): number | { unknown: string } {
  const fd = (req.socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return { unknown: 'not a unix socket' };
  try {
    return loadNativeAddon().peerCredentials(fd).uid;
  } catch (err) {
    return { unknown: (err as Error).message };
  }
}

/**
 * Why the caller may not change anything (its uid, or "unknown"), or undefined for one of `writerUids`: the
 * socket is root-only already; this keeps a socket whose mode was loosened from serving others.
 */
export function notAWriter(req: http.IncomingMessage, writerUids: readonly number[]): string | undefined {
  const uid = peerUid(req);
  if (typeof uid !== 'number') return `peer uid unknown: ${uid.unknown}`;
  return writerUids.includes(uid) ? undefined : `peer uid ${uid}`;
}

/** The reply to send, or, with `sent`, the reply that was already sent (or tried) from the call's turn. */
export async function serveCniCall(
  req: http.IncomingMessage,
  ctx: CniRouteContext,
): Promise<{ raw: RawReply; sent?: true }> {
  if (req.method !== 'POST') return refusal(405, 'POST /v1/cni only');
  if (ctx.plugins === undefined) return refusal(421, 'this berthd does not serve plugin calls');
  if (ctx.draining) return refusal(503, 'berthd is stopping');
  const notWriter = notAWriter(req, ctx.writerUids);
  if (notWriter !== undefined) return refusal(403, `plugin calls are served to root only (${notWriter})`);
  let body: unknown;
  try {
    body = await ctx.readJson();
  } catch (err) {
    // Over the body limit (a config of megabytes), or not JSON: the shim runs the program, as for a 421.
    const status = (err as { status?: unknown }).status;
    if (status === 413 || status === 400)
      ctx.plugins.countFallback(status === 413 ? 'too-large' : 'malformed', undefined);
    throw err;
  }
  const problem = envelopeProblem(body);
  if (problem !== undefined) {
    ctx.plugins.countFallback('malformed', (body as { plugin?: unknown } | null)?.plugin);
    return refusal(400, `malformed call: ${problem}`);
  }
  const call = body as ForwardedCall;
  const reason = ctx.plugins.notServedReason(call);
  if (reason !== undefined) return refusal(421, `not served here: ${reason}`);
  let sent: RawReply | undefined;
  const out = await ctx.plugins.serve(call as ForwardedCall & { plugin: WarmPlugin }, ctx.clientGone, (o) =>
    ctx.deliver((sent = replyOf(o))),
  );
  return { raw: sent ?? replyOf(out), sent: true };
}
