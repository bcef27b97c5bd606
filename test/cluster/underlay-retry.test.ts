// berthd started before its network was up: the underlay detection runs again until it knows both
// families, and publishes each family it finds (src/cluster/routing.ts retryUnderlayDetection). Detection and
// publication are stubs.
import { describe, expect, test, vi } from 'vitest';
import { retryUnderlayDetection } from '../../src/cluster/routing';
import type { Underlay } from '../../src/cluster/underlay';

/** Runs the loop over scripted detections until `until` holds; returns what it published and logged. */
async function run(o: {
  have?: Underlay;
  answers: (Underlay | Error)[];
  publish?: (u: Underlay) => Promise<boolean>;
  until: (published: Underlay[], detections: number) => boolean;
}): Promise<{ published: Underlay[]; detections: number; lines: string[]; afterStop: () => number }> {
  let detections = 0;
  const published: Underlay[] = [];
  const lines: string[] = [];
  const stop = retryUnderlayDetection({
    have: o.have ?? {},
    detect: () => {
      const a = o.answers[Math.min(detections++, o.answers.length - 1)]!;
      return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
    },
    publish: async (u) => {
      const now = await (o.publish ?? (() => Promise.resolve(true)))(u);
      published.push(u);
      return now;
    },
    log: (line) => void lines.push(line),
    everyMs: 2,
    maxEveryMs: 5,
  });
  try {
    await vi.waitFor(() => expect(o.until(published, detections)).toBe(true), { timeout: 3000 });
  } finally {
    stop();
  }
  const at = detections;
  await new Promise((r) => setTimeout(r, 40));
  return { published, detections: at, lines, afterStop: () => detections - at };
}

describe('underlay detection after the start', () => {
  test('tries again past empty answers and failures; publishes each family as it turns up; ends with both', async () => {
    const r = await run({
      answers: [
        {},
        new Error('no route'),
        { underlay: '198.18.0.5' },
        { underlay: '198.18.0.5' },
        { underlay: '198.18.0.5', underlay6: 'fd00:5::5' },
      ],
      until: (p) => p.length === 2,
    });
    expect(r.published).toEqual([
      { underlay: '198.18.0.5' },
      { underlay: '198.18.0.5', underlay6: 'fd00:5::5' },
    ]);
    expect(r.detections).toBe(5); // none after both families were published
    expect(r.afterStop()).toBe(0);
    expect(r.lines.join('\n')).toMatch(
      /underlay detected after the start: 198\.18\.0\.5, fd00:5::5; published/,
    );
  });

  test('the family known at the start is kept, not replaced by what a later detection says', async () => {
    const r = await run({
      have: { underlay: '198.18.0.7' },
      answers: [{ underlay: '198.18.0.99', underlay6: 'fd00:7::7' }],
      until: (p) => p.length === 1,
    });
    expect(r.published).toEqual([{ underlay: '198.18.0.7', underlay6: 'fd00:7::7' }]);
  });

  test('a failed publication is tried again; one kept for the next registration is said so', async () => {
    let calls = 0;
    const r = await run({
      answers: [{ underlay6: 'fd00:5::5' }],
      publish: () => (++calls < 3 ? Promise.reject(new Error('etcd away')) : Promise.resolve(false)),
      until: (p) => p.length === 1,
    });
    expect(calls).toBe(3);
    expect(r.lines.join('\n')).toMatch(/could not publish the underlay \(etcd away\); trying again/);
    expect(r.lines.join('\n')).toMatch(/fd00:5::5; kept for the next registration/);
  });

  test('backs off from everyMs to maxEveryMs; a single-stack node stops waiting for the other family', async () => {
    vi.useFakeTimers();
    try {
      let clock = 0;
      const at: number[] = [];
      const stop = retryUnderlayDetection({
        have: { underlay: '198.18.0.7' },
        detect: () => {
          at.push(clock);
          return Promise.resolve({ underlay: '198.18.0.7' });
        },
        publish: () => Promise.resolve(true),
        log: () => undefined,
        everyMs: 100,
        maxEveryMs: 400,
        otherFamilyForMs: 2000,
        now: () => clock,
      });
      for (let i = 0; i < 40; i++) {
        clock += 50;
        await vi.advanceTimersByTimeAsync(50);
      }
      stop();
      // 100, then 200, then 400 apart, capped; none once 2 s have passed with IPv4 known and no IPv6.
      expect(at.slice(0, 5)).toEqual([100, 300, 700, 1100, 1500]);
      expect(at[at.length - 1]).toBeLessThanOrEqual(2300);
      expect(at.filter((t) => t > 2300)).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
  });

  test('both families known at the start: nothing to look for', async () => {
    let detections = 0;
    const stop = retryUnderlayDetection({
      have: { underlay: '198.18.0.7', underlay6: 'fd00:7::7' },
      detect: () => Promise.resolve((detections++, {})),
      publish: () => Promise.resolve(true),
      log: () => undefined,
      everyMs: 2,
    });
    await new Promise((r) => setTimeout(r, 40));
    stop();
    expect(detections).toBe(0);
  });

  test('stop ends the attempts', async () => {
    const r = await run({ answers: [{}], until: (_p, d) => d > 2 });
    expect(r.afterStop()).toBeLessThanOrEqual(1); // at most the attempt already under way
  });
});
