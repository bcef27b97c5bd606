// The addon's flock(2) must exclude other processes that use flock(2) (util-linux flock, Go's go-filemutex).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { holdFlock } from './flock-holder';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { addonCandidates, loadNativeAddon } from '../../src/native-addon';

const addon = loadNativeAddon();
const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

function tempLockFile(): string {
  const dir = mkdtempSync(join(tmpdir(), `bt${process.pid}-lock-`));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'lock');
}

function openFd(path: string, flags: string): number {
  const fd = openSync(path, flags);
  cleanups.push(() => closeSync(fd));
  return fd;
}

/** Starts a holder of the lock in another process (flock-holder.ts), let go at the test's end. */
async function holdLockInOtherProcess(path: string, shared: boolean): Promise<ChildProcess> {
  const holder = await holdFlock(path, { shared });
  cleanups.push(() => holder.child.kill());
  return holder.child;
}

describe('native flock', () => {
  it('takes, reports busy, and releases an exclusive lock across file descriptions', () => {
    const path = tempLockFile();
    const a = openFd(path, 'w');
    const b = openFd(path, 'r');
    expect(addon.flock(a, 'ex', true)).toBe(true);
    // flock locks belong to the open file description, so a second open() of the same file conflicts.
    expect(addon.flock(b, 'ex', true)).toBe(false);
    expect(addon.flock(b, 'sh', true)).toBe(false);
    expect(addon.flock(a, 'un')).toBe(true);
    expect(addon.flock(b, 'sh', true)).toBe(true);
    expect(addon.flock(a, 'sh', true)).toBe(true);
    expect(addon.flock(a, 'ex', true)).toBe(false);
  });

  it('sees a lock held by another process (util-linux flock) and gets it once that process lets go', async () => {
    const path = tempLockFile();
    const fd = openFd(path, 'w');
    const holder = await holdLockInOtherProcess(path, false);
    expect(addon.flock(fd, 'ex', true)).toBe(false);
    const exited = new Promise((resolve) => holder.once('exit', resolve));
    holder.stdin!.end();
    await exited;
    expect(addon.flock(fd, 'ex', true)).toBe(true);
  });

  it('shares a shared lock with another process but refuses an exclusive one', async () => {
    const path = tempLockFile();
    const fd = openFd(path, 'w');
    await holdLockInOtherProcess(path, true);
    expect(addon.flock(fd, 'ex', true)).toBe(false);
    expect(addon.flock(fd, 'sh', true)).toBe(true);
  });

  it('throws Node-style errors for a bad descriptor and a bad mode', () => {
    const path = tempLockFile();
    const fd = openSync(path, 'w');
    closeSync(fd);
    expect(() => addon.flock(fd, 'ex', true)).toThrow(
      expect.objectContaining({ code: 'EBADF', errno: -9, syscall: 'flock' }),
    );
    const ok = openFd(path, 'r');
    expect(() => addon.flock(ok, 'xx' as 'ex')).toThrow(TypeError);
  });
});

