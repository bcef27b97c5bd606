#!/usr/bin/env node
// The cluster test's client and checker (plain Node, no build step):
//   storm  <out.json> <count> <concurrency> <prefix> <sock:dataDir,...>  ADDs spread round-robin over berthds
//   del    <in.json> <sock:dataDir,...>                                   DEL of every ADD that succeeded
//   check  <endpoints> <prefix> <node:dataDir,...> [replies.json...]        files vs etcd (see below)
//   routes <endpoints> <prefix> <self> <node=underlay4/underlay6,...>       the routes <self> should have:
//          "<block> via <underlay>" for every block of another node in etcd, one a line, sorted
// NET and POOL choose the network and its IPv4 pool; IPAM (JSON of an ipam object without dataDir and
// daemonSocket) replaces the whole IPAM config, e.g. a dual-stack cluster network.
// storm retries a request whose daemon did not answer at all (killed, restarting) for up to RETRY_MS
// (default 0), so "acknowledged" means a 200 reply; CNI errors are recorded, not retried.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const NET = process.env.NET ?? 'ctnet';
const POOL = process.env.POOL ?? '198.18.0.0/16';
const RETRY_MS = Number(process.env.RETRY_MS ?? '3000');

function config(dataDir, sock) {
  if (process.env.IPAM !== undefined) {
    const ipam = { ...JSON.parse(process.env.IPAM), dataDir, daemonSocket: sock };
    return { cniVersion: '1.1.0', name: NET, type: 'berth-ipam', ipam };
  }
  return {
    cniVersion: '1.1.0',
    name: NET,
    type: 'berth-ipam',
    ipam: {
      type: 'berth-ipam',
      dataDir,
      daemonSocket: sock,
      ranges: [[{ subnet: POOL }]],
      cluster: { blockSize: 26 },
    },
  };
}

function targets(list) {
  return list.split(',').map((x) => {
    const [sock, dataDir] = x.split(':');
    return { sock, dataDir, agent: new http.Agent({ keepAlive: true, maxSockets: 256 }) };
  });
}

