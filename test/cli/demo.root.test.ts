// `berth demo` for real (root): the ping crosses, and afterwards — also after Ctrl-C half way — no
// namespace, bridge or temp dir of the run is left.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import { expect, test } from 'vitest';
import { bridgeLockFile, networkLockFile } from '../../src/bridge/lock';

const BERTH = resolve(__dirname, '../../bin/berth');

function leftovers(prefix: string): string[] {
  const netns = execFileSync('ip', ['netns', 'list'])
    .toString()
    .split('\n')
    .filter((l) => l.startsWith(prefix));
  const links = execFileSync('ip', ['-o', 'link', 'show'])
    .toString()
    .split('\n')
    .filter((l) => l.includes(prefix));
  const temp = readdirSync(tmpdir()).filter((f) => f.startsWith(prefix));
  const locks = [networkLockFile('/run/berth', `${prefix}-net`), bridgeLockFile('/run/berth', `${prefix}br`)];
  return [...netns, ...links, ...temp, ...locks.filter((l) => existsSync(l))];
}

test('berth demo attaches two pods, pings across, and removes everything', () => {
  const r = spawnSync(process.execPath, [BERTH, 'demo'], { encoding: 'utf8', timeout: 60_000 });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/3 packets transmitted, 3 received/);
  const prefix = /# network (bt\d+d)-net/.exec(r.stdout)?.[1] as string;
  expect(prefix).toBe(`bt${r.pid}d`);
  // Both pods had an address in their netns (the demo prints `ip -n … addr`).
  expect(r.stdout.match(/eth0@if\d+\s+UP\s+198\.1[89]\.\d+\.\d+\/24/g)).toHaveLength(2);
  expect(leftovers(prefix)).toEqual([]);
});

test('Ctrl-C half way: exit 130 and the same cleanup', async () => {
  const child = spawn(process.execPath, [BERTH, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const prefix = `bt${child.pid}d`;
  let out = '';
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((done) => {
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      // Interrupt while the ping runs: both pods are attached, so there is something to clean up.
      if (out.includes('ping -n -c 3')) child.kill('SIGINT');
    });
    child.on('close', (c) => done(c));
  });
  expect(out).toContain('ping -n -c 3');
  expect(out).not.toContain('3 received');
  expect(err).toContain('berth demo: interrupted');
  expect(code).toBe(130);
  expect(leftovers(prefix)).toEqual([]);
  expect(existsSync(`/run/netns/${prefix}-a`)).toBe(false);
});
