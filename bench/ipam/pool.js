// What bench/ipam/fill.js and bench/ipam/takeover.js share: a 198.18.0.0/16 network named `bench` in
// host-local's on-disk layout, the two plugins executed as a runtime would, and the deterministic shuffles
// that let every cell of a run see the same pool and a fresh order each round.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const REPO = path.join(__dirname, '..', '..');
const BERTH = path.join(REPO, 'bin', 'berth-ipam');
const HOST_LOCAL = '/usr/lib/cni/host-local';
const NET = 'bench';

// Usable .0.2-.255.254 besides the gateway .0.1: 65,533 addresses, as offsets into the /16.
const FIRST = 2;
const LAST = 65534;
const POOL = LAST - FIRST + 1;
const ipAt = (off) => `198.18.${(off >> 8) & 255}.${off & 255}`;

/** The value of `--name` on the command line, or `dflt`. */
function opt(name, dflt) {
  const argv = process.argv.slice(2);
  const i = argv.indexOf(name);
  return i === -1 ? dflt : argv[i + 1];
}

/** A network config whose IPAM is `type` on `dataDir` (berth-ipam on the files, not berthd). */
function conf(type, dataDir) {
  return JSON.stringify({
    cniVersion: '0.4.0',
    name: NET,
    type: 'bridge',
    ipam: {
      type,
      dataDir,
      ranges: [[{ subnet: '198.18.0.0/16' }]],
      ...(type === 'berth-ipam' ? { daemonSocket: false } : {}),
    },
  });
}

/** Executes an IPAM plugin once as a runtime would; its wall time and stdout. Throws when it fails. */
function runPlugin(bin, command, stdin, containerId) {
  const env = {
    PATH: process.env.PATH,
    CNI_COMMAND: command,
    CNI_CONTAINERID: containerId,
    CNI_NETNS: '/run/netns/bench',
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/usr/lib/cni',
  };
  const t0 = process.hrtime.bigint();
  const r = spawnSync(bin, [], { env, input: stdin, encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0)
    throw new Error(`${path.basename(bin)} ${command} ${containerId} failed: ${r.stdout}${r.stderr}`);
  return { ms, stdout: r.stdout };
}

/** Fisher-Yates with a fixed LCG seed: the same order for the same seed. */
function shuffled(xs, seed) {
  const a = [...xs];
  let s = seed >>> 0;
  for (let i = a.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** `count` offsets of the pool taken at random (deterministically: every directory of a fill holds the same). */
function randomTaken(count, seed) {
  const offs = [];
  for (let o = FIRST; o <= LAST; o++) offs.push(o);
  return shuffled(offs, seed).slice(0, count);
}

/** host-local's files written directly: one per taken address (`<content>\r\neth0`, 0600), and the cursor. */
function writeHostLocalDir(dataDir, taken, cursorOff, idOf) {
  const dir = path.join(dataDir, NET);
  fs.mkdirSync(dir, { recursive: true });
  for (const off of taken)
    fs.writeFileSync(path.join(dir, ipAt(off)), `${idOf(off)}\r\neth0`, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'last_reserved_ip.0'), ipAt(cursorOff));
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

module.exports = {
  REPO,
  BERTH,
  HOST_LOCAL,
  NET,
  FIRST,
  LAST,
  POOL,
  ipAt,
  opt,
  conf,
  runPlugin,
  shuffled,
  randomTaken,
  writeHostLocalDir,
  median,
};
