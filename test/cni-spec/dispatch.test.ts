import { describe, expect, it } from 'vitest';
import {
  NOT_IMPLEMENTED_CODE,
  type PluginHandlers,
  type PluginIo,
  dispatch,
  dispatchCall,
} from '../../src/cni-spec/dispatch';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import type { Request } from '../../src/cni-spec/request';
import type { Result } from '../../src/cni-spec/types/result';

const ABOUT = { name: 'berth-test' };
const ENV = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'ctr1',
  CNI_NETNS: '/run/netns/bt-x',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
};
const CONF = { cniVersion: '1.1.0', name: 'net1', type: 'berth-test' };
const RESULT: Result = {
  cniVersion: '1.1.0',
  interfaces: [{ name: 'eth0', mac: '02:00:00:00:00:01', mtu: 1500, sandbox: '/run/netns/bt-x' }],
  ips: [{ interface: 0, address: '198.18.0.5/24', gateway: '198.18.0.1' }],
  routes: [{ dst: '0.0.0.0/0', gw: '198.18.0.1' }],
};

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(opts: {
  env?: Record<string, string | undefined>;
  conf?: unknown;
  handlers?: PluginHandlers;
}): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const conf = opts.conf ?? CONF;
  const io: PluginIo = {
    env: { ...ENV, ...opts.env },
    stdin: typeof conf === 'string' ? conf : JSON.stringify(conf),
    stdout: (s) => out.push(s),
    stderr: (s) => err.push(s),
  };
  const code = await dispatch(io, opts.handlers ?? {}, ABOUT);
  return { code, stdout: out.join(''), stderr: err.join('') };
}

/** The failure contract: non-zero exit, stdout is exactly one JSON object with numeric code and string msg. */
function failure(r: Run): { code: number; msg: string; details?: string; cniVersion?: string } {
  expect(r.code).not.toBe(0);
  const lines = r.stdout.split('\n').filter((l) => l !== '');
  expect(lines).toHaveLength(1);
  const obj = JSON.parse(lines[0] ?? '') as { code: number; msg: string };
  expect(typeof obj.code).toBe('number');
  expect(typeof obj.msg).toBe('string');
  return obj;
}

describe('VERSION', () => {
  it.each([
    ['empty stdin', ''],
    ['garbage', '{not json'],
    ['a config', JSON.stringify({ cniVersion: '0.1.0' })],
  ])('answers the fixed object whatever stdin holds (%s)', async (_label, stdin) => {
    const r = await run({ env: { CNI_COMMAND: 'VERSION', CNI_CONTAINERID: undefined }, conf: stdin });
    expect(r).toEqual({
      code: 0,
      stdout:
        '{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n',
      stderr: '',
    });
  });
});

describe('handlers', () => {
  it("ADD prints the handler's result in the config's version, once", async () => {
    let seen: Request | undefined;
    const add = async (req: Request): Promise<Result> => {
      seen = req;
      return RESULT;
    };
    const r = await run({ conf: { ...CONF, cniVersion: '0.4.0' }, handlers: { add } });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout.endsWith('\n')).toBe(true);
    expect(JSON.parse(r.stdout)).toEqual({
      cniVersion: '0.4.0',
      interfaces: [{ name: 'eth0', mac: '02:00:00:00:00:01', sandbox: '/run/netns/bt-x' }],
      ips: [{ version: '4', interface: 0, address: '198.18.0.5/24', gateway: '198.18.0.1' }],
      routes: [{ dst: '0.0.0.0/0', gw: '198.18.0.1' }],
    });
    expect(seen).toMatchObject({ command: 'ADD', containerId: 'ctr1', ifname: 'eth0', cniVersion: '0.4.0' });
  });

  it.each([
    ['DEL', 'del'],
    ['CHECK', 'check'],
    ['GC', 'gc'],
    ['STATUS', 'status'],
  ] as const)('%s calls its handler and prints nothing on success', async (command, key) => {
    const calls: string[] = [];
    const handlers: PluginHandlers = {
      [key]: async (req: Request) => {
        calls.push(req.command);
      },
    };
    const r = await run({ env: { CNI_COMMAND: command }, handlers });
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(calls).toEqual([command]);
  });

  it.each(['ADD', 'DEL', 'CHECK', 'GC', 'STATUS'])(
    '%s without a handler fails clearly (never silent success)',
    async (command) => {
      const r = await run({ env: { CNI_COMMAND: command } });
      const err = failure(r);
      expect(err.code).toBe(NOT_IMPLEMENTED_CODE);
      expect(err.msg).toBe(`berth-test: ${command} is not implemented yet`);
    },
  );

  it('a bad request never reaches the handler', async () => {
    const calls: string[] = [];
    const handlers: PluginHandlers = { add: async () => (calls.push('add'), RESULT) };
    const r = await run({ env: { CNI_IFNAME: 'a/b' }, handlers });
    expect(failure(r).code).toBe(ErrorCode.InvalidEnvironmentVariables);
    expect(calls).toEqual([]);
  });
});

