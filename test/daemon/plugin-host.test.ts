// PluginHost's own rules, with berth-bridge's handlers replaced by stubs (no kernel): the per-call deadline
// and the order of calls of one attachment.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test, vi } from 'vitest';
import type { PluginHandlers } from '../../src/cni-spec/dispatch';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import type { Request } from '../../src/cni-spec/request';
import { createLogger } from '../../src/daemon/log';
import { Metrics } from '../../src/daemon/metrics';
import { nestedDeeperThan } from '../../src/cni-spec/request';
import { PluginHost } from '../../src/daemon/plugin-host';
import { BerthServer } from '../../src/daemon/server';
import { callDaemon } from '../../src/ipam/daemon-client';
import type { Service } from '../../src/ipam/daemon/service';

/** A PluginHost without IPAM service or kernel; its log lines go to `lines` when given. */
function newHost(
  o: Partial<ConstructorParameters<typeof PluginHost>[0]> & { deadlineMs: number },
  lines?: string[],
): PluginHost {
  return new PluginHost({
    service: {} as Service,
    log: createLogger({
      format: 'text',
      level: lines !== undefined ? 'info' : 'error',
      write: (l) => void lines?.push(l),
    }),
    metrics: new Metrics(),
    runDir: '/nonexistent/berth-run',
    nftTable: 'berth',
    bootIdFile: '/proc/sys/kernel/random/boot_id',
    ...o,
  });
}

function hostWith(handlers: PluginHandlers, deadlineMs: number): PluginHost {
  const host = newHost({ deadlineMs });
  const tables = (host as unknown as { tables: Record<string, { handlers: PluginHandlers }> }).tables;
  tables['berth-bridge']!.handlers = handlers;
  return host;
}

/** Waits `ms`, or fails with code 11 as soon as the call is cancelled. */
function work(req: Request, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (req.signal?.aborted === true) return reject(new CniError(ErrorCode.TryAgainLater, 'cancelled'));
    const t = setTimeout(resolve, ms);
    req.signal?.addEventListener('abort', () => {
      clearTimeout(t);
      reject(new CniError(ErrorCode.TryAgainLater, 'cancelled'));
    });
  });
}

const never = new AbortController().signal;
const call = (command: string) => ({
  v: 1,
  plugin: 'berth-bridge' as const,
  env: {
    CNI_COMMAND: command,
    CNI_CONTAINERID: 'ctr-deadline',
    CNI_NETNS: '/run/netns/x',
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/nonexistent',
  },
  stdin: JSON.stringify({ cniVersion: '1.0.0', name: 'deadline-net', type: 'berth-bridge' }),
});

describe('deadline', () => {
  test("a DEL queued behind its attachment's slow ADD gets its whole deadline from its own turn", async () => {
    const order: string[] = [];
    const host = hostWith(
      {
        add: async (req) => {
          await work(req, 600);
          order.push('ADD done');
          return { cniVersion: '1.0.0' };
        },
        del: async (req) => {
          order.push('DEL started');
          await work(req, 600);
          order.push('DEL done');
        },
      },
      1000,
    );
    const [add, del] = await Promise.all([host.serve(call('ADD'), never), host.serve(call('DEL'), never)]);
    expect(add.code).toBe(0);
    expect(del.code).toBe(0);
    expect(order).toEqual(['ADD done', 'DEL started', 'DEL done']);
  });

  test('a call past its deadline is cancelled with code 11', async () => {
    const host = hostWith({ del: (req) => work(req, 5000) }, 200);
    const out = await host.serve(call('DEL'), never);
    expect(out.code).toBe(1);
    expect(JSON.parse(out.stdout)).toMatchObject({ code: 11 });
  });
});

