#!/usr/bin/env node
// ADD and DEL latency of berth-bridge against the reference bridge (Debian's /usr/lib/cni/bridge), both with
// host-local, both driven by cnitool as a runtime would: a measurement, not a test.
// Run as root after `npm run build`:  node bench/bridge/add-del.js [runs=30] [--masq]
//
// Each run gets a fresh named pod namespace (created before the clock starts, deleted after it stops) and
// times one `cnitool add` then one `cnitool del` (wall clock of the whole cnitool process, which includes
// cnitool's own start-up, the plugin's start-up and the host-local execution). The bridge exists already,
// as it does for every ADD but a node's first. The two plugins alternate run by run so that drift on the
// machine hits both alike. --masq adds ipMasq (iptables for the reference, nftables for berth).
'use strict';
const { spawnSync } = require('node:child_process');
const { mkdtempSync, rmSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join, resolve } = require('node:path');
const {
  sh,
  trySh,
  msSince,
  pct,
  writeConflist,
  cnitoolSync,
  nftTables,
  removeNewEmptyNftTables,
} = require('./cnitool');

const args = process.argv.slice(2);
const masq = args.includes('--masq');
const runs = Math.max(20, Number(args.find((a) => /^\d+$/.test(a)) ?? 30));
const repo = resolve(__dirname, '..', '..');
const prefix = `bt${process.pid}`;

const work = mkdtempSync(join(tmpdir(), `${prefix}-bench-`));
const netconf = join(work, 'net.d');
const dataDir = join(work, 'ipam');
const runDir = join(work, 'run');
sh('mkdir', ['-p', netconf, dataDir, runDir]);

const plugins = [
  {
    label: 'reference bridge',
    type: 'bridge',
    net: `${prefix}ref`,
    bridge: `${prefix}r`,
    subnet: '198.18.160.0/22',
  },
  {
    label: 'berth-bridge',
    type: 'berth-bridge',
    net: `${prefix}berth`,
    bridge: `${prefix}b`,
    subnet: '198.18.164.0/22',
  },
];
for (const p of plugins) {
  const ipam = { type: 'host-local', dataDir, ranges: [[{ subnet: p.subnet }]] };
  writeConflist(netconf, { net: p.net, type: p.type, bridge: p.bridge, masq, ipam });
}

const env = {
  ...process.env,
  NETCONFPATH: netconf,
  CNI_PATH: `${join(repo, 'bin')}:/usr/lib/cni`,
  BERTH_NFT_TABLE: `${prefix}t`,
  BERTH_RUN_DIR: runDir,
};
const forward = sh('sysctl', ['-n', 'net.ipv4.ip_forward']).trim();
const tablesBefore = nftTables();

const samples = new Map(plugins.map((p) => [p.label, { add: [], del: [] }]));
/** berth-bridge answering VERSION: Node's start-up plus our entry, the floor under every berth command. */
const floor = [];
function versionOnce() {
  const t = process.hrtime.bigint();
  const r = spawnSync(join(repo, 'bin', 'berth-bridge'), [], {
    env: { ...env, CNI_COMMAND: 'VERSION' },
    input: '{}',
  });
  if (r.status !== 0) throw new Error(`berth-bridge VERSION: ${r.stdout}${r.stderr}`);
  floor.push(msSince(t));
}
let seq = 0;
function once(p, record) {
  const ns = `${prefix}-n${seq++}`;
  sh('ip', ['netns', 'add', ns]);
  try {
    const add = cnitoolSync('add', p.net, ns, env);
    const del = cnitoolSync('del', p.net, ns, env);
    if (record) {
      samples.get(p.label).add.push(add);
      samples.get(p.label).del.push(del);
    }
  } finally {
    trySh('ip', ['netns', 'del', ns]);
  }
}

try {
  // Warm-up: creates the bridges (first-ADD work is not what is measured) and the page cache.
  for (const p of plugins) once(p, false);
  for (let i = 0; i < runs; i++) {
    for (const p of i % 2 === 0 ? plugins : [...plugins].reverse()) once(p, true);
    versionOnce();
  }

  const ref = samples.get('reference bridge');
  const ours = samples.get('berth-bridge');
  const rows = [];
  for (const op of ['add', 'del']) {
    for (const [label, s] of samples) {
      const base = op === 'add' ? ref.add : ref.del;
      rows.push({
        op: op.toUpperCase(),
        plugin: label,
        median: pct(s[op], 0.5),
        p90: pct(s[op], 0.9),
        ratio: pct(s[op], 0.5) / pct(base, 0.5),
      });
    }
  }
  const f = (x) => x.toFixed(1).padStart(7);
  console.log(
    `berth-bridge vs reference bridge through cnitool, host-local IPAM, isGateway${masq ? ', ipMasq' : ''}; ${runs} runs each, ms`,
  );
  console.log(`node ${process.version}, kernel ${sh('uname', ['-r']).trim()}`);
  console.log('');
  console.log('| op  | plugin           |  median |     p90 | median ratio vs reference |');
  console.log('| --- | ---------------- | ------: | ------: | ------------------------: |');
  for (const r of rows)
    console.log(
      `| ${r.op.padEnd(3)} | ${r.plugin.padEnd(16)} | ${f(r.median)} | ${f(r.p90)} | ${r.ratio.toFixed(2).padStart(25)} |`,
    );
  console.log(
    `| -   | berth-bridge VERSION (start-up floor, no cnitool) | ${f(pct(floor, 0.5))} | ${f(pct(floor, 0.9))} | ${(pct(floor, 0.5) / pct(ref.add, 0.5)).toFixed(2).padStart(25)} |`,
  );
  void ours;
} finally {
  for (const p of plugins) trySh('ip', ['link', 'del', p.bridge]);
  trySh('nft', ['delete', 'table', 'inet', `${prefix}t`]);
  trySh('sysctl', ['-qw', `net.ipv4.ip_forward=${forward}`]);
  if (masq) removeNewEmptyNftTables(tablesBefore);
  rmSync(work, { recursive: true, force: true });
}
