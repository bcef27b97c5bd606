#!/usr/bin/env node
// bench/cluster's load generator and meter (plain Node, no build step; run by bench/cluster/run.sh inside its
// namespace). Not a test, a measurement.
//   node load.js <count> <cold-concurrency> <live> <churn-ops> <churn-concurrency> <sock:dataDir:pid,...>
//   node load.js table <result.json>...   the README's table from those results
// Every node (berthd) gets the same load, from its own workers, at the same time:
//   cold   <count> ADDs (POST /v1/allocate, new container ids) on a network no node has blocks of yet;
//   drain  DELs down to <live> leases per node (not measured);
//   churn  <churn-ops> pairs per node of DEL of the oldest lease + ADD of a new container, so the node's lease
//          count stays at <live>: the steady state.
// For each phase it reads every berthd's /metrics before and after (etcd requests by operation, block claims,
// ADDs that waited for a claim) and its CPU time from /proc/<pid>/stat, and prints one JSON object.
'use strict';
const http = require('node:http');
const fs = require('node:fs');

const NET = process.env.NET ?? 'bench';
const POOL = process.env.POOL ?? '198.18.0.0/16';
const TICKS = 100; // USER_HZ on Linux

function config(t) {
  return {
    cniVersion: '1.1.0',
    name: NET,
    type: 'berth-ipam',
    ipam: {
      type: 'berth-ipam',
      dataDir: t.dataDir,
      daemonSocket: t.sock,
      ranges: [[{ subnet: POOL }]],
      cluster: { blockSize: 26 },
    },
  };
}

function request(t, method, path, body) {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? '' : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: t.sock,
        path,
        method,
        agent: t.agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.setTimeout(30000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(text);
  });
}

async function cni(t, route, cid) {
  const r = await request(t, 'POST', route, {
    env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0' },
    config: config(t),
  });
  if (r.status !== 200) throw new Error(`${route} ${cid}: HTTP ${r.status} ${r.text.slice(0, 300)}`);
}

/** Sums of the cluster metrics this bench reads, by metric and label set of interest. */
async function scrape(t) {
  const r = await request(t, 'GET', '/metrics');
  const m = { requests: {}, claimsOk: 0, claimsConflict: 0, waited: 0, roundTrips: 0 };
  for (const line of r.text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const sp = line.lastIndexOf(' ');
    const name = line.slice(0, sp);
    const v = Number(line.slice(sp + 1));
    const op = /^berthd_cluster_etcd_requests_total\{.*op="([^"]+)"/.exec(name);
    if (op !== null) m.requests[op[1]] = (m.requests[op[1]] ?? 0) + v;
    else if (name.startsWith('berthd_cluster_block_claims_total') && name.includes('result="ok"'))
      m.claimsOk += v;
    else if (name.startsWith('berthd_cluster_block_claims_total') && name.includes('result="conflict"'))
      m.claimsConflict += v;
    else if (name.startsWith('berthd_cluster_adds_waited_total')) m.waited += v;
    else if (name.startsWith('berthd_cluster_etcd_round_trips_total')) m.roundTrips += v;
  }
  return m;
}

/** A process's CPU time so far: user and system seconds (fields 14 and 15 of /proc/<pid>/stat). */
function cpuTimes(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(f[11]) / TICKS, sys: Number(f[12]) / TICKS };
}

async function measure(targets, phase) {
  const before = await Promise.all(targets.map((t) => scrape(t)));
  const cpu0 = targets.map((t) => cpuTimes(t.pid));
  const walls = await Promise.all(
    targets.map(async (t, i) => {
      const t0 = process.hrtime.bigint();
      await phase(t, i);
      return Number(process.hrtime.bigint() - t0) / 1e9;
    }),
  );
  const after = await Promise.all(targets.map((t) => scrape(t)));
  return targets.map((t, i) => {
    const cpu1 = cpuTimes(t.pid);
    const requests = {};
    for (const [op, v] of Object.entries(after[i].requests)) {
      const d = v - (before[i].requests[op] ?? 0);
      if (d > 0) requests[op] = d;
    }
    return {
      wallSeconds: walls[i],
      cpuSeconds: cpu1.user + cpu1.sys - cpu0[i].user - cpu0[i].sys,
      cpuSysSeconds: cpu1.sys - cpu0[i].sys,
      requests,
      roundTrips: after[i].roundTrips - before[i].roundTrips,
      blocksClaimed: after[i].claimsOk - before[i].claimsOk,
      claimConflicts: after[i].claimsConflict - before[i].claimsConflict,
      addsWaited: after[i].waited - before[i].waited,
    };
  });
}

