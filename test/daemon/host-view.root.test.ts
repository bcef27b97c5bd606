// berthd in a container (the node image's agent: `--host-root /proc/1/root`): berth-ipam state the host does
// not share is left to the host. berthd runs here in a mount namespace of its own with a tmpfs over one
// data dir (as a dataDir outside the DaemonSet's mounts is the container's own layer); the test process is
// the host. A call naming that dir must run on the host's files, both through the warm path (/v1/cni) and
// through the standalone berth-ipam's daemon client (/v1/allocate), or a later fallback hands the same
// address out again.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO } from '../bridge/harness';
import { type TestDaemon, runLikeShim, startDaemon } from './warm-client';

const prefix = `bt${process.pid}-hv`;
const root = mkdtempSync(join(tmpdir(), `${prefix}-`));
const hidden = join(root, 'hidden'); // a tmpfs in berthd's namespace only
const shared = join(root, 'shared');
const runDir = join(root, 'run');
const nftTable = prefix.replace(/-/g, '_');
let d: TestDaemon;

beforeAll(async () => {
  mkdirSync(hidden);
  mkdirSync(shared);
  d = await startDaemon({
    tag: 'hv',
    runDir,
    nftTable,
    // This process plays the host (pid 1's root may be closed to us here; in the DaemonSet it is the host's).
    extraArgs: ['--host-root', `/proc/${process.pid}/root`],
    wrap: [
      'unshare',
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      'mount -t tmpfs bthv "$0" && exec "$@"',
      hidden,
    ],
  });
});

afterAll(async () => {
  await d?.stop();
  rmSync(root, { recursive: true, force: true });
});

function ipamCall(dataDir: string, id: string) {
  const stdin = JSON.stringify({
    cniVersion: '1.0.0',
    name: `${prefix}-net`,
    type: 'bridge',
    ipam: { type: 'berth-ipam', dataDir, daemonSocket: d.socket, ranges: [[{ subnet: '198.18.152.0/24' }]] },
  });
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: id,
    CNI_NETNS: '/proc/self/ns/net',
    CNI_IFNAME: 'eth0',
    CNI_PATH: join(REPO, 'bin'),
    BERTH_RUN_DIR: runDir,
    BERTH_NFT_TABLE: nftTable,
  };
  return runLikeShim(d.socket, join(REPO, 'bin', 'berth-ipam'), env, stdin);
}

const leases = (dir: string): string[] =>
  existsSync(join(dir, `${prefix}-net`))
    ? readdirSync(join(dir, `${prefix}-net`)).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
    : [];

describe('berthd in a container: berth-ipam state the host does not share', () => {
  it('a data dir both see is served warm', async () => {
    const r = await ipamCall(shared, 'ctr-shared');
    expect(r.code, r.stderr).toBe(0);
    expect(r.warm).toBe(true);
    expect(leases(shared)).toEqual(['198.18.152.2']);
  });

  it("a data dir only berthd's container has: the call runs on the host's files (warm path and daemon client)", async () => {
    const first = await ipamCall(hidden, 'ctr-a');
    expect(first.code, first.stderr).toBe(0);
    expect(first.warm, d.log()).toBe(false);
    expect(first.fallback).toBe('421');
    expect(leases(hidden)).toEqual(['198.18.152.2']);
    // A second pod, standalone on the host's files as well: another address, not the same one again.
    const second = await ipamCall(hidden, 'ctr-b');
    expect(second.code, second.stderr).toBe(0);
    expect(leases(hidden).sort()).toEqual(['198.18.152.2', '198.18.152.3']);
    expect(d.log()).toMatch(/not the host's/);
  });
});
