// The waits around a warm-path call agree: the shim, systemd's stop timeout and the DaemonSet's grace period
// each outlast the longest a call can take in berthd (its deadline, then a failed ADD's rollback), so berthd's
// own answer reaches the runtime and a drain is not cut short.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLEANUP_TIMEOUT_MS } from '../../src/bridge/add';
import { DEFAULT_CALL_DEADLINE_MS } from '../../src/daemon/plugin-host';

const repo = join(__dirname, '..', '..');
const read = (path: string): string => readFileSync(join(repo, path), 'utf8');
const number = (text: string, re: RegExp): number => Number(re.exec(text)?.[1]);
// A failed ADD answers after its deadline and its rollback; a few seconds more for the reply itself.
const longestCallS = (DEFAULT_CALL_DEADLINE_MS + CLEANUP_TIMEOUT_MS) / 1000;
const MARGIN_S = 5;

describe('waits around a call outlast the longest call', () => {
  it.each([
    ['the shim (DEFAULT_TIMEOUT_S)', 'native/shim/berth-shim.c', /DEFAULT_TIMEOUT_S = (\d+)/],
    ["systemd's TimeoutStopSec", 'deploy/systemd/berthd.service', /^TimeoutStopSec=(\d+)$/m],
    ["the DaemonSet's grace period", 'deploy/berth.yaml', /terminationGracePeriodSeconds: (\d+)/],
    ["the README's shim default", 'README.md', /`BERTH_SHIM_TIMEOUT` seconds \(default (\d+)/],
  ])('%s', (_what, path, re) => {
    const seconds = number(read(path), re);
    expect(seconds).toBeGreaterThanOrEqual(longestCallS + MARGIN_S);
  });
});
