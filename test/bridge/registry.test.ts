// The attachment registry's record: the tag, and which nftables tables the ADD may use (DEL lists only those).
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  attachmentNftUse,
  registerAttachment,
  registeredTags,
  unregisterAttachment,
} from '../../src/bridge/registry';

let runDir: string;
beforeEach(() => {
  runDir = mkdtempSync(join(tmpdir(), 'berth-registry-'));
});
afterEach(() => rmSync(runDir, { recursive: true, force: true }));

const NONE = { masquerade: false, spoofCheck: false };

describe('attachment records', () => {
  it.each([
    [NONE],
    [{ masquerade: true, spoofCheck: false }],
    [{ masquerade: false, spoofCheck: true }],
    [{ masquerade: true, spoofCheck: true }],
  ])('keep the tag and the nft uses %o', (use) => {
    registerAttachment(runDir, 'net1', 'ctr1/eth0', use);
    expect(attachmentNftUse(runDir, 'net1', 'ctr1/eth0')).toEqual(use);
    expect(registeredTags(runDir, 'net1')).toEqual(['ctr1/eth0']);
    expect(attachmentNftUse(runDir, 'net2', 'ctr1/eth0')).toBeUndefined();
  });

  it('no record, or one without the nft line (written before records had it): undefined, DEL looks everywhere', () => {
    expect(attachmentNftUse(runDir, 'net1', 'ctr1/eth0')).toBeUndefined();
    registerAttachment(runDir, 'net1', 'ctr1/eth0', NONE);
    const dir = join(runDir, 'bridge', readdirSync(join(runDir, 'bridge'))[0]!);
    const file = join(dir, readdirSync(dir)[0]!);
    writeFileSync(file, 'ctr1/eth0');
    expect(attachmentNftUse(runDir, 'net1', 'ctr1/eth0')).toBeUndefined();
    expect(registeredTags(runDir, 'net1')).toEqual(['ctr1/eth0']);
  });

  it('a second ADD of the same attachment keeps what the first one recorded', () => {
    registerAttachment(runDir, 'net1', 'ctr1/eth0', { masquerade: true, spoofCheck: false });
    registerAttachment(runDir, 'net1', 'ctr1/eth0', { masquerade: false, spoofCheck: true });
    expect(attachmentNftUse(runDir, 'net1', 'ctr1/eth0')).toEqual({ masquerade: true, spoofCheck: true });
  });

  it('unregister removes the record', () => {
    registerAttachment(runDir, 'net1', 'ctr1/eth0', { masquerade: true, spoofCheck: true });
    unregisterAttachment(runDir, 'net1', 'ctr1/eth0');
    expect(attachmentNftUse(runDir, 'net1', 'ctr1/eth0')).toBeUndefined();
    expect(registeredTags(runDir, 'net1')).toEqual([]);
  });
});
