#!/usr/bin/env node
// Why this exists: host-local's cost grows with how full its pool is (an open() per probe, a read of every
// lease file on each ADD duplicate check and each DEL); berth-ipam's must not. Measures median ADD and DEL
// of both plugins, executed as a runtime would, on a /16 pre-filled to 0/50/90/99 % by writing host-local's
// files directly, plus host-local's worst case (full pool but the address at its cursor).
//
// Usage: npm run build:ts && node bench/ipam/fill.js [--reps N] [--json out.json]
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO = path.join(__dirname, '..', '..');
const BERTH = path.join(REPO, 'bin', 'berth-ipam');
const HOST_LOCAL = '/usr/lib/cni/host-local';
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i === -1 ? dflt : argv[i + 1];
};
const REPS = Number(opt('--reps', '11'));
const JSON_OUT = opt('--json', undefined);

// 198.18.0.0/16: gateway .0.1, usable .0.1-.255.254 minus the gateway = 65533 addresses.
const BASE = (198 << 24) | (18 << 16);
const FIRST = 2; // offset of 198.18.0.2
const LAST = 65534; // offset of 198.18.255.254
const ipAt = (off) => `198.18.${(off >> 8) & 255}.${off & 255}`;
const POOL = LAST - FIRST + 1;
void BASE;

function conf(type, dataDir) {
  return JSON.stringify({
    cniVersion: '0.4.0',
    name: 'bench',
    type: 'bridge',
    ipam: { type, dataDir, ranges: [[{ subnet: '198.18.0.0/16' }]] },
  });
}

function exec(bin, command, stdin, containerId) {
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
  if (r.status !== 0) throw new Error(`${path.basename(bin)} ${command} ${containerId} failed: ${r.stdout}${r.stderr}`);
  return ms;
}

/** Writes host-local's files for `taken` offsets, and its cursor. */
function prefill(dataDir, taken, cursorOff) {
  const dir = path.join(dataDir, 'bench');
  fs.mkdirSync(dir, { recursive: true });
  for (const off of taken) fs.writeFileSync(path.join(dir, ipAt(off)), `fill-${off}\r\neth0`, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'last_reserved_ip.0'), ipAt(cursorOff));
}

/** A deterministic shuffle, so both plugins see the same pool. */
function randomTaken(count, seed) {
  const offs = [];
  for (let o = FIRST; o <= LAST; o++) offs.push(o);
  let s = seed >>> 0;
  for (let i = offs.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [offs[i], offs[j]] = [offs[j], offs[i]];
  }
  return offs.slice(0, count);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

/** One scenario for one plugin: REPS rounds of ADD then DEL of a fresh attachment. */
function measure(bin, type, scenario) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `bt${process.pid}-ipam-bench-`));
  try {
    prefill(dataDir, scenario.taken, scenario.cursor);
    const stdin = conf(type, dataDir);
    // berth-ipam's first call on a host-local directory builds its index (one read of every lease file).
    const firstMs = exec(bin, 'DEL', stdin, 'warmup');
    const add = [];
    const del = [];
    for (let i = 0; i < REPS; i++) {
      add.push(exec(bin, 'ADD', stdin, `b-${i}`));
      del.push(exec(bin, 'DEL', stdin, `b-${i}`));
    }
    return { add: median(add), del: median(del), first: firstMs };
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

function main() {
  if (!fs.existsSync(path.join(REPO, 'dist', 'main.js'))) throw new Error('run "npm run build:ts" first');
  const started = Date.now();
  const scenarios = [0, 50, 90, 99].map((pct) => {
    const taken = randomTaken(Math.floor((POOL * pct) / 100), 42 + pct);
    return { label: `${pct} % (random)`, taken, cursor: FIRST + Math.floor(POOL / 3) };
  });
  // host-local's worst case: everything taken but the cursor's own address, which its loop tries last.
  const cursor = FIRST + 100;
  const worst = [];
  for (let o = FIRST; o <= LAST; o++) if (o !== cursor) worst.push(o);
  scenarios.push({ label: 'full but the cursor (host-local worst case)', taken: worst, cursor });

  const rows = [];
  for (const sc of scenarios) {
    const b = measure(BERTH, 'berth-ipam', sc);
    const h = measure(HOST_LOCAL, 'host-local', sc);
    rows.push({ scenario: sc.label, leases: sc.taken.length, berth: b, hostLocal: h });
    process.stderr.write(`${sc.label}: berth add ${b.add.toFixed(1)} del ${b.del.toFixed(1)} | host-local add ${h.add.toFixed(1)} del ${h.del.toFixed(1)}\n`);
  }
  const f = (x) => x.toFixed(1);
  const lines = [
    `berth-ipam vs host-local on a /16 (${POOL} usable addresses), median of ${REPS} ADD and ${REPS} DEL per cell, ms per executed plugin (process start included)`,
    '',
    '| fill | leases | berth-ipam ADD | berth-ipam DEL | host-local ADD | host-local DEL | berth first call (index build) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.leases} | ${f(r.berth.add)} | ${f(r.berth.del)} | ${f(r.hostLocal.add)} | ${f(r.hostLocal.del)} | ${f(r.berth.first)} |`,
    ),
    '',
    `total bench time ${((Date.now() - started) / 1000).toFixed(0)} s; node ${process.version}; ${os.cpus().length} CPUs`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (JSON_OUT !== undefined) fs.writeFileSync(JSON_OUT, JSON.stringify({ reps: REPS, rows }, null, 2));
}

main();
