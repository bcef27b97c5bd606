// nftables listings over a scripted kernel (any user): the ends of a dump. The socket under src/netlink/nftnl.ts
// is replaced by a fake that answers as the kernel does, including its refusal (EBUSY) of a new dump on a
// socket whose dump is still running, so what is sent when can be checked.
import { EventEmitter } from 'node:events';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import {
  NFNL_SUBSYS_NFTABLES,
  NFTA_CHAIN,
  NFTA_GEN_ID,
  NFTA_SET,
  NFTA_TABLE,
  NFT_MSG,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLM_F_DUMP,
  NLM_F_MULTI,
  be32,
  be64,
  encodeMsg,
  parseMessages,
  type NlMsg,
} from '../../src/netlink/nftnl-codec';
import { str } from '../../src/netlink/rtnl-codec';

const NLM_F_DUMP_INTR = 0x10;

/** What the fake kernel does for a dump of one message type: its messages, how it ends. */
interface DumpScript {
  /** Chain names, sent as one datagram; the first flagged NLM_F_DUMP_INTR when `interrupted`. */
  chains: string[];
  /** Sets (of ipv4_addr), in the same datagram. */
  sets?: string[];
  interrupted?: boolean;
  /** The rest of the dump (more chains, then NLMSG_DONE) comes this much later. */
  restAfterMs?: number;
  rest?: string[];
  doneErrno?: number;
}

const kernel = vi.hoisted(() => ({
  /** Per NFT_MSG type, the scripts of its successive dumps; an unscripted dump is empty. */
  dumps: new Map<number, DumpScript[]>(),
  dumpRunning: false,
  requests: [] as { type: number; dump: boolean }[],
}));

vi.mock('netlink/dist/raw', () => ({
  RawNetlinkSocket: class extends EventEmitter {
    send(buf: Buffer, _opts: unknown, cb?: (err?: Error) => void): void {
      cb?.();
      for (const m of parseMessages(buf)) answer(this, m);
    }
    close(): void {}
    ref(): void {}
    unref(): void {}
  },
}));

import { nfnlListTable } from '../../src/netlink/nftnl';

const TABLE = 'bt0t';
const nftType = (t: number): number => (NFNL_SUBSYS_NFTABLES << 8) | t;

function header(len: number, type: number, flags: number, seq: number): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(flags, 6);
  b.writeUInt32LE(seq, 8);
  return b;
}

function done(seq: number, errno: number): Buffer {
  const b = header(20, NLMSG_DONE, NLM_F_MULTI, seq);
  b.writeInt32LE(errno, 16);
  return b;
}

function error(seq: number, errno: number): Buffer {
  const b = header(36, NLMSG_ERROR, 0, seq);
  b.writeInt32LE(errno, 16);
  return b;
}

const chain = (seq: number, name: string, flags: number): Buffer =>
  encodeMsg(nftType(NFT_MSG.NEWCHAIN), NLM_F_MULTI | flags, seq, 1, [
    [NFTA_CHAIN.TABLE, str(TABLE)],
    [NFTA_CHAIN.NAME, str(name)],
    [NFTA_CHAIN.HANDLE, be64(1)],
  ]);

const set = (seq: number, name: string): Buffer =>
  encodeMsg(nftType(NFT_MSG.NEWSET), NLM_F_MULTI, seq, 1, [
    [NFTA_SET.TABLE, str(TABLE)],
    [NFTA_SET.NAME, str(name)],
    [NFTA_SET.FLAGS, be32(0)],
    [NFTA_SET.KEY_TYPE, be32(7)],
    [NFTA_SET.KEY_LEN, be32(4)],
    [NFTA_SET.HANDLE, be64(2)],
  ]);