function post(t, p, body) {
  return new Promise((resolve, reject) => {
    const text = JSON.stringify(body);
    const req = http.request(
      {
        socketPath: t.sock,
        path: p,
        method: 'POST',
        agent: t.agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          let parsed;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            parsed = {};
          }
          resolve({ status: res.statusCode, body: parsed });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(30000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(text);
  });
}

async function call(t, p, cid) {
  const body = {
    env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0' },
    config: config(t.dataDir, t.sock),
  };
  const t0 = Date.now();
  for (;;) {
    try {
      return { ...(await post(t, p, body)), ms: Date.now() - t0 };
    } catch (err) {
      if (Date.now() - t0 > RETRY_MS) return { status: 0, body: { msg: String(err) }, ms: Date.now() - t0 };
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function pool(n, conc, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(conc, n) }, async () => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      await fn(i);
    }
  });
  await Promise.all(workers);
}

async function storm(out, count, conc, prefix, list) {
  const ts = targets(list);
  const results = new Array(count);
  const t0 = Date.now();
  await pool(count, conc, async (i) => {
    const node = i % ts.length;
    const cid = `${prefix}-${i}`;
    const r = await call(ts[node], '/v1/allocate', cid);
    const ip = r.status === 200 ? r.body.ips[0].address.split('/')[0] : undefined;
    results[i] = { cid, node, status: r.status, ip, code: r.body.code, msg: r.body.msg, ms: r.ms };
  });
  const wall = Date.now() - t0;
  fs.writeFileSync(out, JSON.stringify(results));
  const ok = results.filter((r) => r.status === 200).length;
  const codes = {};
  for (const r of results)
    if (r.status !== 200) codes[r.code ?? `http${r.status}`] = (codes[r.code ?? `http${r.status}`] ?? 0) + 1;
  const maxFailMs = Math.max(0, ...results.filter((r) => r.status !== 200).map((r) => r.ms));
  const maxOkMs = Math.max(0, ...results.filter((r) => r.status === 200).map((r) => r.ms));
  console.log(
    JSON.stringify({
      count,
      ok,
      failed: count - ok,
      codes,
      wallMs: wall,
      perSecond: Math.round((ok / wall) * 1000),
      maxFailMs,
      maxOkMs,
      sample: results.find((r) => r.status !== 200)?.msg,
    }),
  );
  for (const t of ts) t.agent.destroy();
}

async function del(inFile, list) {
  const ts = targets(list);
  const results = JSON.parse(fs.readFileSync(inFile, 'utf8')).filter((r) => r.status === 200);
  let failed = 0;
  await pool(results.length, 100, async (i) => {
    const r = await call(ts[results[i].node], '/v1/release', results[i].cid);
    if (r.status !== 200) failed++;
  });
  console.log(JSON.stringify({ released: results.length - failed, failed }));
  for (const t of ts) t.agent.destroy();
  if (failed > 0) process.exitCode = 1;
}

async function check(endpoints, prefix, list, replies) {
  const dist = path.join(__dirname, '..', '..', 'dist');
  const { EtcdGateway } = require(path.join(dist, 'cluster', 'etcd-gateway.js'));
  const { parseIp } = require(path.join(dist, 'address', 'ip.js'));
  const { parseCidr, cidrContains } = require(path.join(dist, 'address', 'cidr.js'));
  const problems = [];
  const seen = new Map();
  let files = 0;
  const perNode = {};
  // etcd before and after the local state: the daemons keep claiming (reserve) and releasing (empty blocks)
  // while we read, so a block counts as the node's when either snapshot gives it to that node. A lease or
  // an owned block that neither snapshot gives to its node is a real violation.
  const etcd = new EtcdGateway({ endpoints: endpoints.split(','), timeoutMs: 3000 });
  const owners = new Map();
  const snapshot = async () => {
    const r = await etcd.range(`${prefix}/nets/${NET}/blocks/`, { prefix: true });
    for (const kv of r.kvs) {
      const name = kv.key.slice(kv.key.lastIndexOf('/') + 1);
      const i = name.lastIndexOf('-');
      const cidr = `${name.slice(0, i)}/${name.slice(i + 1)}`;
      owners.set(cidr, new Set([...(owners.get(cidr) ?? []), JSON.parse(kv.value).node]));
    }
    return r.kvs.length;
  };
  await snapshot();
  const local = list.split(',').map((x) => {
    const [node, dataDir] = x.split(':');
    const dir = path.join(dataDir, NET);
    const names = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => parseIp(f) !== undefined) : [];
    let rec;
    try {
      rec = JSON.parse(fs.readFileSync(path.join(dir, '.berth', 'cluster.json'), 'utf8'));
    } catch {
      rec = { blocks: [] };
    }
    return { node, names, rec };
  });
  const blocksNow = await snapshot();
  etcd.close();
  for (const [cidr, set] of owners)
    if (set.size > 1) problems.push(`block ${cidr} had two owners: ${[...set].join(', ')}`);
  for (const { node, names, rec } of local) {
    const owned = [...owners].filter(([, n]) => n.has(node)).map(([c]) => parseCidr(c));
    perNode[node] = { leases: names.length, blocks: owned.length };
    for (const ip of names) {
      files++;
      if (seen.has(ip)) problems.push(`${ip} leased on ${seen.get(ip)} and ${node}`);
      seen.set(ip, node);
      if (!owned.some((c) => cidrContains(c, parseIp(ip))))
        problems.push(`${node}: ${ip} is outside every block etcd says ${node} owns`);
    }
    for (const b of rec.blocks.filter((x) => x.state === 'owned')) {
      if (!owners.get(b.cidr)?.has(node))
        problems.push(`${node}: cluster.json lists ${b.cidr}, which etcd does not give to ${node}`);
    }
  }
  // Every acknowledged ADD (200 reply) still has its file, on the node that answered.
  let acked = 0;
  const nodes = list.split(',').map((x) => x.split(':')[0]);
  for (const f of replies) {
    for (const rep of JSON.parse(fs.readFileSync(f, 'utf8'))) {
      if (rep.status !== 200 || rep.released) continue;
      acked++;
      if (seen.get(rep.ip) !== nodes[rep.node])
        problems.push(
          `acknowledged ${rep.cid} → ${rep.ip} on ${nodes[rep.node]}: lease file ${seen.has(rep.ip) ? `on ${seen.get(rep.ip)}` : 'missing'}`,
        );
    }
  }
  console.log(
    JSON.stringify({
      files,
      blocks: blocksNow,
      perNode,
      acked,
      problems: problems.slice(0, 20),
      problemCount: problems.length,
    }),
  );
  if (problems.length > 0) process.exitCode = 1;
}

async function routes(endpoints, prefix, self, underlays) {
  const dist = path.join(__dirname, '..', '..', 'dist');
  const { EtcdGateway } = require(path.join(dist, 'cluster', 'etcd-gateway.js'));
  const via = new Map(
    underlays.split(',').map((x) => {
      const [node, addrs] = x.split('=');
      const [v4, v6] = addrs.split('/');
      return [node, { v4, v6 }];
    }),
  );
  const etcd = new EtcdGateway({ endpoints: endpoints.split(','), timeoutMs: 3000 });
  const r = await etcd.range(`${prefix}/nets/`, { prefix: true });
  etcd.close();
  const out = [];
  for (const kv of r.kvs) {
    const m = /\/nets\/[^/]+\/blocks\/(.+)-(\d+)$/.exec(kv.key);
    if (m === null) continue;
    const node = JSON.parse(kv.value).node;
    if (node === self) continue;
    const u = via.get(node);
    out.push(`${m[1]}/${m[2]} via ${m[1].includes(':') ? u?.v6 : u?.v4}`);
  }
  for (const line of out.sort()) console.log(line);
}

const [cmd, ...args] = process.argv.slice(2);
const run =
  cmd === 'storm'
    ? storm(args[0], Number(args[1]), Number(args[2]), args[3], args[4])
    : cmd === 'del'
      ? del(args[0], args[1])
      : cmd === 'check'
        ? check(args[0], args[1], args[2], args.slice(3))
        : cmd === 'routes'
          ? routes(args[0], args[1], args[2], args[3])
          : Promise.reject(new Error(`unknown command ${cmd}`));
run.catch((err) => {
  console.error(err);
  process.exitCode = 2;
});