describe('what berthd cannot see is served by the standalone program (421)', () => {
  /** A namespace file every test process can open (its own network namespace, named by its pid). */
  const OWN_NETNS = `/proc/${process.pid}/ns/net`;
  // berthd's own settings (the caller names none): only visibility decides here.
  const host = (delegatedIpamHere = true): PluginHost => {
    const h = hostWith({}, 1000);
    const o = (h as unknown as { o: { runDir: string; delegatedIpamHere?: boolean } }).o;
    o.runDir = '/run/berth';
    o.delegatedIpamHere = delegatedIpamHere;
    return h;
  };
  const forward = (
    command: string,
    netns: string,
    ipamType: string,
    cniPath = '/usr/lib/cni:/nonexistent',
  ) => ({
    v: 1,
    plugin: 'berth-bridge',
    env: {
      CNI_COMMAND: command,
      CNI_CONTAINERID: 'c',
      CNI_NETNS: netns,
      CNI_IFNAME: 'eth0',
      CNI_PATH: cniPath,
    },
    stdin: JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'berth-bridge', ipam: { type: ipamType } }),
  });

  test("a namespace path relative to the calling process (its fds, its cwd): berthd's own files otherwise", () => {
    for (const command of ['ADD', 'CHECK', 'DEL'])
      for (const netns of [
        '/proc/self/fd/21',
        '/proc/thread-self/ns/net',
        '/dev/fd/21',
        'netns/pod',
        '/proc/self',
        // Other spellings of the same paths, as the kernel resolves them.
        '//proc/self/fd/21',
        '/proc/./self/fd/21',
        '/dev//fd/21',
      ])
        expect(host().notServedReason(forward(command, netns, 'berth-ipam')), `${command} ${netns}`).toBe(
          `netns: ${netns} is relative to the calling process, which berthd is not`,
        );
    // A process's namespace named by its pid is the same file for berthd.
    expect(host().notServedReason(forward('ADD', OWN_NETNS, 'berth-ipam'))).toBeUndefined();
    expect(host().notServedReason(forward('ADD', '/proc/selfish/ns/net', 'berth-ipam'))).toMatch(
      /is not visible to berthd as a namespace/,
    );
  });

  test("a pod namespace path that is not in berthd's mount namespace", () => {
    expect(host().notServedReason(forward('ADD', '/var/run/netns-not-here/cni-1', 'berth-ipam'))).toMatch(
      /^netns: \/var\/run\/netns-not-here\/cni-1 is not visible to berthd as a namespace/,
    );
    expect(host().notServedReason(forward('CHECK', '/nonexistent/ns', 'berth-ipam'))).toMatch(/^netns:/);
    // The file a namespace is mounted on, without the mount (it did not propagate into berthd's container).
    expect(host().notServedReason(forward('ADD', '/etc/hostname', 'berth-ipam'))).toMatch(
      /^netns: \/etc\/hostname is not visible to berthd as a namespace/,
    );
    // DEL of a namespace gone everywhere is still berthd's (the host veth is found by its tag).
    expect(host().notServedReason(forward('DEL', '/nonexistent/ns', 'berth-ipam'))).toBeUndefined();
    expect(host().notServedReason(forward('ADD', OWN_NETNS, 'berth-ipam'))).toBeUndefined();
  });

  test('a delegated IPAM plugin that is not on CNI_PATH as berthd sees it', () => {
    expect(host().notServedReason(forward('ADD', OWN_NETNS, 'bt-no-such-ipam'))).toMatch(
      /^ipam: plugin bt-no-such-ipam is not on CNI_PATH as berthd sees it/,
    );
    expect(host().notServedReason(forward('DEL', '', 'bt-no-such-ipam'))).toMatch(/^ipam:/);
    // /bin/true stands in for a plugin berthd can run (in the host's mount namespace).
    expect(host(true).notServedReason(forward('ADD', OWN_NETNS, 'true', '/bin'))).toBeUndefined();
    // A relative CNI_PATH entry means the caller's directory, which berthd does not share.
    expect(host(true).notServedReason(forward('ADD', OWN_NETNS, 'true', 'bin:/bin'))).toMatch(
      /^ipam: CNI_PATH has a relative directory/,
    );
  });

  test('any delegated IPAM when berthd is in a mount namespace of its own (a container): it keeps its state on the host', () => {
    expect(host(false).notServedReason(forward('ADD', OWN_NETNS, 'true', '/bin'))).toMatch(
      /^ipam: delegated plugin true keeps its state on the host; berthd runs in a container/,
    );
    expect(host(false).notServedReason(forward('ADD', OWN_NETNS, 'berth-ipam'))).toBeUndefined();
  });
});

