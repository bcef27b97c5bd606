// What `berth --version` reports: the package version and the build (git commit baked in by
// scripts/package.js), or "dev" when running from the source tree.
export interface BuildInfo {
  version: string;
  commit: string;
  builtAt?: string;
  node: string;
  singleExecutable: boolean;
  /** Whether V8 took the main bundle's code cache (set by src/sea/bootstrap.ts). */
  codeCache?: string;
}

/** The asset holding the build description (written by scripts/package.js). */
export const BUILD_ASSET = 'berth/build.json';

export function buildInfo(): BuildInfo {
  const sea = require('node:sea') as typeof import('node:sea');
  if (sea.isSea()) {
    const baked = JSON.parse(sea.getAsset(BUILD_ASSET, 'utf8')) as Omit<
      BuildInfo,
      'node' | 'singleExecutable'
    >;
    const codeCache = (globalThis as Record<symbol, unknown>)[Symbol.for('berth.codeCache')];
    return {
      ...baked,
      node: process.version,
      singleExecutable: true,
      ...(typeof codeCache === 'string' ? { codeCache } : {}),
    };
  }
  // dist/sea/ and src/sea/ both sit two levels below the package root.
  const pkg = require('../../package.json') as { version: string };
  return { version: pkg.version, commit: 'dev', node: process.version, singleExecutable: false };
}

export function describeBuild(info: BuildInfo = buildInfo()): string {
  const parts = [`build ${info.commit}`];
  if (info.builtAt !== undefined) parts.push(`built ${info.builtAt}`);
  parts.push(`node ${info.node}`, info.singleExecutable ? 'single executable' : 'from source');
  if (info.codeCache !== undefined) parts.push(`code cache ${info.codeCache}`);
  return `berth ${info.version} (${parts.join(', ')})\n`;
}
