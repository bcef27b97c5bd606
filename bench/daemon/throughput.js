#!/usr/bin/env node
// berthd throughput: allocate+release pairs per second through the unix socket, with N concurrent clients.
// Not a test, a measurement. Run as root after `npm run build`:
//   node bench/daemon/throughput.js [seconds=10] [clients=1,8,32,64]
//
// A fresh daemon (dist/, `berth daemon`) on a socket and data dir in a temp dir; each client keeps one
// HTTP/1.1 keep-alive connection (a minimal client, see Connection) and loops: POST /v1/allocate for a new container id, then POST
// /v1/release for it. A pair counts when both replies are 200. Every allocation is fsynced before its
// reply (group commit). Printed: pairs/s, p50/p99 of a pair's latency, batches and fsync rounds the
// daemon used (from /metrics), CPU seconds per pair of the daemon (all its threads, from /proc) and of this
// client, and at the end the store is checked empty. On a shared 2-core machine CPU per pair is the
// steadier figure: pairs/s moves with everyone else's load.
// BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" passes node flags to the daemon (profiling).
'use strict';
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const { join } = require('node:path');
const { get, withDaemon } = require('./daemon-process');

const seconds = Number(process.argv[2] ?? 10);
const clientCounts = (process.argv[3] ?? '1,8,32,64').split(',').map(Number);
/** The daemon of this run (set in main). */
let socket;
let daemonPid;
let config;

/**
 * One keep-alive HTTP/1.1 connection with a minimal hand-written client: node's http.Agent costs about as much
 * CPU per request as the daemon's whole handling does, and on a 2-core machine the client's CPU is taken
 * from the daemon. Requests on one connection are sequential (no pipelining), as a plugin's would be.
 */
class Connection {
  constructor() {
    this.sock = net.connect(socket);
    this.buf = Buffer.alloc(0);
    this.waiting = undefined;
    this.sock.on('data', (chunk) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      this.parse();
    });
    this.sock.on('error', (err) => this.waiting?.reject(err));
    this.sock.on('close', () => this.waiting?.reject(new Error('connection closed')));
  }

  parse() {
    if (this.waiting === undefined) return;
    const end = this.buf.indexOf('\r\n\r\n');
    if (end === -1) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const m = /\r\ncontent-length: *(\d+)/i.exec(head);
    const len = m === null ? 0 : Number(m[1]);
    if (this.buf.length < end + 4 + len) return;
    const status = Number(head.slice(9, 12));
    const body = this.buf.subarray(end + 4, end + 4 + len).toString();
    this.buf = this.buf.subarray(end + 4 + len);
    const w = this.waiting;
    this.waiting = undefined;
    if (status === 200) w.resolve(body);
    else w.reject(new Error(`${w.path}: HTTP ${status} ${body}`));
  }

  post(path, body) {
    const data = Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject, path };
      this.sock.write(
        `POST ${path} HTTP/1.1\r\nhost: berthd\r\ncontent-type: application/json\r\ncontent-length: ${data.length}\r\n\r\n`,
      );
      this.sock.write(data);
    });
  }

  close() {
    this.sock.destroy();
  }
}

function metric(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? 0 : Number(line.split(' ')[1]);
}

/** utime + stime of a whole process (every thread), in seconds. */
function cpuSeconds(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // Fields 14 and 15 (utime, stime) in clock ticks; USER_HZ is 100 on Linux.
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function round(clients) {
  const daemonCpu0 = cpuSeconds(daemonPid);
  const selfCpu0 = process.cpuUsage();
  const conns = Array.from({ length: clients }, () => new Connection());
  const before = await get(socket, '/metrics');
  const latencies = [];
  let pairs = 0;
  const end = Date.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; Date.now() < end; i++) {
        const env = {
          CNI_CONTAINERID: `bench-${clients}-${c}-${i}`,
          CNI_NETNS: '/run/netns/bench',
          CNI_IFNAME: 'eth0',
        };
        const t0 = process.hrtime.bigint();
        await conns[c].post('/v1/allocate', { env, config });
        await conns[c].post('/v1/release', { env, config });
        latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
        pairs++;
      }
    }),
  );
  for (const conn of conns) conn.close();
  const daemonCpu = cpuSeconds(daemonPid) - daemonCpu0;
  const self = process.cpuUsage(selfCpu0);
  const perPair = (sec) => `${Math.round((sec * 1e6) / Math.max(pairs, 1))}µs`;
  const after = await get(socket, '/metrics');
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(2);
  const d = (n) => metric(after, n) - metric(before, n);
  console.log(
    `clients=${String(clients).padStart(3)}  pairs/s=${String(Math.round(pairs / seconds)).padStart(6)}  pair p50=${q(0.5)}ms p99=${q(0.99)}ms  ` +
      `batches=${d('berthd_batches_total')} (txs ${d('berthd_batched_requests_total')}) fsync-rounds=${d('berthd_fsync_rounds_total')} ` +
      `under-lock=${d('berthd_batch_seconds_total').toFixed(2)}s fsync=${d('berthd_fsync_seconds_total').toFixed(2)}s  ` +
      `cpu/pair daemon=${perPair(daemonCpu)} client=${perPair((self.user + self.system) / 1e6)}`,
  );
}

async function main() {
  await withDaemon('btbench', async (d) => {
    socket = d.socket;
    daemonPid = d.pid;
    config = {
      cniVersion: '1.0.0',
      name: 'btbench',
      type: 'berth-ipam',
      ipam: { type: 'berth-ipam', dataDir: d.dataDir, ranges: [[{ subnet: '198.18.192.0/20' }]] },
    };
    console.log(
      `berthd bench: ${os.cpus().length} CPUs, load ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}, ${seconds}s per round, data dir on ${d.dataDir}`,
    );
    // What the disk costs right now: a pair needs at least two creates and two removals (lease file and
    // its attachment record), so this bounds pairs/s from above whatever the daemon does.
    const cal = join(d.dir, 'calibrate');
    fs.mkdirSync(cal);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 2000; i++) {
      fs.writeFileSync(join(cal, String(i)), 'ctr\r\neth0', { flag: 'wx' });
      fs.unlinkSync(join(cal, String(i)));
    }
    const us = Number(process.hrtime.bigint() - t0) / 2000 / 1000;
    console.log(
      `file create+remove in that directory: ${us.toFixed(0)} µs → at most ${Math.round(1e6 / (2 * us))} pairs/s on one thread`,
    );
    for (const c of clientCounts) await round(c);
    const left = fs.readdirSync(join(d.dataDir, 'btbench')).filter((f) => /^\d/.test(f));
    console.log(`leases left after the runs: ${left.length}`);
  });
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
