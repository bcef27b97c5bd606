// Entering namespaces: the thread always comes back, and bad paths give the documented errors.
import { execFileSync, spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  openSync,
  closeSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../src/cni-spec/errors';
import { addonCandidates } from '../../src/native-addon';
import { NetlinkError, netlinkCode, toKernelCniError } from '../../src/netlink/errors';
import { currentNetnsId, netnsIdOf, openNetns, withNetns } from '../../src/netlink/netns';
import type { KernelFixture } from './kernel-fixture';
import { sh, threadNetns, useKernelFixture } from './kernel-fixture';

const kernel = useKernelFixture();
/** The test thread's namespace before any test ran: every withNetns must come back to it. */
const original = threadNetns();
let fx: KernelFixture;

function podInode(nsName: string): string {
  // An independent observer: a process started by ip in that netns reads its own link.
  return sh('ip', ['netns', 'exec', nsName, 'readlink', '/proc/self/ns/net']).trim();
}

describe('withNetns', () => {
  it('runs the callback inside the namespace and returns its value, then switches back', () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    const inside = withNetns(pod.path!, () => threadNetns());
    expect(inside).toBe(podInode(pod.nsName!));
    expect(inside).not.toBe(original);
    expect(threadNetns()).toBe(original);
    expect(currentNetnsId()).toBe(original);
  });

  it('switches back and rethrows the very same error when the callback throws', () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    const boom = new Error('boom');
    let seenInside = '';
    expect(() =>
      withNetns(pod.path!, () => {
        seenInside = threadNetns();
        throw boom;
      }),
    ).toThrow(boom);
    expect(seenInside).toBe(podInode(pod.nsName!));
    expect(threadNetns()).toBe(original);
  });

  it('switches back when the callback throws a non-Error value', () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    let caught: unknown;
    try {
      withNetns(pod.path!, () => {
        // eslint-disable-next-line @typescript-eslint/only-throw-error -- the case under test
        throw 42;
      });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBe(42);
    expect(threadNetns()).toBe(original);
  });

  it('nests: inner scope returns to the outer namespace, outer scope to the original', () => {
    fx = kernel.fresh();
    const a = fx.addNetns('a');
    const b = fx.addNetns('b');
    const seen = withNetns(a.path!, () => {
      const inner = withNetns(b.path!, () => threadNetns());
      return [threadNetns(), inner];
    });
    expect(seen).toEqual([podInode(a.nsName!), podInode(b.nsName!)]);
    expect(threadNetns()).toBe(original);
  });

  it('accepts an fd (borrowed, left open) and an open ref', () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    const fd = openSync(pod.path!, 'r');
    try {
      expect(withNetns(fd, () => threadNetns())).toBe(podInode(pod.nsName!));
      // Still usable: the fd was borrowed, not closed.
      expect(withNetns(fd, () => threadNetns())).toBe(podInode(pod.nsName!));
    } finally {
      closeSync(fd);
    }
    const ref = openNetns(pod.path!);
    try {
      expect(netnsIdOf(ref)).toBe(podInode(pod.nsName!));
      expect(netnsIdOf(ref)).toBe(podInode(pod.nsName!));
    } finally {
      ref.close();
    }
    expect(threadNetns()).toBe(original);
  });

  it('refuses an async callback (its awaits would run outside) and still switches back', async () => {
    fx = kernel.fresh();
    const pod = fx.addNetns('p');
    let before = '';
    let after = '';
    expect(() =>
      withNetns(pod.path!, async () => {
        before = threadNetns();
        await Promise.resolve();
        after = threadNetns();
      }),
    ).toThrow(/must be synchronous/);
    await new Promise((r) => setImmediate(r));
    // The part before the first await ran inside, the rest outside: exactly why it is refused.
    expect(before).toBe(podInode(pod.nsName!));
    expect(after).toBe(original);
    expect(threadNetns()).toBe(original);
  });

  it('accepts /proc/<pid>/ns/net paths', () => {
    expect(withNetns(`/proc/${process.pid}/ns/net`, () => threadNetns())).toBe(original);
  });
});

