#!/usr/bin/env node
// Why this exists: host-local's cost grows with how full its pool is (an open() per probe, a read of every
// lease file on each ADD duplicate check and each DEL); berth-ipam's must not. Measures median ADD and DEL
// of both plugins, executed as a runtime would, on a /16 pre-filled to 0/50/90/99 % by writing host-local's
// files directly, plus host-local's worst case (full pool but the address at its cursor).
//
// Rounds interleave all cells (in a new order each round), so a busy shared machine slows every cell alike;
// the in-process columns time berth's store alone (no Node start-up), the clearest view of "cost vs fill".
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
const REPS = Number(opt('--reps', '7'));
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
    // The files, not berthd (bench/daemon measures the daemon).
    ipam: {
      type,
      dataDir,
      ranges: [[{ subnet: '198.18.0.0/16' }]],
      ...(type === 'berth-ipam' ? { daemonSocket: false } : {}),
    },
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
  if (r.status !== 0)
    throw new Error(`${path.basename(bin)} ${command} ${containerId} failed: ${r.stdout}${r.stderr}`);
  return ms;
}

/** Writes host-local's files for `taken` offsets, and its cursor. */
function prefill(dataDir, taken, cursorOff) {
  const dir = path.join(dataDir, 'bench');
  fs.mkdirSync(dir, { recursive: true });
  for (const off of taken)
    fs.writeFileSync(path.join(dir, ipAt(off)), `fill-${off}\r\neth0`, { mode: 0o600 });
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

/** A scenario's two data dirs (one per plugin), pre-filled identically. */
function prepare(sc) {
  const dirs = {};
  for (const type of ['berth-ipam', 'host-local']) {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `bt${process.pid}-ipam-bench-`));
    prefill(d, sc.taken, sc.cursor);
    dirs[type] = d;
  }
  return dirs;
}

