// Who may change anything through berthd: a refusal says why the caller's uid is not known, rather than
// only "unknown" (an addon that does not load made berthd refuse every caller without a word).
import type * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import { notAWriter } from '../../src/daemon/cni-route';

describe('notAWriter', () => {
  it('a request not on a unix socket: unknown, and why', () => {
    const req = { socket: {} } as unknown as http.IncomingMessage;
    expect(notAWriter(req, [0])).toBe('peer uid unknown: not a unix socket');
  });
});
