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
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const pool = require('./pool');

const { REPO, BERTH, HOST_LOCAL, FIRST, LAST, POOL, conf, shuffled, randomTaken, median } = pool;
const REPS = Number(pool.opt('--reps', '7'));
const JSON_OUT = pool.opt('--json', undefined);

/** An execution's wall time in ms. */
const exec = (bin, command, stdin, containerId) => pool.runPlugin(bin, command, stdin, containerId).ms;

/** Writes host-local's files for `taken` offsets, and its cursor. */
const prefill = (dataDir, taken, cursorOff) =>
  pool.writeHostLocalDir(dataDir, taken, cursorOff, (off) => `fill-${off}`);

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
