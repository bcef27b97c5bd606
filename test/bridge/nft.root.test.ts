// Masquerade and spoof-check element management against the real nft, in a private table.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { withTablesLock } from '../../src/bridge/lock';
import { addMasquerade, masqNames, masqueradeAddresses, removeMasquerade } from '../../src/bridge/masquerade';
import { attachmentTag, type Nft, systemNft, type TablesLock } from '../../src/bridge/nft';
import { addSpoofCheck, removeSpoofCheck, spoofCheckEntries, spoofNames } from '../../src/bridge/spoofcheck';

const table = `bt${process.pid}nft`;
const runDir = mkdtempSync(join(tmpdir(), `bt${process.pid}nft-run-`));
const tablesLock: TablesLock = (fn) => withTablesLock(runDir, fn);
afterAll(() => rmSync(runDir, { recursive: true, force: true }));
const exists = (family: string): boolean => {
  try {
    execFileSync('nft', ['list', 'table', family, table], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const list = (family: string): string => {
  try {
    return execFileSync('nft', ['list', 'table', family, table], { encoding: 'utf8' });
  } catch {
    return '';
  }
};

afterEach(() => {
  for (const family of ['inet', 'bridge']) {
    try {
      execFileSync('nft', ['delete', 'table', family, table], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
});

/**
 * The real nft, with the first two listings held until both are done: two removals that each list the
 * table before either applies its change, as two networks' last DELs on two cores can.
 */
function listingsMeet(): Nft {
  let listed = 0;
  let meet!: () => void;
  const both = new Promise<void>((resolve) => (meet = resolve));
  return {
    apply: (cmds) => systemNft.apply(cmds),
    listTable: async (family, name, focus) => {
      const objects = await systemNft.listTable(family, name, focus);
      if (++listed === 2) meet();
      if (listed <= 2) await both;
      return objects;
    },
    listChain: (family, table, chain) => systemNft.listChain(family, table, chain),
  };
}

describe('masquerade sets', () => {
  const scope = { nft: systemNft, table, network: 'bt-net-a', tablesLock };
  const names = masqNames('bt-net-a');
  const masqFocusSets = [names.c4, names.c6, names.s4, names.s6];
  const v4 = (ip: string) => ({ ip, family: 4 as const, subnet: '198.18.128.0', prefixLen: 24 });

  it('adds tagged elements, removes them by attachment, and removes the network objects with the last one', async () => {
    await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, [
      v4('198.18.128.2'),
      { ip: 'fd00:b::2', family: 6, subnet: 'fd00:b::', prefixLen: 64 },
    ]);
    await addMasquerade(scope, { containerId: 'c2', ifname: 'eth0' }, [v4('198.18.128.3')]);
    const text = list('inet');
    const n = masqNames('bt-net-a');
    expect(text).toContain(`chain ${n.chain}`);
    expect(text).toContain('198.18.128.2 comment "c1/eth0"');
    expect(text).toContain('198.18.128.3 . 198.18.128.0/24 comment "c2/eth0"');
    expect(text).toContain('fd00:b::2 comment "c1/eth0"');
    // exactly two jumps, even after a second ADD
    expect(text.match(new RegExp(`jump ${n.chain}`, 'g'))).toHaveLength(2);
    expect(await masqueradeAddresses(scope, attachmentTag('c1', 'eth0'))).toEqual([
      '198.18.128.2',
      'fd00:b::2',
    ]);

    expect(await removeMasquerade(scope, (t) => t === 'c1/eth0')).toEqual(['c1/eth0']);
    const after = list('inet');
    expect(after).not.toContain('c1/eth0');
    expect(after).toContain('c2/eth0');

    await removeMasquerade(scope, (t) => t === 'c2/eth0');
    // the last network's last element takes the whole table with it
    expect(exists('inet')).toBe(false);
    // removing again is a no-op
    expect(await removeMasquerade(scope, (t) => t === 'c2/eth0')).toEqual([]);
  });

  it('a ruleset loaded twice (jumps doubled) or a flushed chain: CHECK tells, the next ADD repairs', async () => {
    const n = masqNames('bt-net-a');
    const c1 = attachmentTag('c1', 'eth0');
    await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, [v4('198.18.128.2')]);
    // `nft list ruleset > f; nft -f f` without a flush: every rule twice (the chain's too)
    const saved = execFileSync('nft', ['list', 'table', 'inet', table], { encoding: 'utf8' });
    execFileSync('nft', ['-f', '-'], { input: saved });
    expect(list('inet').match(new RegExp(`jump ${n.chain}`, 'g'))).toHaveLength(4);
    // NAT still works with doubled jumps, but the chain holds every rule twice: not the setup's, so
    // CHECK fails until an ADD rewrites it
    await addMasquerade(scope, { containerId: 'c2', ifname: 'eth0' }, [v4('198.18.128.3')]);
    let text = list('inet');
    expect(text.match(new RegExp(`jump ${n.chain}`, 'g'))).toHaveLength(2);
    expect(text.match(/^\s*masquerade$/gm)).toHaveLength(1);
    expect(await masqueradeAddresses(scope, c1)).toEqual(['198.18.128.2']);
    // the chain emptied by hand: no NAT any more, and CHECK says so; an ADD fills it again
    execFileSync('nft', ['flush', 'chain', 'inet', table, n.chain]);
    expect(await masqueradeAddresses(scope, c1)).toEqual([]);
    await addMasquerade(scope, { containerId: 'c3', ifname: 'eth0' }, [v4('198.18.128.4')]);
    text = list('inet');
    expect(text.match(/^\s*masquerade$/gm)).toHaveLength(1);
    expect(text.match(new RegExp(`jump ${n.chain}`, 'g'))).toHaveLength(2);
    expect(await masqueradeAddresses(scope, c1)).toEqual(['198.18.128.2']);
  });

  it('an address that comes back replaces a stale element of another attachment', async () => {
    await addMasquerade(scope, { containerId: 'old', ifname: 'eth0' }, [v4('198.18.128.9')]);
    await addMasquerade(scope, { containerId: 'new', ifname: 'eth0' }, [v4('198.18.128.9')]);
    const text = list('inet');
    expect(text).toContain('198.18.128.9 comment "new/eth0"');
    expect(text).toContain('198.18.128.9 . 198.18.128.0/24 comment "new/eth0"');
    expect(text).not.toContain('old/eth0');
  });

  it('an ADD to a network set up reads none of its elements; a repeated one does, and changes nothing', async () => {
    for (const i of [2, 3, 4])
      await addMasquerade(scope, { containerId: `c${i}`, ifname: 'eth0' }, [v4(`198.18.128.${i}`)]);
    const focuses: (readonly string[] | undefined)[] = [];
    const recording: Nft = {
      ...systemNft,
      listTable: (family, name, focus) => {
        focuses.push(focus?.sets);
        return systemNft.listTable(family, name, focus);
      },
    };
    const watched = { ...scope, nft: recording };
    await addMasquerade(watched, { containerId: 'c5', ifname: 'eth0' }, [v4('198.18.128.5')]);
    expect(focuses).toEqual([[]]);
    expect(list('inet')).toContain('198.18.128.5 . 198.18.128.0/24 comment "c5/eth0"');
    focuses.length = 0;
    const before = list('inet');
    await addMasquerade(watched, { containerId: 'c5', ifname: 'eth0' }, [v4('198.18.128.5')]);
    expect(focuses).toEqual([[], masqFocusSets]);
    expect(list('inet')).toBe(before);
  });

  it('leaves other networks alone', async () => {
    const other = { ...scope, network: 'bt-net-b' };
    await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, [v4('198.18.128.2')]);
    await addMasquerade(other, { containerId: 'c1', ifname: 'eth0' }, [v4('198.18.129.2')]);
    await removeMasquerade(scope, () => true);
    const text = list('inet');
    expect(text).toContain(masqNames('bt-net-b').chain);
    expect(text).toContain('198.18.129.2');
    expect(text).not.toContain(masqNames('bt-net-a').chain);
    await removeMasquerade(other, () => true);
    expect(exists('inet')).toBe(false);
  });

  it("keeps the table while someone else's rule is in its base chain", async () => {
    await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, [v4('198.18.128.2')]);
    execFileSync('nft', ['add', 'rule', 'inet', table, 'postrouting', 'counter']);
    await removeMasquerade(scope, () => true);
    const text = list('inet');
    expect(text).toContain('counter');
    expect(text).not.toContain(masqNames('bt-net-a').chain);
  });

  it('two networks removing their last elements at once leave no table behind', async () => {
    const other = { ...scope, network: 'bt-net-b' };
    await addMasquerade(scope, { containerId: 'c1', ifname: 'eth0' }, [v4('198.18.128.2')]);
    await addMasquerade(other, { containerId: 'c2', ifname: 'eth0' }, [
      { ip: '198.18.129.2', family: 4, subnet: '198.18.129.0', prefixLen: 24 },
    ]);
    const nft = listingsMeet();
    await Promise.all([
      removeMasquerade({ ...scope, nft }, () => true),
      removeMasquerade({ ...other, nft }, () => true),
    ]);
    expect(list('inet')).toBe('');
  });

  it('removing from a table holding only an empty base chain deletes it (leftover of an older run)', async () => {
    execFileSync('nft', ['add', 'table', 'inet', table]);
    execFileSync('nft', [
      'add',
      'chain',
      'inet',
      table,
      'postrouting',
      '{ type nat hook postrouting priority 100; policy accept; }',
    ]);
    expect(await removeMasquerade(scope, () => true)).toEqual([]);
    expect(exists('inet')).toBe(false);
  });
});

describe('spoof-check sets', () => {
  const scope = { nft: systemNft, table, network: 'bt-net-a', tablesLock };
  it('adds one rule per network and tagged (port, mac) pairs; removes them', async () => {
    await addSpoofCheck(scope, {
      containerId: 'c1',
      ifname: 'eth0',
      hostVeth: 'veth00000001',
      mac: '02:00:00:00:00:01',
    });
    await addSpoofCheck(scope, {
      containerId: 'c2',
      ifname: 'eth0',
      hostVeth: 'veth00000002',
      mac: '02:00:00:00:00:02',
    });
    const text = list('bridge');
    const n = spoofNames('bt-net-a');
    expect(text.match(new RegExp(`@${n.allowed} drop`, 'g'))).toHaveLength(1);
    expect(await spoofCheckEntries(scope, 'c2/eth0')).toEqual([
      { port: 'veth00000002', mac: '02:00:00:00:00:02' },
    ]);
    await removeSpoofCheck(scope, (t) => t === 'c1/eth0');
    expect(list('bridge')).not.toContain('veth00000001');
    await removeSpoofCheck(scope, (t) => t === 'c2/eth0');
    expect(exists('bridge')).toBe(false);
  });

  it('CHECK: a port taken out of the guarded set is unchecked (missing); a doubled rule is not', async () => {
    const pod = { containerId: 'c1', ifname: 'eth0', hostVeth: 'veth00000001', mac: '02:00:00:00:00:01' };
    await addSpoofCheck(scope, pod);
    const n = spoofNames('bt-net-a');
    const saved = execFileSync('nft', ['list', 'table', 'bridge', table], { encoding: 'utf8' });
    execFileSync('nft', ['-f', '-'], { input: saved });
    expect(list('bridge').match(new RegExp(`@${n.allowed} drop`, 'g'))).toHaveLength(2);
    expect(await spoofCheckEntries(scope, 'c1/eth0')).toEqual([{ port: pod.hostVeth, mac: pod.mac }]);
    execFileSync('nft', ['delete', 'element', 'bridge', table, n.ports, `{ "${pod.hostVeth}" }`]);
    expect(await spoofCheckEntries(scope, 'c1/eth0')).toEqual([]);
  });

  it("keeps the table while another network's rule and sets are in it", async () => {
    const other = { ...scope, network: 'bt-net-b' };
    await addSpoofCheck(scope, {
      containerId: 'c1',
      ifname: 'eth0',
      hostVeth: 'veth00000001',
      mac: '02:00:00:00:00:01',
    });
    await addSpoofCheck(other, {
      containerId: 'c2',
      ifname: 'eth0',
      hostVeth: 'veth00000002',
      mac: '02:00:00:00:00:02',
    });
    await removeSpoofCheck(scope, () => true);
    const text = list('bridge');
    expect(text).not.toContain(spoofNames('bt-net-a').allowed);
    expect(text).toContain('veth00000002');
    await removeSpoofCheck(other, () => true);
    expect(exists('bridge')).toBe(false);
  });

  it('two networks removing their last pairs at once leave no table behind', async () => {
    const other = { ...scope, network: 'bt-net-b' };
    const port = (n: number) => ({
      containerId: `c${n}`,
      ifname: 'eth0',
      hostVeth: `veth0000000${n}`,
      mac: `02:00:00:00:00:0${n}`,
    });
    await addSpoofCheck(scope, port(1));
    await addSpoofCheck(other, port(2));
    const nft = listingsMeet();
    await Promise.all([
      removeSpoofCheck({ ...scope, nft }, () => true),
      removeSpoofCheck({ ...other, nft }, () => true),
    ]);
    expect(list('bridge')).toBe('');
  });
});
