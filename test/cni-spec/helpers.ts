// Shared expectations for the protocol tests: a thrown value is a CniError with a given code.
import { expect } from 'vitest';
import { CniError } from '../../src/cni-spec/errors';

export function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to throw');
}

export function expectCniError(fn: () => unknown, code: number, msg?: RegExp): CniError {
  const err = thrownBy(fn);
  expect(err).toBeInstanceOf(CniError);
  const cniErr = err as CniError;
  expect({ code: cniErr.code, msg: cniErr.message }).toMatchObject({ code });
  if (msg !== undefined) expect(cniErr.message).toMatch(msg);
  return cniErr;
}
