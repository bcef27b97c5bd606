// The example configs in conf/ are documentation people copy: each must load as a runtime loads it and
// pass the berth plugins' own config parsers.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { parseBridgeConf } from '../../src/bridge/config';
import { loadNetworkConfList } from '../../src/cli/runtime/conflist';
import { parseIpamConfig } from '../../src/ipam/config';

const confDir = join(__dirname, '../../conf');
const files = readdirSync(confDir).filter((f) => f.endsWith('.conflist'));

test('conf/ holds the IPv4, dual-stack, VLAN and L2-only examples, each explained in conf/README.md', () => {
  expect(files).toEqual([
    '10-berth-ipv4.conflist',
    '20-berth-dualstack.conflist',
    '30-berth-vlan.conflist',
    '40-berth-l2only.conflist',
  ]);
  const readme = readFileSync(join(confDir, 'README.md'), 'utf8');
  for (const f of files) expect(readme).toContain(f);
});

test.each(files)('%s loads like libcni loads it and passes the plugins’ config parsers', async (file) => {
  const { name } = JSON.parse(readFileSync(join(confDir, file), 'utf8')) as { name: string };
  const list = await loadNetworkConfList(confDir, name);
  expect(list.file).toBe(join(confDir, file));
  // cniVersions lets a 1.1.0 runtime use GC/STATUS while older runtimes (Debian's libcni) stay on 1.0.0.
  expect(list.cniVersion).toBe('1.1.0');
  for (const plugin of list.plugins) {
    expect(plugin.type).toBe('berth-bridge');
    const config = { ...plugin, name: list.name, cniVersion: list.cniVersion };
    const bridge = parseBridgeConf({ config, cniArgs: new Map(), runtimeConfig: () => undefined });
    if (file.includes('l2only')) {
      expect(bridge.ipamType).toBeUndefined();
      continue;
    }
    expect(bridge.ipamType).toBe('berth-ipam');
    const ipam = parseIpamConfig({
      config,
      cniVersion: list.cniVersion,
      cniArgs: new Map(),
      args: {},
      runtimeConfig: () => undefined,
    });
    expect(ipam.rangeSets.length).toBe(file.includes('dualstack') ? 2 : 1);
  }
});
