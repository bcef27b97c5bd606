// `berth status`'s warm-path section, from what berthd's /v1/status says (or its silence).
import { describe, expect, test } from 'vitest';
import { warmPathLines } from '../../src/cli/status';
import type { DaemonStatus } from '../../src/ipam/daemon/protocol';

const daemon: DaemonStatus = {
  version: 1,
  pid: 42,
  uptimeSeconds: 7,
  socket: '/run/berth/berthd.sock',
  draining: false,
  networks: [],
  warm: {
    up: true,
    plugins: ['berth-bridge', 'berth-ipam'],
    served: 120,
    errors: 3,
    notServed: 2,
    inFlight: 1,
    deadlineMs: 120_000,
    runDir: '/run/berth',
    nftTable: 'berth',
  },
};

describe('berth status: the warm path', () => {
  test('up: what berthd serves, with its counters', () => {
    expect(warmPathLines(daemon)).toEqual([
      'warm path: up: berth-bridge, berth-ipam served in berthd (run dir /run/berth, nft table berth, deadline 120 s per call)',
      '  calls served 120 (3 ended with a CNI error), 1 in flight; 2 sent back to run standalone (421)',
    ]);
  });

  test('calls naming another run dir than berthd: a warning line', () => {
    const mismatch = "plugin calls name run dir /run/berth (berthd's: /run/x): they run standalone";
    expect(warmPathLines({ ...daemon, warm: { ...daemon.warm!, settingsMismatch: mismatch } }).at(-1)).toBe(
      `  warning: ${mismatch}`,
    );
  });

  test('draining, off (--no-plugins), and no daemon at all', () => {
    expect(warmPathLines({ ...daemon, draining: true })[0]).toMatch(
      /^warm path: draining \(new calls run standalone\)/,
    );
    const { warm: _, ...noPlugins } = daemon;
    expect(warmPathLines(noPlugins)).toEqual([
      'warm path: off (berthd started with --no-plugins): the shims run every plugin call standalone',
    ]);
    expect(warmPathLines(undefined)).toEqual([
      'warm path: down (berthd not answering): the shims run every plugin call standalone',
    ]);
  });
});
