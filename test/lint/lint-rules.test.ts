// The lint rules the house relies on really fire: a wrong-way import between rooms and a promise nobody
// awaits each make `eslint` fail. Probe files are written into src/ (the room rule reads the folder) and
// removed afterwards, also when the test fails.
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ESLint } from 'eslint';
import { afterAll, describe, expect, it } from 'vitest';

const repo = join(__dirname, '..', '..');
const probes: string[] = [];

function probe(room: string, body: string): string {
  const file = join(repo, 'src', room, `lint-probe-${process.pid}-${probes.length}.ts`);
  writeFileSync(file, body);
  probes.push(file);
  return file;
}

// Every probe exists before the one ESLint run: typescript-eslint builds its program once per process,
// so a file written after that program was made would only get "not found in the project".
const wrongWayImport = probe(
  'cni-spec',
  "import { bridgeHandlers } from '../bridge/handlers';\nexport const x = bridgeHandlers;\n",
);
const wrongWayRequire = probe(
  'ipam',
  "export const load = (): unknown => require('../netlink/rtnetlink');\n",
);
const allowedImport = probe(
  'bridge',
  "import { CniError } from '../cni-spec/errors';\nexport const x = CniError;\n",
);
const pastTheDoor = probe(
  'bridge',
  "import { toKernelCniError } from '../netlink/errors';\nexport const x = toKernelCniError;\n",
);
const throughTheDoor = probe(
  'bridge',
  "import { toKernelCniError } from './kernel';\nexport const x = toKernelCniError;\n",
);
const floatingPromise = probe(
  'ipam',
  'async function work(): Promise<void> {}\nexport function start(): void {\n  work();\n}\n',
);
let results: Map<string, string[]> | undefined;

async function ruleIdsFor(file: string): Promise<string[]> {
  if (results === undefined) {
    const eslint = new ESLint({ cwd: repo });
    const all = await eslint.lintFiles(probes);
    results = new Map(all.map((r) => [r.filePath, r.messages.map((m) => m.ruleId ?? `fatal: ${m.message}`)]));
  }
  return results.get(file) ?? [`no result for ${file}`];
}

afterAll(() => {
  for (const f of probes) rmSync(f, { force: true });
});

describe('lint', { timeout: 120_000 }, () => {
  it('refuses the protocol room importing the bridge room', async () => {
    expect(await ruleIdsFor(wrongWayImport)).toContain('berth/room-boundaries');
  });

  it('refuses a lazy require() from the IPAM room into the kernel room', async () => {
    expect(await ruleIdsFor(wrongWayRequire)).toContain('berth/room-boundaries');
  });

  it('accepts an import the room table allows', async () => {
    const ids = await ruleIdsFor(allowedImport);
    expect(ids.filter((id) => id.startsWith('fatal'))).toEqual([]);
    expect(ids).not.toContain('berth/room-boundaries');
  });

  it('refuses a bridge file reaching the kernel room past bridge/kernel.ts, its one door', async () => {
    expect(await ruleIdsFor(pastTheDoor)).toContain('berth/room-boundaries');
    const ids = await ruleIdsFor(throughTheDoor);
    expect(ids.filter((id) => id.startsWith('fatal'))).toEqual([]);
    expect(ids).not.toContain('berth/room-boundaries');
  });

  it('refuses a floating promise', async () => {
    expect(await ruleIdsFor(floatingPromise)).toContain('@typescript-eslint/no-floating-promises');
  });
});
