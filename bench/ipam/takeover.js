#!/usr/bin/env node
// Why this exists: the first berth call on a node that ran host-local takes the directory over (reads every
// lease file once and writes its index). Issue 12 item 6 asks that this cost no more than one of host-local's
// own full scans, which host-local pays on every ADD (its duplicate check reads every lease file). Measures,
// on a /16 filled to 50/90/99 % with host-local's own layout:
//   (a) host-local ADD, executed as a runtime would (its full scan, plus its probing for a free address);
//   (b) berth-ipam's first ADD on the directory, executed the same way (Node start-up included);
//   (c) the same take-over in-process through the file store (no start-up), and berthd's network store's
//       first ADD in-process (the daemon takes the directory over the same way);
//   (d) berth's scan alone (scanLeases: the files read, the leases parsed into columns), the floor of any
//       take-over.
// Every round visits the cells in a new order and runs (a)-(d) alternating; medians of the rounds. Between two
// take-overs the berth directory is put back into host-local's state (its `.berth/`, its one new lease and
// the cursor), so each one is a first call again.
//
// Usage: npm run build && node bench/ipam/takeover.js [--reps N] [--json out.json]
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const pool = require('./pool');

const { REPO, BERTH, HOST_LOCAL, NET, FIRST, POOL, ipAt, conf, shuffled, randomTaken, median } = pool;
const REPS = Number(pool.opt('--reps', '5'));
const JSON_OUT = pool.opt('--json', undefined);

/** One execution of `bin` on `dataDir`'s network: wall time and stdout. */
const exec = (bin, command, dataDir, containerId) =>
  pool.runPlugin(bin, command, conf(bin === HOST_LOCAL ? 'host-local' : 'berth-ipam', dataDir), containerId);

/** host-local's layout with container ids as runtimes make them (64 hex digits). */
const prefill = (dataDir, taken, cursorOff) =>
  pool.writeHostLocalDir(dataDir, taken, cursorOff, (off) => off.toString(16).padStart(8, '0').repeat(8));

/** Puts a berth directory back into host-local's state: no `.berth/`, not the one new lease, the old cursor. */
function resetTakeover(dataDir, newLeases, cursorOff) {
  const dir = path.join(dataDir, NET);
  fs.rmSync(path.join(dir, '.berth'), { recursive: true, force: true });
  for (const ip of newLeases) fs.rmSync(path.join(dir, ip), { force: true });
  fs.writeFileSync(path.join(dir, 'last_reserved_ip.0'), ipAt(cursorOff));
}

const dist = (m) => require(path.join(REPO, 'dist', m));

/** berth's file store, in this process: the first ADD on the directory is the take-over. */
async function storeTakeover(dataDir) {
  const { openLeaseFileStore } = dist('ipam/lease-file-store.js');
  const { allocateFromSet } = dist('ipam/allocator.js');
  const { canonicalizeRangeSet } = dist('ipam/range-set.js');
  const { formatIp } = dist('address/ip.js');
  const set = canonicalizeRangeSet([{ subnet: '198.18.0.0/16' }], NET);
  const store = openLeaseFileStore({ dataDir, network: NET, bootId: 'bench', warn: () => {} });
  const t0 = process.hrtime.bigint();
  const ip = await store.transact(async (s) => {
    // What the ADD handler asks first on a new boot (releaseOnReboot): leases of earlier boots.
    for (const l of await s.leasesFromEarlierBoots()) await s.release(l);
    return allocateFromSet({
      session: s,
      set,
      setId: 0,
      containerId: 'inproc',
      ifname: 'eth0',
      meta: {},
      policy: 'round-robin',
      exclude: [],
    });
  });
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, ip: formatIp(ip) };
}

/** berthd's network store, in this process: its first ADD re-reads the directory and commits its index. */
async function daemonTakeover(dataDir) {
  const { NetworkStore } = dist('ipam/daemon/network-store.js');
  const { FilesystemSync } = dist('ipam/daemon/fs-sync.js');
  const { allocateFromSet } = dist('ipam/allocator.js');
  const { canonicalizeRangeSet } = dist('ipam/range-set.js');
  const { formatIp } = dist('address/ip.js');
  const set = canonicalizeRangeSet([{ subnet: '198.18.0.0/16' }], NET);
  const log = { log: () => {} };
  const store = new NetworkStore({
    dataDir,
    network: NET,
    bootId: 'bench',
    log,
    syncer: new FilesystemSync(),
  });
  const t0 = process.hrtime.bigint();
  const ip = await store.transact(async (s) =>
    allocateFromSet({
      session: s,
      set,
      setId: 0,
      containerId: 'daemon',
      ifname: 'eth0',
      meta: {},
      policy: 'round-robin',
      exclude: [],
    }),
  );
  await store.idle();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  store.close();
  return { ms, ip: formatIp(ip) };
}

function scanOnly(dataDir) {
  const { scanLeases } = dist('ipam/lease-dir.js');
  const t0 = process.hrtime.bigint();
  const n = scanLeases(path.join(dataDir, NET)).count;
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, n };
}

