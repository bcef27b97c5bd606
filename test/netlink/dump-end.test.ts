// What the kernel says only in a dump's NLMSG_DONE: NLM_F_DUMP_INTR when the table changed near the end of the
// dump (retried, as when a part carries it), and the error that ended a dump early (the list is not whole).
// The kernel is played by replies fed to the library socket under our wrapper.
import { describe, expect, it } from 'vitest';
import { openNetlink } from '../../src/netlink/rtnetlink';
import { IFLA, NLMSG_DONE, RTM, encodeAttrs, ifinfomsg, str } from '../../src/netlink/rtnl-codec';

interface Message {
  type: number;
  flags: number;
  seq: number;
  port: number;
  data: Buffer;
}
// The node_netlink socket under our wrapper (private there; reached here to play the kernel).
interface Inner {
  send(type: number, data: Buffer, options: { seq: number }, cb?: unknown): number;
  handleMessages(msgs: Message[], rinfo: object): void;
}
const inner = (nl: object): Inner => (nl as { socket: Inner }).socket;

const NLM_F_MULTI = 0x2;
const NLM_F_DUMP_INTR = 0x10;

const link = (seq: number, index: number, name: string): Message => ({
  type: RTM.NEWLINK,
  flags: NLM_F_MULTI,
  seq,
  port: 0,
  data: Buffer.concat([ifinfomsg({ index }), encodeAttrs([[IFLA.IFNAME, str(name)]])]),
});
const done = (seq: number, opts: { interrupted?: boolean; errno?: number } = {}): Message => {
  const data = Buffer.alloc(4);
  data.writeInt32LE(opts.errno ?? 0, 0);
  return {
    type: NLMSG_DONE,
    flags: NLM_F_MULTI | (opts.interrupted === true ? NLM_F_DUMP_INTR : 0),
    seq,
    port: 0,
    data,
  };
};

/** A socket whose requests get the scripted replies in turn (each a function of the request's seq). */
function scripted(replies: Array<(seq: number) => Message[]>) {
  const nl = openNetlink();
  const sock = inner(nl);
  const state = { sent: 0 };
  sock.send = (_type, _data, options) => {
    const reply = replies[Math.min(state.sent, replies.length - 1)]!;
    state.sent++;
    setImmediate(() => sock.handleMessages(reply(options.seq), {}));
    return options.seq;
  };
  return { nl, state };
}

describe('the end of an rtnetlink dump', () => {
  it('a dump whose NLMSG_DONE alone says it was interrupted is asked for again', async () => {
    const { nl, state } = scripted([
      (seq) => [link(seq, 1, 'lo'), done(seq, { interrupted: true })],
      (seq) => [link(seq, 1, 'lo'), link(seq, 7, 'eth0'), done(seq)],
    ]);
    try {
      expect((await nl.listLinks()).map((l) => l.name)).toEqual(['lo', 'eth0']);
      expect(state.sent).toBe(2);
    } finally {
      nl.close();
    }
  });

  it('a dump the kernel ended with an error fails with it rather than passing as the whole table', async () => {
    const { nl, state } = scripted([(seq) => [link(seq, 1, 'lo'), done(seq, { errno: -105 })]]);
    try {
      await expect(nl.listLinks()).rejects.toMatchObject({ code: 'ENOBUFS' });
      expect(state.sent).toBe(1);
    } finally {
      nl.close();
    }
  });

  it('a clean dump (and an empty one) is taken at once', async () => {
    const { nl, state } = scripted([(seq) => [link(seq, 1, 'lo'), done(seq)], (seq) => [done(seq)]]);
    try {
      expect((await nl.listLinks()).map((l) => l.name)).toEqual(['lo']);
      expect(await nl.listLinks()).toEqual([]);
      expect(state.sent).toBe(2);
    } finally {
      nl.close();
    }
  });
});