describe("calls that name other settings than berthd's", () => {
  test('run standalone, and the log (once per kind a while) and berth status say so', () => {
    const lines: string[] = [];
    const host = newHost({ runDir: '/run/berth-typo', deadlineMs: 1000 }, lines);
    // The runtime sets no BERTH_*: the plugins' defaults (run dir /run/berth).
    const plain = { ...call('DEL'), env: { ...call('DEL').env } };
    expect(host.stats().settingsMismatch).toBeUndefined();
    for (let i = 0; i < 3; i++) expect(host.notServedReason(plain)).toMatch(/^run-dir:/);
    const table = {
      ...call('DEL'),
      env: { ...call('DEL').env, BERTH_RUN_DIR: '/run/berth-typo', BERTH_NFT_TABLE: 'x' },
    };
    expect(host.notServedReason(table)).toMatch(/^nft-table:/);
    const warnings = lines.filter((l) => /warn/i.test(l));
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toContain(
      "plugin calls name run dir /run/berth (berthd's: /run/berth-typo): they run standalone",
    );
    expect(warnings[1]).toContain("nft table x (berthd's: berth)");
    expect(host.stats().settingsMismatch).toBe(
      "plugin calls name nft table x (berthd's: berth): they run standalone",
    );
    // berth status shows it for 10 minutes after the last such call (a test's private run dir passes).
    // On the monotonic clock: a wall clock stepped back by an hour does not keep it (nor one stepped ahead
    // hide it).
    const wall = vi.spyOn(Date, 'now').mockReturnValue(Date.now() + 11 * 60_000);
    expect(host.stats().settingsMismatch).toBeDefined();
    wall.mockRestore();
    const now = performance.now();
    const clock = vi.spyOn(performance, 'now').mockReturnValue(now + 11 * 60_000);
    expect(host.stats().settingsMismatch).toBeUndefined();
    clock.mockRestore();
    // Other reasons are no mismatch of settings (a test fault, a namespace berthd cannot see).
    lines.length = 0;
    const fault = {
      ...call('DEL'),
      env: { ...call('DEL').env, BERTH_RUN_DIR: '/run/berth-typo', BERTH_TEST_FAULT: 'x' },
    };
    expect(host.notServedReason(fault)).toMatch(/^test-fault:/);
    expect(lines).toEqual([]);
  });
});

describe('a config nested deeper than any real one', () => {
  test('runs standalone (421, counted), before berthd parses it; strings and escapes do not count', () => {
    const host = newHost({ deadlineMs: 1000, runDir: '/run/berth' }, []);
    const deep = {
      ...call('DEL'),
      stdin: `{"cniVersion":"1.0.0","name":"n","x":${'['.repeat(65)}${']'.repeat(65)}}`,
    };
    expect(host.notServedReason(deep)).toBe('config: nested deeper than 64 levels; run standalone');
    const shallow = { ...call('DEL'), stdin: `{"name":"n","x":${'['.repeat(63)}${']'.repeat(63)}}` };
    expect(host.notServedReason(shallow)).toBeUndefined();
    expect(nestedDeeperThan(`{"s":"${'[{'.repeat(100)}\\\"[[["}`, 2)).toBe(false);
    expect(nestedDeeperThan('[[[', 2)).toBe(true);
    expect(host.stats().notServed).toBe(1);
  });
});

