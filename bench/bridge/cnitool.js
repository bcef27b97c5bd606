// Driving bridge plugins as a runtime does, for the benches that put berth beside the reference plugins
// (bench/bridge/add-del.js, bench/warm/run.js): conflists in a private NETCONFPATH, cnitool timed as a whole
// process, named pod namespaces, percentiles, and removing what iptables-nft leaves after the reference's
// ipMasq. Root only; everything it is given to create carries the caller's bt<pid> prefix.
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const { writeFileSync } = require('node:fs');
const { join } = require('node:path');

const cnitool = process.env.CNITOOL ?? '/usr/local/bin/cnitool';

/** Runs a command to completion; throws with its output when it fails. Returns stdout. */
function sh(cmd, argv, env) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', env: env ?? process.env });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Best-effort clean-up command: output and failure ignored. */
function trySh(cmd, argv) {
  spawnSync(cmd, argv, { stdio: 'ignore' });
}

/** Milliseconds since `t0` (a process.hrtime.bigint()). */
function msSince(t0) {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** The q-quantile (0..1) of xs, nearest rank. */
function pct(xs, q) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.min(s.length - 1, Math.ceil(q * s.length) - 1))];
}

/** Writes `<dir>/<net>.conflist`: one bridge plugin of `type` on `bridge`, isGateway, ipMasq when asked. */
function writeConflist(dir, { net, type, bridge, masq, ipam }) {
  const conflist = {
    cniVersion: '1.0.0',
    name: net,
    plugins: [{ type, bridge, isGateway: true, ...(masq ? { ipMasq: true } : {}), ipam }],
  };
  writeFileSync(join(dir, `${net}.conflist`), JSON.stringify(conflist));
  return conflist;
}

/** `cnitool add|del <net> /var/run/netns/<ns>` to completion, synchronously; wall ms of the whole process. */
function cnitoolSync(command, net, ns, env) {
  const t0 = process.hrtime.bigint();
  sh(cnitool, [command, net, `/var/run/netns/${ns}`], env);
  return msSince(t0);
}

/** The same without blocking, so that many run at once; resolves with wall ms, rejects with the output. */
function cnitoolAsync(command, net, ns, env) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cnitool, [command, net, `/var/run/netns/${ns}`], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(msSince(t0));
      else reject(new Error(`cnitool ${command} ${net} ${ns}: exit ${code}: ${out}`));
    });
  });
}

/** The nftables tables that exist now (`nft list tables` lines), to tell later which ones are new. */
function nftTables() {
  return new Set(sh('nft', ['list', 'tables']).split('\n').filter(Boolean));
}

/**
 * The reference's ipMasq goes through iptables (iptables-nft here), which leaves its `nat` tables behind
 * after the last DEL: removes the tables that were not in `before` and hold no rule.
 */
function removeNewEmptyNftTables(before) {
  for (const line of nftTables()) {
    if (before.has(line)) continue;
    const [, family, name] = line.split(' ');
    const content = spawnSync('nft', ['-j', 'list', 'table', family, name], { encoding: 'utf8' }).stdout;
    const hasRules = (JSON.parse(content || '{"nftables":[]}').nftables ?? []).some((o) => 'rule' in o);
    if (!hasRules) trySh('nft', ['delete', 'table', family, name]);
  }
}

module.exports = {
  cnitool,
  sh,
  trySh,
  msSince,
  pct,
  writeConflist,
  cnitoolSync,
  cnitoolAsync,
  nftTables,
  removeNewEmptyNftTables,
};