describe('flock against Go host-local (go-filemutex on <dataDir>/<net>/lock)', () => {
  const hostLocal = '/usr/lib/cni/host-local';

  it.skipIf(!existsSync(hostLocal))(
    'host-local waits while we hold the lock and allocates once we let go',
    async () => {
      const dataDir = join(tempLockFile(), '..', 'data');
      const net = `bt${process.pid}net`;
      mkdirSync(join(dataDir, net), { recursive: true });
      const fd = openFd(join(dataDir, net, 'lock'), 'w');
      expect(addon.flock(fd, 'ex', true)).toBe(true);

      const conf = JSON.stringify({
        cniVersion: '1.0.0',
        name: net,
        ipam: { type: 'host-local', dataDir, ranges: [[{ subnet: '198.18.3.0/24' }]] },
      });
      const child = spawn(hostLocal, [], {
        env: {
          CNI_COMMAND: 'ADD',
          CNI_CONTAINERID: 'flocktest',
          CNI_NETNS: '/dev/null',
          CNI_IFNAME: 'eth0',
          CNI_PATH: '/usr/lib/cni',
        },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      cleanups.push(() => child.kill());
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const done = new Promise<number | null>((resolve) => child.on('exit', resolve));
      child.stdin.end(conf);

      // While we hold the lock, host-local cannot reserve anything: it is seen waiting on our flock in
      // /proc/locks (a "->" line with its pid), not merely slow to start.
      const waiter = new RegExp(`->\\s+FLOCK\\s+ADVISORY\\s+WRITE\\s+${child.pid}\\s`);
      await vi.waitFor(() => expect(readFileSync('/proc/locks', 'utf8')).toMatch(waiter), {
        timeout: 10_000,
      });
      expect(child.exitCode).toBeNull();
      expect(existsSync(join(dataDir, net, '198.18.3.2'))).toBe(false);

      expect(addon.flock(fd, 'un')).toBe(true);
      expect(await done).toBe(0);
      expect(JSON.parse(out).ips[0].address).toBe('198.18.3.2/24');
      expect(readFileSync(join(dataDir, net, '198.18.3.2'), 'utf8')).toBe('flocktest\r\neth0');
    },
  );
});

describe("native syncfs (berthd's group commit)", () => {
  /** Dirty page cache of the whole machine, in KiB (/proc/meminfo). */
  function dirtyKiB(): number {
    return Number(/^Dirty:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
  }

  it("writes the filesystem's dirty data before it resolves, off the main thread", async () => {
    const file = join(tempLockFile(), '..', 'data');
    const fd = openFd(file, 'w');
    // 64 MiB of dirty pages: far below the kernel's own writeback thresholds on these machines.
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    for (let i = 0; i < 64; i++) writeSync(fd, chunk);
    const before = dirtyKiB();
    expect(before).toBeGreaterThan(48 * 1024);
    let loopTurned = false;
    setImmediate(() => {
      loopTurned = true;
    });
    await addon.syncfs(fd);
    expect(loopTurned).toBe(true);
    // Other processes may dirty pages meanwhile, but not 48 MiB in that moment.
    expect(before - dirtyKiB()).toBeGreaterThan(48 * 1024);
  });

  it('rejects with a Node-style system error', async () => {
    await expect(addon.syncfs(987654)).rejects.toMatchObject({ code: 'EBADF', syscall: 'syncfs', errno: -9 });
    expect(() => addon.syncfs('x' as unknown as number)).toThrow(TypeError);
  });
});

/** An RTM_GETLINK request for one interface index; `ack` sets NLM_F_ACK. */
function getLinkMessage(index: number, seq: number, ack: boolean): Buffer {
  const m = Buffer.alloc(16 + 16);
  m.writeUInt32LE(m.length, 0);
  m.writeUInt16LE(18, 4); // RTM_GETLINK
  m.writeUInt16LE(ack ? 0x1 | 0x4 : 0x1, 6); // NLM_F_REQUEST (| NLM_F_ACK)
  m.writeUInt32LE(seq, 8);
  m.writeInt32LE(index, 16 + 4); // struct ifinfomsg: family, pad, type, then the index
  return m;
}

describe('native netlink request on a pool thread', () => {
  function openRoute(): number {
    const fd = addon.netlinkOpen!(0);
    cleanups.push(() => closeSync(fd));
    return fd;
  }

  it("resolves with the acknowledgement's error field, skipping the reply that comes before it", async () => {
    const fd = openRoute();
    // lo is index 1 in every namespace: the kernel answers with RTM_NEWLINK, then the acknowledgement (0).
    await expect(addon.netlinkRequest!(fd, getLinkMessage(1, 41, true), 2000)).resolves.toBe(0);
    await expect(addon.netlinkRequest!(fd, getLinkMessage(0x7ffffff0, 42, true), 2000)).resolves.toBe(-19);
  });

  it('never stops the event loop: a request with no acknowledgement times out on the pool thread', async () => {
    const fd = openRoute();
    const order: string[] = [];
    // Without NLM_F_ACK a successful GET gets its reply only, so the thread waits for the full timeout.
    const pending = addon.netlinkRequest!(fd, getLinkMessage(1, 43, false), 300).then(
      () => order.push('resolved'),
      (err: NodeJS.ErrnoException) => order.push(`rejected ${err.code} ${err.syscall}`),
    );
    setImmediate(() => order.push('event loop turned'));
    await pending;
    expect(order).toEqual(['event loop turned', 'rejected ETIMEDOUT recv']);
  });

  it('rejects a descriptor that is no socket and refuses what is no netlink message', async () => {
    // A regular file, not a closed descriptor: a closed number could be reused before the pool thread runs.
    const fd = openFd(tempLockFile(), 'w');
    await expect(addon.netlinkRequest!(fd, getLinkMessage(1, 44, true), 1000)).rejects.toMatchObject({
      code: 'ENOTSOCK',
    });
    expect(() => addon.netlinkRequest!(openRoute(), Buffer.alloc(4), 1000)).toThrow(/netlink message/);
  });
});

describe('native addon loader', () => {
  it('tries the override first, then the build output', () => {
    const list = addonCandidates({ BERTH_NATIVE_ADDON: '/nonexistent/x.node' });
    expect(list[0]).toBe('/nonexistent/x.node');
    expect(list[1]).toMatch(/native\/build\/Release\/berth_native\.node$/);
  });

  it('names every path it tried when none loads', () => {
    const dir = tempLockFile();
    expect(() => loadNativeAddon(['/nonexistent/a.node', dir])).toThrow(
      /checked:\n {2}\/nonexistent\/a\.node: not found\n {2}.*lock: not found/,
    );
  });
});

describe('the glibc the addon needs', () => {
  // berth on a host is Node 20 (glibc 2.28) plus this addon: the addon must ask for no newer glibc, or the
  // plugins fail to load on RHEL 8, Ubuntu 20.04 or Debian 11 (fstatat binds to glibc 2.33's new symbol).
  it('no symbol newer than GLIBC_2.28', () => {
    const file = join(__dirname, '../../native/build/Release/berth_native.node');
    const versions = [
      ...new Set(
        execFileSync('objdump', ['-T', file], { encoding: 'utf8' }).match(/GLIBC_\d+(\.\d+)+/g) ?? [],
      ),
    ];
    const newer = versions.filter((v) => {
      const [maj, min] = v.slice('GLIBC_'.length).split('.').map(Number);
      return maj! > 2 || (maj === 2 && min! > 28);
    });
    expect(versions.length).toBeGreaterThan(0);
    expect(newer).toEqual([]);
  });
});
