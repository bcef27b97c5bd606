// Fake CNI plugins for runtime tests: real executables in a temp dir that record what they received
// (environment and stdin) and answer as told, so tests check what a plugin really sees.
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Behaviour is steered by files in $FAKE_DIR: fail-<name>-<COMMAND> makes that call fail with code 11,
// out-<name>-<COMMAND> is printed as that call's answer.
const SCRIPT = `#!/bin/bash
name=$(basename "$0")
in=$(cat)
dir=\${FAKE_DIR:?FAKE_DIR not set}
n=$(ls "$dir"/calls 2>/dev/null | wc -l)
mkdir -p "$dir/calls"
rec="$dir/calls/$(printf %03d "$n")-$name-$CNI_COMMAND"
printf '%s' "$in" > "$rec.stdin"
env -0 > "$rec.env"
if [ -e "$dir/fail-$name-$CNI_COMMAND" ]; then
  printf '{"code":11,"msg":"%s told to fail","details":"%s"}' "$name" "$CNI_COMMAND"
  exit 1
fi
if [ -e "$dir/out-$name-$CNI_COMMAND" ]; then
  cat "$dir/out-$name-$CNI_COMMAND"
  exit 0
fi
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"interfaces":[{"name":"%s"}],"ips":[{"address":"198.18.7.%d/24","interface":0}]}' "$name" "$((n + 1))"
fi
exit 0
`;

export interface Call {
  plugin: string;
  command: string;
  stdin: Record<string, unknown>;
  rawStdin: string;
  env: Record<string, string>;
}

export interface FakePlugins {
  root: string;
  binDir: string;
  confDir: string;
  /** Where the fakes record calls (set FAKE_DIR to it). */
  dir: string;
  writeConf(file: string, content: unknown): void;
  failOn(plugin: string, command: string): void;
  /** The plugin prints `stdout` (and exits 0) for that command. */
  answer(plugin: string, command: string, stdout: string): void;
  calls(): Call[];
  resetCalls(): void;
  cleanup(): void;
}

export function makeFakePlugins(names: string[]): FakePlugins {
  const root = mkdtempSync(join(tmpdir(), `bt${process.pid}-cli-`));
  const binDir = join(root, 'bin');
  const confDir = join(root, 'net.d');
  const dir = join(root, 'fake');
  for (const d of [binDir, confDir, dir]) mkdirSync(d);
  for (const n of names) {
    writeFileSync(join(binDir, n), SCRIPT);
    chmodSync(join(binDir, n), 0o755);
  }
  return {
    root,
    binDir,
    confDir,
    dir,
    writeConf: (file, content) =>
      writeFileSync(join(confDir, file), typeof content === 'string' ? content : JSON.stringify(content)),
    failOn: (plugin, command) => writeFileSync(join(dir, `fail-${plugin}-${command}`), ''),
    answer: (plugin, command, stdout) => writeFileSync(join(dir, `out-${plugin}-${command}`), stdout),
    calls: () => {
      let files: string[];
      try {
        files = readdirSync(join(dir, 'calls'));
      } catch {
        return [];
      }
      return files
        .filter((f) => f.endsWith('.stdin'))
        .sort()
        .map((f) => {
          const base = f.slice(0, -'.stdin'.length);
          const [, plugin, command] = /^\d+-(.+)-([A-Z]+)$/.exec(base) ?? [];
          const rawStdin = readFileSync(join(dir, 'calls', f), 'utf8');
          const env: Record<string, string> = {};
          for (const kv of readFileSync(join(dir, 'calls', `${base}.env`), 'utf8').split('\0')) {
            const eq = kv.indexOf('=');
            if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
          }
          return { plugin: plugin ?? '', command: command ?? '', stdin: JSON.parse(rawStdin), rawStdin, env };
        });
    },
    resetCalls: () => rmSync(join(dir, 'calls'), { recursive: true, force: true }),
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
}