function answer(sock: EventEmitter, m: NlMsg): void {
  const type = m.type & 0xff;
  const dump = (m.flags & NLM_F_DUMP) === NLM_F_DUMP;
  kernel.requests.push({ type, dump });
  const send = (...bufs: Buffer[]) => setImmediate(() => sock.emit('message', Buffer.concat(bufs)));
  if (!dump) {
    if (type === NFT_MSG.GETGEN)
      send(encodeMsg(nftType(NFT_MSG.NEWGEN), 0, m.seq, 0, [[NFTA_GEN_ID, be32(7)]]));
    else if (type === NFT_MSG.GETTABLE)
      send(
        encodeMsg(nftType(NFT_MSG.NEWTABLE), 0, m.seq, 1, [
          [NFTA_TABLE.NAME, str(TABLE)],
          [NFTA_TABLE.HANDLE, be64(1)],
        ]),
      );
    else send(error(m.seq, -95));
    return;
  }
  // The kernel's netlink_dump_start: one dump per socket at a time.
  if (kernel.dumpRunning) return send(error(m.seq, -16));
  const script = kernel.dumps.get(type)?.shift() ?? { chains: [] };
  const first = [
    ...script.chains.map((c, i) =>
      chain(m.seq, c, i === 0 && script.interrupted === true ? NLM_F_DUMP_INTR : 0),
    ),
    ...(script.sets ?? []).map((name) => set(m.seq, name)),
  ];
  const end = [...(script.rest ?? []).map((c) => chain(m.seq, c, 0)), done(m.seq, script.doneErrno ?? 0)];
  if (script.restAfterMs === undefined) return send(...first, ...end);
  kernel.dumpRunning = true;
  send(...first);
  setTimeout(() => {
    kernel.dumpRunning = false;
    sock.emit('message', Buffer.concat(end));
  }, script.restAfterMs);
}

const chainNames = (objects: { chain?: { name?: unknown } }[] | undefined): unknown[] =>
  (objects ?? []).filter((o) => o.chain !== undefined).map((o) => o.chain!.name);

beforeEach(() => {
  kernel.dumps.clear();
  kernel.dumpRunning = false;
  kernel.requests = [];
});

describe('nftables listing dumps', () => {
  it('an interrupted dump is read to its end before the retry (a new dump meanwhile gets EBUSY)', async () => {
    kernel.dumps.set(NFT_MSG.GETCHAIN, [
      { chains: ['c1'], interrupted: true, restAfterMs: 30, rest: ['c2'] },
      { chains: ['c1', 'c2'] },
    ]);
    const objects = await nfnlListTable({ family: 'inet', name: TABLE });
    expect(chainNames(objects)).toEqual(['c1', 'c2']);
    expect(kernel.requests.filter((r) => r.type === NFT_MSG.GETCHAIN)).toHaveLength(2);
  });

  it('a dump whose NLMSG_DONE carries an errno fails instead of returning what came before it', async () => {
    kernel.dumps.set(NFT_MSG.GETCHAIN, [{ chains: ['c1'], doneErrno: -2 }]);
    await expect(nfnlListTable({ family: 'inet', name: TABLE })).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a set gone between the set dump and its elements dump is read again, whatever the generation says', async () => {
    // A commit bumps the generation before it unlinks what it deletes: the generation read at the start of
    // the listing can already be the one without the set (the scripted kernel never changes it).
    kernel.dumps.set(NFT_MSG.GETSET, [{ chains: [], sets: ['s4'] }, { chains: [] }]);
    kernel.dumps.set(NFT_MSG.GETSETELEM, [{ chains: [], doneErrno: -2 }]);
    kernel.dumps.set(NFT_MSG.GETCHAIN, [{ chains: ['c1'] }, { chains: ['c1'] }]);
    const objects = await nfnlListTable({ family: 'inet', name: TABLE });
    expect(chainNames(objects)).toEqual(['c1']);
    expect(objects?.some((o) => o.set !== undefined)).toBe(false);
    expect(kernel.requests.filter((r) => r.type === NFT_MSG.GETSET)).toHaveLength(2);
  });

  it('a dump that ends well lists everything', async () => {
    kernel.dumps.set(NFT_MSG.GETCHAIN, [{ chains: ['c1', 'c2', 'c3'] }]);
    expect(chainNames(await nfnlListTable({ family: 'inet', name: TABLE }))).toEqual(['c1', 'c2', 'c3']);
  });
});