describe('bad namespaces', () => {
  it('a missing path is NetlinkError ENOENT (op "open netns"), CniError code 8 for handlers', () => {
    const path = `/var/run/netns/bt${process.pid}-missing`;
    let err: unknown;
    try {
      withNetns(path, () => 1);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NetlinkError);
    expect(err).toMatchObject({ code: 'ENOENT', op: 'open netns', object: path });
    const cni = toKernelCniError(err);
    expect(cni).toBeInstanceOf(CniError);
    expect((cni as CniError).code).toBe(ErrorCode.InvalidNetns);
    expect((cni as CniError).message).toContain(path);
    expect(netlinkCode(cni)).toBe('ENOENT');
    expect(threadNetns()).toBe(original);
  });

  it('a path that is not a namespace is ENOTNS, also CniError code 8', () => {
    const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-ns-`));
    try {
      const file = join(dir, 'plain');
      writeFileSync(file, '');
      expect(() => withNetns(file, () => 1)).toThrow(
        expect.objectContaining({ code: 'ENOTNS', op: 'open netns' }),
      );
      expect(
        (
          toKernelCniError(
            new NetlinkError({ code: 'ENOTNS', errno: 0, op: 'open netns', object: file }),
          ) as CniError
        ).code,
      ).toBe(ErrorCode.InvalidNetns);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(threadNetns()).toBe(original);
  });

  it('a namespace file of another type (/proc/self/ns/mnt, a bound uts namespace) or a procfs file is ENOTNS, code 8', () => {
    const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-nstype-`));
    const bound = join(dir, 'uts');
    try {
      // A persistent uts namespace: unshare bind-mounts its namespace file onto `bound` (nsfs).
      writeFileSync(bound, '');
      execFileSync('unshare', [`--uts=${bound}`, 'true']);
      for (const [path, kind] of [
        ['/proc/self/ns/mnt', /a mnt namespace/],
        [`/proc/${process.pid}/ns/uts`, /a uts namespace/],
        [bound, /a uts namespace/],
        ['/proc/self/status', /not a namespace at all/],
      ] as const) {
        let err: unknown;
        try {
          withNetns(path, () => 1);
        } catch (e) {
          err = e;
        }
        expect(err, path).toBeInstanceOf(NetlinkError);
        expect(err).toMatchObject({ code: 'ENOTNS', op: 'open netns', object: path });
        expect((err as Error).message).toMatch(kind);
        const cni = toKernelCniError(err) as CniError;
        expect(cni.code).toBe(ErrorCode.InvalidNetns);
        expect(cni.message).toContain(`${path}: not a network namespace`);
      }
      // A bound network namespace still opens (the check reads the fd, not the path).
      fx = kernel.fresh();
      const pod = fx.addNetns('p');
      expect(withNetns(pod.path!, () => threadNetns())).toBe(podInode(pod.nsName!));
    } finally {
      spawnSync('umount', [bound]);
      rmSync(dir, { recursive: true, force: true });
    }
    expect(threadNetns()).toBe(original);
  });

  it('an fd of another namespace type fails setns with EINVAL and leaves the thread alone', () => {
    const fd = openSync(`/proc/${process.pid}/ns/uts`, 'r');
    try {
      expect(() => withNetns(fd, () => 1)).toThrow(expect.objectContaining({ code: 'EINVAL', op: 'setns' }));
    } finally {
      closeSync(fd);
    }
    expect(threadNetns()).toBe(original);
  });

  it('without CAP_SYS_ADMIN setns fails with a Node-style EPERM (code, errno, syscall)', () => {
    // A child process as nobody (setpriv drops the capabilities with the uid) loads the addon directly,
    // from a world-readable copy (the checkout may live under a private home directory).
    const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-eperm-`));
    chmodSync(dir, 0o755);
    const addonPath = join(dir, 'berth_native.node');
    copyFileSync(
      addonCandidates({}).find((p) => existsSync(p))!,
      addonPath,
    );
    chmodSync(addonPath, 0o755);
    const script = `const a = require(${JSON.stringify(addonPath)});
      const fd = require('fs').openSync('/proc/self/ns/net', 'r');
      try { a.setnsRun(fd, () => 1); console.log('entered'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, errno: e.errno, syscall: e.syscall, message: e.message, isError: e instanceof Error })); }`;
    let out: string;
    try {
      out = execFileSync(
        'setpriv',
        ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script],
        {
          encoding: 'utf8',
          cwd: dir,
        },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(JSON.parse(out)).toEqual({
      code: 'EPERM',
      errno: -1,
      syscall: 'setns',
      message: 'setns EPERM: Operation not permitted',
      isError: true,
    });
  });

  it('an fd that is not a namespace at all fails setns with EINVAL', () => {
    const fd = openSync('/proc/self/status', 'r');
    try {
      expect(() => withNetns(fd, () => 1)).toThrow(expect.objectContaining({ code: 'EINVAL', op: 'setns' }));
    } finally {
      closeSync(fd);
    }
    expect(threadNetns()).toBe(original);
  });
});
