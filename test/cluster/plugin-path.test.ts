// The plugin path never loads the etcd client: berth-ipam ADD on a cluster network (daemon down) runs on
// cluster.json alone. Checked on the built executable, from the modules Node actually loaded.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';

const repo = join(__dirname, '..', '..');

test('berth-ipam ADD on a cluster network loads nothing of src/cluster/ and never claims', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bt-plugin-path-'));
  try {
    const hook = join(dir, 'hook.js');
    const out = join(dir, 'modules.json');
    writeFileSync(
      hook,
      `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(Object.keys(require.cache))));`,
    );
    const conf = {
      cniVersion: '1.1.0',
      name: 'ctnet',
      type: 'berth-ipam',
      ipam: {
        type: 'berth-ipam',
        dataDir: join(dir, 'data'),
        daemonSocket: '',
        ranges: [[{ subnet: '198.18.0.0/16' }]],
        cluster: {},
      },
    };
    const r = spawnSync(process.execPath, ['--require', hook, join(repo, 'bin', 'berth-ipam')], {
      input: JSON.stringify(conf),
      env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/x', CNI_IFNAME: 'eth0', CNI_PATH: '/x' },
      encoding: 'utf8',
    });
    // No block is owned and the daemon is not running: try again later, and why.
    expect(JSON.parse(r.stdout) as { code: number; msg: string }).toMatchObject({
      code: 11,
      msg: expect.stringMatching(/berthd .* is not running/) as unknown,
    });
    const loaded = JSON.parse(readFileSync(out, 'utf8')) as string[];
    expect(loaded.some((m) => m.includes(join('ipam', 'cluster-blocks.js')))).toBe(true);
    expect(loaded.filter((m) => /[/\\]cluster[/\\]/.test(m))).toEqual([]);
    expect(loaded.some((m) => /etcd/.test(m))).toBe(false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