async function workers(n, fn) {
  await Promise.all(Array.from({ length: n }, (_, w) => fn(w)));
}

async function main() {
  const [count, coldConc, live, churnOps, churnConc] = process.argv.slice(2, 7).map(Number);
  const targets = process.argv[7].split(',').map((x, i) => {
    const [sock, dataDir, pid] = x.split(':');
    return { sock, dataDir, pid, node: i, agent: new http.Agent({ keepAlive: true, maxSockets: 512 }) };
  });
  const leases = targets.map(() => []);

  const cold = await measure(targets, async (t, i) => {
    let next = 0;
    await workers(coldConc, async () => {
      for (let k = next++; k < count; k = next++) {
        const cid = `c${i}-${k}`;
        await cni(t, '/v1/allocate', cid);
        leases[i].push(cid);
      }
    });
  });

  await Promise.all(
    targets.map((t, i) =>
      workers(32, async () => {
        while (leases[i].length > live) await cni(t, '/v1/release', leases[i].shift());
      }),
    ),
  );

  const churn = await measure(targets, async (t, i) => {
    let done = 0;
    await workers(churnConc, async () => {
      while (done < churnOps) {
        done++;
        const old = leases[i].shift();
        await cni(t, '/v1/release', old);
        const cid = `s${i}-${done}`;
        await cni(t, '/v1/allocate', cid);
        leases[i].push(cid);
      }
    });
  });

  for (const t of targets) t.agent.destroy();
  console.log(
    JSON.stringify({ nodes: targets.length, count, coldConc, live, churnOps, churnConc, cold, churn }),
  );
}

function sum(xs, f) {
  return xs.reduce((a, x) => a + f(x), 0);
}

/** One row per run and phase: etcd round trips per ADD, and ADDs per second per node (wall and CPU). */
function table(files) {
  const rows = [
    '| daemons (filesystem, load) | phase | ADDs per node | etcd round trips (by op) | per ADD | blocks claimed (conflicts) | ADDs waited | ADD/s per node (wall) | ADDs per berthd CPU-second (system share) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const f of files) {
    const r = JSON.parse(fs.readFileSync(f, 'utf8'));
    for (const phase of ['cold', 'churn']) {
      const per = r[phase];
      const adds = phase === 'cold' ? r.count : r.churnOps;
      const total = adds * r.nodes;
      const rt = sum(per, (x) => x.roundTrips);
      const ops = {};
      for (const x of per) for (const [op, v] of Object.entries(x.requests)) ops[op] = (ops[op] ?? 0) + v;
      const byOp = Object.entries(ops)
        .sort((a, b) => b[1] - a[1])
        .map(([op, v]) => `${op} ${v}`)
        .join(', ');
      const wall = per.map((x) => Math.round(adds / x.wallSeconds)).join(' / ');
      const cpu = per
        .map(
          (x) =>
            `${Math.round(adds / x.cpuSeconds)} (${Math.round((100 * x.cpuSysSeconds) / x.cpuSeconds)} %)`,
        )
        .join(' / ');
      const what =
        phase === 'cold'
          ? `cold, ${r.coldConc}-way`
          : `steady churn, ${r.live} live, DEL+ADD pairs ${r.churnConc}-way`;
      rows.push(
        `| ${r.nodes}${r.separate ? ' separate' : ''} (${r.fs ?? 'shared'}, ${r.load ?? '?'}) | ${what} | ${adds} | ${rt} (${byOp}) | **${(rt / total).toFixed(4)}** | ${sum(per, (x) => x.blocksClaimed)} (${sum(per, (x) => x.claimConflicts)}) | ${sum(per, (x) => x.addsWaited)} | ${wall} | ${cpu} |`,
      );
    }
  }
  console.log(rows.join('\n'));
}

(process.argv[2] === 'table' ? Promise.resolve().then(() => table(process.argv.slice(3))) : main()).catch(
  (err) => {
    console.error(err);
    process.exitCode = 1;
  },
);