describe('calls berthd cannot read', () => {
  test('over the body limit or malformed: counted as fallbacks (the shim runs the program for them too)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bt-cni-refused-'));
    const metrics = new Metrics();
    const log = createLogger({ format: 'text', level: 'error', write: () => undefined });
    const host = new PluginHost({
      service: {} as Service,
      log,
      metrics,
      runDir: '/run/berth',
      nftTable: 'berth',
      bootIdFile: '/proc/sys/kernel/random/boot_id',
      deadlineMs: 1000,
    });
    const socket = join(dir, 'berthd.sock');
    const server = new BerthServer({
      service: {} as Service,
      log,
      metrics,
      socketPath: socket,
      writerUids: [process.getuid!()],
      plugins: host,
      maxBodyBytes: 4096,
    });
    await new Promise<void>((resolve) => server.http.listen(socket, resolve));
    try {
      const big = { ...call('ADD'), stdin: 'x'.repeat(8192) };
      expect((await callDaemon({ socket, method: 'POST', path: '/v1/cni', body: big })).status).toBe(413);
      expect((await callDaemon({ socket, method: 'POST', path: '/v1/cni', body: { v: 1 } })).status).toBe(
        400,
      );
      const text = metrics.render([]);
      expect(text).toContain('berthd_plugin_fallbacks_total{plugin="other",reason="too-large"} 1');
      expect(text).toContain('berthd_plugin_fallbacks_total{plugin="other",reason="malformed"} 1');
      expect(host.stats().notServed).toBe(2);
    } finally {
      await new Promise<void>((resolve) => server.http.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("berthd in a container whose run dir is not the host's", () => {
  test('every plugin call runs standalone, and berth status says why', () => {
    const lines: string[] = [];
    const host = newHost(
      {
        runDir: '/run/berth',
        deadlineMs: 1000,
        hostView: {
          notShared: (path) =>
            path === '/run/berth' ? `${path} is not the host's (/run differs: mount it)` : undefined,
        },
      },
      lines,
    );
    expect(host.notServedReason(call('DEL'))).toBe(
      "run-dir: berthd's run dir /run/berth is not the host's (/run differs: mount it)",
    );
    expect(host.stats().settingsMismatch).toBe(
      "berthd's run dir /run/berth is not the host's (/run differs: mount it): plugin calls run standalone",
    );
    // The log says to mount it, not to fix a flag.
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('mount it): plugin calls run standalone');
    expect(lines[0]).not.toContain('flag');
  });
});

describe("a call's stderr in berthd's log", () => {
  test('a failed call is one WARN line with its code and message; the stack frames only at debug', async () => {
    const lines: string[] = [];
    const host = newHost({ deadlineMs: 5_000 }, lines);
    const tables = (host as unknown as { tables: Record<string, { handlers: PluginHandlers }> }).tables;
    tables['berth-bridge']!.handlers = {
      add: () =>
        Promise.reject(
          new CniError(ErrorCode.Internal, 'no more addresses', undefined, { cause: new Error('inner') }),
        ),
    };
    const out = await host.serve(call('ADD'), never);
    expect(out.code).not.toBe(0);
    // The caller gets the whole story, stack included.
    expect(out.stderr).toMatch(/\n\s+at /);
    expect(lines.filter((l) => / WARN /.test(l))).toEqual([
      expect.stringMatching(
        / WARN call failed req=\w+ plugin=berth-bridge command=ADD container=ctr-deadline code=999 msg="no more addresses"/,
      ),
    ]);
    expect(lines.filter((l) => /\bat /.test(l) && / INFO /.test(l))).toEqual([]);
    // STATUS is polled (every few seconds while a pool is full): its failures at info. (This one is refused
    // for its config's version, which is all the stub call allows.)
    lines.length = 0;
    await host.serve(call('STATUS'), never);
    expect(lines.filter((l) => / WARN /.test(l))).toEqual([]);
    expect(lines).toContainEqual(expect.stringMatching(/ INFO call failed .*command=STATUS .*code=1 msg=/));
  });

  test('each line at most 4 KiB there, whole for the caller', async () => {
    const lines: string[] = [];
    const host = newHost({ deadlineMs: 5_000 }, lines);
    const tables = (host as unknown as { tables: Record<string, { handlers: PluginHandlers }> }).tables;
    tables['berth-bridge']!.handlers = {
      del: (req) => {
        req.log(`echo ${'x'.repeat(500_000)}`);
        return Promise.resolve();
      },
    };
    const out = await host.serve(call('DEL'), never);
    expect(out.stderr.length).toBeGreaterThan(500_000);
    const logged = lines.find((l) => l.includes('echo xxx'))!;
    expect(logged.length).toBeLessThan(5_000);
    expect(logged).toMatch(/… \(500019 characters\)/);
  });
});