async function main() {
  if (!fs.existsSync(path.join(REPO, 'dist', 'main.js'))) throw new Error('run "npm run build:ts" first');
  if (!fs.existsSync(HOST_LOCAL))
    throw new Error(`${HOST_LOCAL} missing: /work/shared/tools/setup-cni-reference.sh`);
  const started = Date.now();
  const cursor = FIRST + Math.floor(POOL / 3);
  const cells = [];
  try {
    for (const pct of [50, 90, 99]) {
      const taken = randomTaken(Math.floor((POOL * pct) / 100), 42 + pct);
      const dirs = {};
      for (const k of ['hl', 'berth']) {
        dirs[k] = fs.mkdtempSync(path.join(os.tmpdir(), `bt${process.pid}-takeover-`));
        prefill(dirs[k], taken, cursor);
      }
      // host-local accepts the directory as its own: one real ADD and DEL on it (untimed).
      const r = exec(HOST_LOCAL, 'ADD', dirs.hl, 'check');
      if (!JSON.parse(r.stdout).ips?.length) throw new Error(`host-local ADD gave no address: ${r.stdout}`);
      exec(HOST_LOCAL, 'DEL', dirs.hl, 'check');
      fs.writeFileSync(path.join(dirs.hl, NET, 'last_reserved_ip.0'), ipAt(cursor));
      cells.push({
        pct,
        leases: taken.length,
        dirs,
        t: { hl: [], berth: [], store: [], daemon: [], scan: [] },
      });
    }
    for (let r = 0; r < REPS; r++) {
      for (const c of shuffled(cells, 7000 + r)) {
        const steps = shuffled(['hl', 'berth', 'store', 'daemon', 'scan'], 100 * r + c.pct);
        for (const step of steps) {
          if (step === 'hl') {
            c.t.hl.push(exec(HOST_LOCAL, 'ADD', c.dirs.hl, `hl-${r}`).ms);
            exec(HOST_LOCAL, 'DEL', c.dirs.hl, `hl-${r}`);
            fs.writeFileSync(path.join(c.dirs.hl, NET, 'last_reserved_ip.0'), ipAt(cursor));
          } else if (step === 'berth') {
            const a = exec(BERTH, 'ADD', c.dirs.berth, `b-${r}`);
            c.t.berth.push(a.ms);
            resetTakeover(c.dirs.berth, [JSON.parse(a.stdout).ips[0].address.split('/')[0]], cursor);
          } else if (step === 'store') {
            const a = await storeTakeover(c.dirs.berth);
            c.t.store.push(a.ms);
            resetTakeover(c.dirs.berth, [a.ip], cursor);
          } else if (step === 'daemon') {
            const a = await daemonTakeover(c.dirs.berth);
            c.t.daemon.push(a.ms);
            resetTakeover(c.dirs.berth, [a.ip], cursor);
          } else {
            const s = scanOnly(c.dirs.berth);
            if (s.n !== c.leases) throw new Error(`scan found ${s.n} leases, not ${c.leases}`);
            c.t.scan.push(s.ms);
          }
        }
      }
      process.stderr.write(`round ${r + 1}/${REPS} (load ${os.loadavg()[0].toFixed(1)})\n`);
    }
  } finally {
    for (const c of cells)
      for (const d of Object.values(c.dirs)) fs.rmSync(d, { recursive: true, force: true });
  }
  const rows = cells.map((c) => ({
    fill: `${c.pct} %`,
    leases: c.leases,
    hostLocalAdd: median(c.t.hl),
    berthFirstAdd: median(c.t.berth),
    storeTakeover: median(c.t.store),
    daemonTakeover: median(c.t.daemon),
    scan: median(c.t.scan),
  }));
  const ms = (x) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(0)} ms`);
  const ratio = (a, b) => `${(a / b).toFixed(2)}×`;
  const lines = [
    `/16 (${POOL} usable addresses) filled with host-local's files; medians of ${REPS} rounds`,
    '',
    '| fill | leases | host-local ADD (its full scan) | berth-ipam first ADD (take-over) | ratio | take-over in-process, file store | ratio | take-over in-process, berthd store | berth scan alone |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(
      (r) =>
        `| ${r.fill} | ${r.leases} | ${ms(r.hostLocalAdd)} | ${ms(r.berthFirstAdd)} | ${ratio(r.berthFirstAdd, r.hostLocalAdd)} | ${ms(r.storeTakeover)} | ${ratio(r.storeTakeover, r.hostLocalAdd)} | ${ms(r.daemonTakeover)} | ${ms(r.scan)} |`,
    ),
    '',
    `total ${((Date.now() - started) / 1000).toFixed(0)} s; node ${process.version}; ${os.cpus().length} CPUs; load average at the end ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (JSON_OUT !== undefined) fs.writeFileSync(JSON_OUT, JSON.stringify({ reps: REPS, rows }, null, 2));
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exitCode = 1;
});