/** berth-ipam's store alone, in this process: what an ADD/DEL costs beyond Node's start-up. */
function storeOps(dataDir) {
  const { openLeaseFileStore } = require(path.join(REPO, 'dist/ipam/lease-file-store.js'));
  const { allocateFromSet } = require(path.join(REPO, 'dist/ipam/allocator.js'));
  const { canonicalizeRangeSet } = require(path.join(REPO, 'dist/ipam/range-set.js'));
  const set = canonicalizeRangeSet([{ subnet: '198.18.0.0/16' }], 'bench');
  const store = openLeaseFileStore({ dataDir, network: 'bench', bootId: 'bench', warn: () => {} });
  const timed = async (fn) => {
    const t0 = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  return {
    add: (id) =>
      timed(() =>
        store.transact((s) =>
          allocateFromSet({
            session: s,
            set,
            setId: 0,
            containerId: id,
            ifname: 'eth0',
            meta: {},
            policy: 'round-robin',
            exclude: [],
          }),
        ),
      ),
    del: (id) =>
      timed(() =>
        store.transact(async (s) => {
          for (const l of await s.leasesOf({ containerId: id, ifname: 'eth0' })) await s.release(l);
        }),
      ),
  };
}

const shuffled = (xs, seed) => {
  const a = [...xs];
  let s = seed >>> 0;
  for (let i = a.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
};

async function main() {
  if (!fs.existsSync(path.join(REPO, 'dist', 'main.js'))) throw new Error('run "npm run build:ts" first');
  const started = Date.now();
  const scenarios = [0, 50, 90, 99].map((pct) => {
    const taken = randomTaken(Math.floor((POOL * pct) / 100), 42 + pct);
    return { label: `${pct} %`, taken, cursor: FIRST + Math.floor(POOL / 3) };
  });
  // host-local's worst case: everything taken but the cursor's own address, which its loop tries last.
  const cursor = FIRST + 100;
  const worst = [];
  for (let o = FIRST; o <= LAST; o++) if (o !== cursor) worst.push(o);
  scenarios.push({ label: 'full but the cursor (host-local worst case)', taken: worst, cursor });

  const cells = [];
  try {
    for (const sc of scenarios) {
      const dirs = prepare(sc);
      const stdin = {
        'berth-ipam': conf('berth-ipam', dirs['berth-ipam']),
        'host-local': conf('host-local', dirs['host-local']),
      };
      // berth-ipam's first ADD on a host-local directory builds its index (one read of every lease file,
      // one record per attachment, the occupancy bitmap): a one-time migration cost, reported apart.
      const first = exec(BERTH, 'ADD', stdin['berth-ipam'], 'warmup');
      exec(BERTH, 'DEL', stdin['berth-ipam'], 'warmup');
      // The in-process store works on berth's directory too (same lock, same index).
      const store = storeOps(dirs['berth-ipam']);
      cells.push({
        sc,
        dirs,
        stdin,
        first,
        store,
        t: { berthAdd: [], berthDel: [], hlAdd: [], hlDel: [], storeAdd: [], storeDel: [], version: [] },
      });
    }
    // Rounds visit every cell in a new order each time, so the load of a shared machine hits all cells alike.
    for (let r = 0; r < REPS; r++) {
      for (const c of shuffled(cells, 1000 + r)) {
        const id = `b-${r}`;
        c.t.berthAdd.push(exec(BERTH, 'ADD', c.stdin['berth-ipam'], id));
        c.t.berthDel.push(exec(BERTH, 'DEL', c.stdin['berth-ipam'], id));
        c.t.hlAdd.push(exec(HOST_LOCAL, 'ADD', c.stdin['host-local'], id));
        c.t.hlDel.push(exec(HOST_LOCAL, 'DEL', c.stdin['host-local'], id));
        c.t.storeAdd.push(await c.store.add(`s-${r}`));
        c.t.storeDel.push(await c.store.del(`s-${r}`));
        c.t.version.push(exec(BERTH, 'VERSION', '', id));
      }
      process.stderr.write(`round ${r + 1}/${REPS}\n`);
    }
  } finally {
    for (const c of cells)
      for (const d of Object.values(c.dirs)) fs.rmSync(d, { recursive: true, force: true });
  }
  const f = (x) => x.toFixed(1);
  const f2 = (x) => x.toFixed(2);
  const rows = cells.map((c) => ({
    scenario: c.sc.label,
    leases: c.sc.taken.length,
    berthAdd: median(c.t.berthAdd),
    berthDel: median(c.t.berthDel),
    hostLocalAdd: median(c.t.hlAdd),
    hostLocalDel: median(c.t.hlDel),
    storeAdd: median(c.t.storeAdd),
    storeDel: median(c.t.storeDel),
    berthVersion: median(c.t.version),
    berthFirstCall: c.first,
  }));
  const lines = [
    `/16 pool (${POOL} usable addresses), pre-filled with host-local's files at random; median of ${REPS} rounds; ms`,
    '',
    '| fill | leases | berth-ipam ADD | berth-ipam DEL | host-local ADD | host-local DEL | berth store ADD (in-process) | berth store DEL (in-process) | berth-ipam VERSION (start-up only) | berth first ADD on the dir (one-time index build) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.leases} | ${f(r.berthAdd)} | ${f(r.berthDel)} | ${f(r.hostLocalAdd)} | ${f(r.hostLocalDel)} | ${f2(r.storeAdd)} | ${f2(r.storeDel)} | ${f(r.berthVersion)} | ${f(r.berthFirstCall)} |`,
    ),
    '',
    `total ${((Date.now() - started) / 1000).toFixed(0)} s; node ${process.version}; ${os.cpus().length} CPUs; load average at the end ${os.loadavg()[0].toFixed(1)}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (JSON_OUT !== undefined) fs.writeFileSync(JSON_OUT, JSON.stringify({ reps: REPS, rows }, null, 2));
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exitCode = 1;
});
