// berth daemon's option checks that are pure functions of the text given.
import { describe, expect, test } from 'vitest';
import { MAX_TIMER_MS, callDeadlineMs, daemonOptionsOf } from '../../src/cli/daemon';

describe('--call-timeout', () => {
  test('seconds become whole milliseconds', () => {
    expect(callDeadlineMs('120')).toBe(120_000);
    expect(callDeadlineMs('0.25')).toBe(250);
    expect(callDeadlineMs('0.001')).toBe(1);
    expect(callDeadlineMs(String(MAX_TIMER_MS / 1000))).toBe(MAX_TIMER_MS);
    // The duration syntax of the other daemon flags.
    expect(callDeadlineMs('2m')).toBe(120_000);
    expect(callDeadlineMs('500ms')).toBe(500);
    expect(callDeadlineMs('90s')).toBe(90_000);
  });

  test('refused: what no timer can hold, and what is no number', () => {
    // 0.0004 s rounds to 0 ms: every call would start cancelled.
    for (const bad of ['0', '-1', '0.0004', '5e6', 'Infinity', 'NaN', '', ' ', '2 m', '1d', '0ms', '600h'])
      expect(callDeadlineMs(bad), bad).toBeNull();
  });

  test('the largest accepted value is one AbortSignal.timeout takes', () => {
    const ms = callDeadlineMs(String(MAX_TIMER_MS / 1000))!;
    const signal = AbortSignal.timeout(ms);
    expect(signal.aborted).toBe(false);
  });
});

describe('--metrics-address', () => {
  test('HOST:PORT, [v6]:PORT and :PORT (every address, as Go writes it) pass; no port or a port over 65535 is refused', () => {
    for (const ok of ['127.0.0.1:9377', '[::1]:9377', ':9377']) {
      const errs: string[] = [];
      expect(typeof daemonOptionsOf({ metricsAddress: ok }, (l) => void errs.push(l)), ok).toBe('object');
    }
    for (const bad of ['9377', '127.0.0.1:', '127.0.0.1:65536']) {
      const errs: string[] = [];
      expect(
        daemonOptionsOf({ metricsAddress: bad }, (l) => void errs.push(l)),
        bad,
      ).toBe(2);
      expect(errs.join('')).toMatch(/--metrics-address wants HOST:PORT/);
    }
  });
});

describe('cluster durations that drive timers', () => {
  const cluster = { etcdEndpoints: 'http://127.0.0.1:2379' };
  test('--claim-timeout and --node-lease-ttl past what a timer holds are refused (a timer fired after 1 ms)', () => {
    for (const [flag, key, bad, ok] of [
      ['--claim-timeout', 'claimTimeout', '600h', '596h'],
      ['--node-lease-ttl', 'nodeLeaseTtl', '1800h', '1700h'],
    ] as const) {
      const errs: string[] = [];
      const wide = flag === '--node-lease-ttl' ? { ownershipHorizon: '4000h' } : {};
      expect(
        daemonOptionsOf({ ...cluster, ...wide, [key]: bad }, (l) => void errs.push(l)),
        bad,
      ).toBe(2);
      expect(errs.join('')).toMatch(
        new RegExp(`${flag} wants a duration such as 15s, 5m or 1h, at most \\d+h`),
      );
      expect(typeof daemonOptionsOf({ ...cluster, ...wide, [key]: ok }, () => undefined), ok).toBe('object');
    }
  });
});
