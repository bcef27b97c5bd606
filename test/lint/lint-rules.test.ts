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

async function ruleIdsFor(file: string): Promise<string[]> {
  const eslint = new ESLint({ cwd: repo });
  const [result] = await eslint.lintFiles([file]);
  return (result?.messages ?? []).map((m) => m.ruleId ?? `fatal: ${m.message}`);
}

afterAll(() => {
  for (const f of probes) rmSync(f, { force: true });
});

describe('lint', { timeout: 120_000 }, () => {
  it('refuses the protocol room importing the bridge room', async () => {
    const file = probe(
      'cni-spec',
      "import { bridgeHandlers } from '../bridge/handlers';\nexport const x = bridgeHandlers;\n",
    );
    expect(await ruleIdsFor(file)).toContain('berth/room-boundaries');
  });

  it('refuses a lazy require() from the IPAM room into the kernel room', async () => {
    const file = probe('ipam', "export const load = (): unknown => require('../netlink/rtnetlink');\n");
    expect(await ruleIdsFor(file)).toContain('berth/room-boundaries');
  });

  it('accepts an import the room table allows', async () => {
    const file = probe(
      'bridge',
      "import { CniError } from '../cni-spec/errors';\nexport const x = CniError;\n",
    );
    expect(await ruleIdsFor(file)).not.toContain('berth/room-boundaries');
  });

  it('refuses a floating promise', async () => {
    const file = probe(
      'ipam',
      'async function work(): Promise<void> {}\nexport function start(): void {\n  work();\n}\n',
    );
    expect(await ruleIdsFor(file)).toContain('@typescript-eslint/no-floating-promises');
  });
});