describe('failures are rendered once', () => {
  it('a CniError from the handler keeps code, msg and details, with the config version', async () => {
    const add = async (): Promise<Result> => {
      throw new CniError(ErrorCode.TryAgainLater, 'store is locked', 'lock held by pid 42');
    };
    const r = await run({ handlers: { add } });
    expect(failure(r)).toEqual({
      cniVersion: '1.1.0',
      code: 11,
      msg: 'store is locked',
      details: 'lock held by pid 42',
    });
    expect(r.stderr).toContain('store is locked');
  });

  it('an unexpected exception becomes 999 with a useful message; the stack goes to stderr only', async () => {
    const add = async (): Promise<Result> => {
      const o = undefined as unknown as { mac: string };
      return { cniVersion: '1.1.0', interfaces: [{ name: o.mac }] };
    };
    const r = await run({ handlers: { add } });
    const err = failure(r);
    expect(err.code).toBe(ErrorCode.Internal);
    expect(err.msg).toMatch(
      /^berth-test ADD: unexpected failure: TypeError: Cannot read properties of undefined/,
    );
    expect(r.stdout).not.toMatch(/\n\s+at /);
    expect(r.stderr).toMatch(/TypeError[^\n]*\n\s+at /);
  });

  it("a failed system call that the error's message quotes prints no stack; another cause does", async () => {
    const denied = Object.assign(new Error("EACCES: permission denied, mkdir '/d/n'"), {
      code: 'EACCES',
      syscall: 'mkdir',
    });
    const add = async (): Promise<Result> => {
      throw new CniError(
        ErrorCode.IoFailure,
        `cannot open the lease store /d/n: ${denied.message}`,
        undefined,
        {
          cause: denied,
        },
      );
    };
    const r = await run({ handlers: { add } });
    expect(r.stderr).toBe(
      "berth-test: ADD failed: code 5: cannot open the lease store /d/n: EACCES: permission denied, mkdir '/d/n'\n",
    );
    const other = async (): Promise<Result> => {
      throw new CniError(ErrorCode.IoFailure, 'cannot write the lease', undefined, { cause: denied });
    };
    expect((await run({ handlers: { add: other } })).stderr).toMatch(/\nError: EACCES[^\n]*\n\s+at /);
    // An errno that is berth's own bug keeps its stack, quoted or not.
    const badFd = Object.assign(new Error('EBADF: bad file descriptor, write'), {
      code: 'EBADF',
      syscall: 'write',
    });
    const bug = async (): Promise<Result> => {
      throw new CniError(ErrorCode.IoFailure, `cannot write: ${badFd.message}`, undefined, { cause: badFd });
    };
    expect((await run({ handlers: { add: bug } })).stderr).toMatch(/\nError: EBADF[^\n]*\n\s+at /);
  });

  it('a thrown non-Error value becomes 999 naming it', async () => {
    const del = async (): Promise<void> => {
      // eslint-disable-next-line @typescript-eslint/only-throw-error -- the case under test
      throw 'boom';
    };
    const r = await run({ env: { CNI_COMMAND: 'DEL' }, handlers: { del } });
    expect(failure(r)).toMatchObject({ code: 999, msg: 'berth-test DEL: unexpected failure: boom' });
  });

  it('an ADD handler that returns nothing is an error, not an empty success', async () => {
    const add = (async () => undefined) as unknown as PluginHandlers['add'];
    expect(failure(await run({ handlers: { add } }))).toMatchObject({
      code: 999,
      msg: 'berth-test: ADD produced no result',
    });
  });

  it('a result the config version cannot express fails without printing a partial result', async () => {
    const add = async (): Promise<Result> => ({ cniVersion: '1.1.0', interfaces: [{ name: 'eth0' }] });
    const r = await run({ conf: { ...CONF, cniVersion: '0.2.0' }, handlers: { add } });
    expect(failure(r)).toMatchObject({ code: ErrorCode.IncompatibleCniVersion, cniVersion: '0.2.0' });
  });

  it.each([
    ['unknown command', { env: { CNI_COMMAND: 'FOO' } }, 4],
    ['missing variables', { env: { CNI_NETNS: undefined } }, 4],
    ['not JSON', { conf: '{' }, 6],
    ['bad name', { conf: { ...CONF, name: '../x' } }, 7],
    ['unsupported version', { conf: { ...CONF, cniVersion: '9.0.0' } }, 1],
    ['CHECK on 0.3.1', { env: { CNI_COMMAND: 'CHECK' }, conf: { ...CONF, cniVersion: '0.3.1' } }, 1],
  ])('%s → exactly one JSON object with code %i', async (_label, opts, code) => {
    const r = await run({ ...opts, handlers: { add: async () => RESULT, check: async () => undefined } });
    expect(failure(r).code).toBe(code);
    expect(r.stderr).toContain(`code ${code}`);
  });

  it('without CNI_COMMAND (run by hand) says on stderr what the program is and exits 0, as skel does', async () => {
    let called = false;
    const r = await run({
      env: { CNI_COMMAND: undefined },
      handlers: { add: async () => ((called = true), RESULT) },
    });
    expect(r.stderr).toBe(
      'berth-test: a CNI plugin; CNI spec versions 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n',
    );
    expect(r.stdout).toBe('');
    expect(r.code).toBe(0);
    expect(called).toBe(false);
  });
});

