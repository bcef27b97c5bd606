// How the multi-call program knows which of its names it was started under: the launchers' script, or,
// in the single executable, the caller's argv[0] (argv[1] there) and the executable's own path.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { programFromInvocation, takeFallbackProgram } from '../../src/main';

describe('programFromInvocation', () => {
  it.each([
    // [argv, execPath, expected]
    [['/usr/bin/node', '/repo/bin/berth-bridge'], '/usr/bin/node', 'berth-bridge'],
    [['/usr/bin/node', '/repo/dist/main.js'], '/usr/bin/node', 'main'],
    // single executable: argv = [execPath, argv0, ...args]
    [['/opt/cni/bin/berth-ipam', '/opt/cni/bin/berth-ipam'], '/opt/cni/bin/berth-ipam', 'berth-ipam'],
    [['/opt/cni/bin/berth', 'berth', 'exec', 'add'], '/opt/cni/bin/berth', 'berth'],
    // a caller that sets argv[0] to something else: the hard link's name in execPath decides
    [['/opt/cni/bin/berth-bridge', 'cni-plugin'], '/opt/cni/bin/berth-bridge', 'berth-bridge'],
    // a symlink named berth-ipam resolves to berth in execPath, but argv[0] keeps the name
    [['/opt/cni/bin/berth', '/usr/local/bin/berth-ipam'], '/opt/cni/bin/berth', 'berth-ipam'],
    [['/opt/cni/bin/berth', '--version'], '/opt/cni/bin/berth', 'berth'],
  ] as const)('%j with execPath %s is %s', (argv, execPath, expected) => {
    expect(programFromInvocation(argv, execPath)).toBe(expected);
  });
});

describe('takeFallbackProgram (berth-shim runs `berth` under a plugin name)', () => {
  it.each([
    ['berth', 'berth-bridge', 'berth-bridge'],
    ['berth', 'berth-ipam', 'berth-ipam'],
    ['berth', 'something-else', 'berth'],
    ['berth-ipam', 'berth-bridge', 'berth-ipam'],
    ['berth', undefined, 'berth'],
  ] as const)(
    '%s with BERTH_FALLBACK_PROGRAM=%s runs %s, and the variable is gone',
    (name, value, expected) => {
      const env: NodeJS.ProcessEnv = {
        PATH: '/bin',
        ...(value === undefined ? {} : { BERTH_FALLBACK_PROGRAM: value }),
      };
      expect(takeFallbackProgram(name, env)).toBe(expected);
      expect(env).toEqual({ PATH: '/bin' });
    },
  );
});

describe('started under another name', () => {
  it('by a runtime (CNI_COMMAND set): a CNI error on stdout as well as the line on stderr; else stderr only', () => {
    const run = (env: Record<string, string>) =>
      spawnSync(
        process.execPath,
        ['-e', `require(${JSON.stringify(join(__dirname, '../../dist/main.js'))}).main('x-berth-bridge')`],
        {
          env: { PATH: process.env.PATH ?? '', ...env },
          encoding: 'utf8',
        },
      );
    const cni = run({ CNI_COMMAND: 'ADD' });
    expect(cni.status).toBe(1);
    expect(JSON.parse(cni.stdout)).toEqual({
      code: 999,
      msg: expect.stringMatching(/started as "x-berth-bridge"/),
    });
    expect(cni.stderr).toMatch(/^berth: started as "x-berth-bridge"/);
    const admin = run({});
    expect(admin.status).toBe(1);
    expect(admin.stdout).toBe('');
  });
});
