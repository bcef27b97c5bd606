// Spec-version rules a runtime applies before it runs a command (libcni's version gates).

/** The newest spec this runtime speaks: libcni's version.Current(). */
export const IMPLEMENTED_SPEC_VERSION = '1.1.0';

/** The oldest list version that may run each command; the others have no gate. */
export const COMMAND_MIN_VERSION = { CHECK: '0.4.0', GC: '1.1.0', STATUS: '1.1.0' } as const;

/** Numeric order of two `major.minor.patch` versions; throws on anything else (Go's version.ParseVersion). */
export function compareSpecVersions(a: string, b: string): number {
  const pa = parse(a);
  const pb = parse(b);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] as number) - (pb[i] as number);
    if (d !== 0) return d;
  }
  return 0;
}

export function atLeast(version: string, min: string): boolean {
  return compareSpecVersions(version, min) >= 0;
}

function parse(v: string): number[] {
  // Go's ParseVersion accepts "1" and "1.0" as well; missing parts are 0.
  const m = /^(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(v);
  if (m === null) throw new Error(`invalid version "${v}"`);
  return [Number(m[1]), Number(m[2] ?? 0), Number(m[3] ?? 0)];
}
