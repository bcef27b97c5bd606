// The spec versions berth speaks and what each can express: one place for every version question.
import { CniError, ErrorCode } from './errors';

/** Every spec version berth accepts, oldest first; VERSION advertises exactly this list. */
export const SUPPORTED_VERSIONS = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type SpecVersion = (typeof SUPPORTED_VERSIONS)[number];

/** The version of the internal result model; VERSION answers with it whatever the input says. */
export const IMPLEMENTED_VERSION = '1.1.0' satisfies SpecVersion;

/** The oldest config version allowed to use each command that arrived after 0.1.0. */
export const COMMAND_MIN_VERSION = { CHECK: '0.4.0', GC: '1.1.0', STATUS: '1.1.0' } as const;

const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$/;

export function isSupportedVersion(v: string): v is SpecVersion {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** True for a plain `major.minor.patch` string (no pre-release tags: the spec never used them). */
export function isVersionString(v: string): boolean {
  return SEMVER.test(v);
}

/** Orders two `major.minor.patch` strings; throws on anything else, which callers validate first. */
export function compareVersions(a: string, b: string): number {
  const pa = versionParts(a);
  const pb = versionParts(b);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

function versionParts(v: string): number[] {
  const m = SEMVER.exec(v);
  if (m === null) throw new RangeError(`not a version string: "${v}"`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

export function versionAtLeast(v: string, min: string): boolean {
  return compareVersions(v, min) >= 0;
}

// Capability predicates: the dispatcher, config loaders and tests ask these rather than compare strings.

/** CHECK exists from 0.4.0. */
export function specHasCheck(v: string): boolean {
  return versionAtLeast(v, COMMAND_MIN_VERSION.CHECK);
}
/** GC exists from 1.1.0. */
export function specHasGc(v: string): boolean {
  return versionAtLeast(v, COMMAND_MIN_VERSION.GC);
}
/** STATUS exists from 1.1.0. */
export function specHasStatus(v: string): boolean {
  return versionAtLeast(v, COMMAND_MIN_VERSION.STATUS);
}
/** GC and STATUS arrived together in 1.1.0. */
export function specHasGcStatus(v: string): boolean {
  return specHasGc(v) && specHasStatus(v);
}
/** From 0.3.0 a result lists interfaces and any number of IPs; 0.1/0.2 hold one ip4 and one ip6. */
export function specHasMultipleIPs(v: string): boolean {
  return versionAtLeast(v, '0.3.0');
}
/** 0.3.0 up to 0.4.0 tag every IP with `version: "4" | "6"`; 1.0.0 dropped it. */
export function specHasIpVersionField(v: string): boolean {
  return specHasMultipleIPs(v) && !versionAtLeast(v, '1.0.0');
}
/** Interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/`scope` are 1.1.0. */
export function specHasResultExtras(v: string): boolean {
  return versionAtLeast(v, '1.1.0');
}
/** DEL receives prevResult from 0.4.0 on. */
export function specHasPrevResultOnDel(v: string): boolean {
  return versionAtLeast(v, '0.4.0');
}

/** The VERSION answer. */
export interface VersionInfo {
  cniVersion: string;
  supportedVersions: string[];
}

export function versionInfo(): VersionInfo {
  return { cniVersion: IMPLEMENTED_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] };
}

/** Code 1 with the supported list in `details`, as skel words it (libcni shows details to users). */
export function unsupportedVersionError(what: string, v: string): CniError {
  return new CniError(
    ErrorCode.IncompatibleCniVersion,
    `incompatible CNI versions: ${what} is "${v}"`,
    `${what} is ${JSON.stringify(v)}, plugin supports ${JSON.stringify(SUPPORTED_VERSIONS)}`,
  );
}
