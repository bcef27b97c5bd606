// The clock of ownership ages counts the time a machine was suspended. A time namespace whose BOOTTIME is
// 100,000 s ahead of its MONOTONIC clock stands for a machine that was suspended that long: the node's
// clock must follow BOOTTIME there (performance.now(), on MONOTONIC, would not).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const SUSPENDED_S = 100_000;

it('suspendAwareClock is CLOCK_BOOTTIME: a suspend (BOOTTIME ahead of MONOTONIC) is counted', () => {
  const script = `
    const { suspendAwareClock } = require(${JSON.stringify(join(__dirname, '../../dist/cluster/node'))});
    const clock = suspendAwareClock();
    process.stdout.write(String(clock() - Number(process.hrtime.bigint() / 1000000n)));
  `;
  const r = spawnSync(
    'unshare',
    ['--time', '--boottime', String(SUSPENDED_S), '--fork', process.execPath, '-e', script],
    { encoding: 'utf8' },
  );
  expect(r.status, r.stderr).toBe(0);
  // BOOTTIME − MONOTONIC in ms: the namespace's offset plus this machine's own suspended time (≥ 0).
  expect(Number(r.stdout)).toBeGreaterThan(SUSPENDED_S * 1000 - 1000);
});
