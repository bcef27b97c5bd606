// berthd started before its network was up: the underlay detection runs again until it finds one, and
// publishes it once (src/cluster/routing.ts retryUnderlayDetection). Detection and publication are stubs.
import { describe, expect, test, vi } from 'vitest';
import { retryUnderlayDetection } from '../../src/cluster/routing';
import type { Underlay } from '../../src/cluster/underlay';

describe('underlay detection after the start', () => {
  test('tries again past empty answers and failures, publishes the first underlay found, then stops', async () => {
    const answers: (Underlay | Error)[] = [{}, new Error('no route'), { underlay: '198.18.0.5' }];
    let detections = 0;
    const published: Underlay[] = [];
    const lines: string[] = [];
    const stop = retryUnderlayDetection({
      detect: () => {
        const a = answers[Math.min(detections++, answers.length - 1)]!;
        return a instanceof Error ? Promise.reject(a) : Promise.resolve(a);
      },
      publish: (u) => {
        published.push(u);
        return Promise.resolve();
      },
      log: (line) => void lines.push(line),
      everyMs: 5,
    });
    try {
      await vi.waitFor(() => expect(published).toEqual([{ underlay: '198.18.0.5' }]), { timeout: 2000 });
      await new Promise((r) => setTimeout(r, 50));
      expect(detections).toBe(3); // nothing after the one it published
      expect(lines.join('\n')).toMatch(/underlay detected after the start: 198\.18\.0\.5; published/);
    } finally {
      stop();
    }
  });

  test('a failed publication is tried again; stop ends the attempts', async () => {
    let publications = 0;
    const stop = retryUnderlayDetection({
      detect: () => Promise.resolve({ underlay6: 'fd00:5::5' }),
      publish: () => (++publications < 3 ? Promise.reject(new Error('etcd away')) : Promise.resolve()),
      log: () => undefined,
      everyMs: 5,
    });
    await vi.waitFor(() => expect(publications).toBe(3), { timeout: 2000 });
    stop();
    await new Promise((r) => setTimeout(r, 50));
    expect(publications).toBe(3);

    let detections = 0;
    const stopEarly = retryUnderlayDetection({
      detect: () => Promise.resolve((detections++, {})),
      publish: () => Promise.resolve(),
      log: () => undefined,
      everyMs: 5,
    });
    await vi.waitFor(() => expect(detections).toBeGreaterThan(1), { timeout: 2000 });
    stopEarly();
    const at = detections;
    await new Promise((r) => setTimeout(r, 50));
    expect(detections).toBeLessThanOrEqual(at + 1); // at most the attempt already under way
  });
});