describe('requests that share a process (berthd)', () => {
  it("a handler's log lines and its delegates' stderr reach its own caller, prefixed once", async () => {
    const handlers: PluginHandlers = {
      del: async (req) => {
        req.log('rollback: step failed');
        req.stderr('raw delegate words\n');
      },
    };
    const out = await dispatchCall(
      { env: { ...ENV, CNI_COMMAND: 'DEL' }, stdin: JSON.stringify(CONF) },
      handlers,
      ABOUT,
    );
    expect(out).toEqual({
      code: 0,
      stdout: '',
      stderr: 'berth-test: rollback: step failed\nraw delegate words\n',
    });
  });

  it("each request gets its caller's cancellation signal", async () => {
    const seen: unknown[] = [];
    const handlers: PluginHandlers = {
      del: async (req) => void seen.push(req.signal),
    };
    const a = new AbortController();
    const b = new AbortController();
    const call = (signal: AbortSignal) =>
      dispatchCall(
        { env: { ...ENV, CNI_COMMAND: 'DEL' }, stdin: JSON.stringify(CONF), signal },
        handlers,
        ABOUT,
      );
    await Promise.all([call(a.signal), call(b.signal)]);
    expect(seen).toEqual([a.signal, b.signal]);
  });

  it('dispatchCall gives the bytes and exit code the standalone program prints, failures included', async () => {
    const ok = await dispatchCall(
      { env: ENV, stdin: JSON.stringify(CONF) },
      { add: async () => RESULT },
      ABOUT,
    );
    const direct = await run({ handlers: { add: async () => RESULT } });
    expect(ok).toEqual(direct);
    const bad = await dispatchCall({ env: ENV, stdin: '{' }, {}, ABOUT);
    expect(bad).toEqual(await run({ conf: '{', handlers: {} }));
    expect(bad.code).toBe(1);
  });
});
