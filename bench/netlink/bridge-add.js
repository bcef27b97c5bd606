#!/usr/bin/env node
// Kernel side of a bridge ADD, berth's netlink room against `ip -batch`: not a test, a measurement.
// Run as root after `npm run build`:  node bench/netlink/bridge-add.js [runs=30]
//
// Each run gets a fresh, named pod namespace (created before the clock starts, deleted after it stops).
// The bridge exists already (as it does for every ADD but the first). Timed sequence, both ways:
//   host: veth <hostname> with its peer eth0 created directly in the pod netns (MTU 1500), master <bridge>, up
//   pod:  198.18.0.x/20 on eth0, lo up, eth0 up, default route via 198.18.0.1
// berth: in-process, including opening the host socket and the pod socket (setns around socket creation).
// ip -batch: two processes, `ip -batch -` for the host side and `ip -n <pod> -batch -` for the pod side.
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const { join } = require('node:path');

const dist = join(__dirname, '..', '..', 'dist', 'netlink');
const t0 = process.hrtime.bigint();
const { openNetlink } = require(join(dist, 'rtnetlink.js'));
const requireMs = Number(process.hrtime.bigint() - t0) / 1e6;

const runs = Math.max(30, Number(process.argv[2] ?? 30));
const prefix = `bt${process.pid}`;
const bridge = `${prefix}br`;

function sh(cmd, args, input) {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function berthAdd(ns, hostVeth, ip) {
  const path = `/var/run/netns/${ns}`;
  const host = openNetlink();
  let pod;
  try {
    const veth = await host.createVethPair({ name: hostVeth, peerName: 'eth0', peerNetns: path, mtu: 1500 });
    await host.setMaster(veth.index, bridgeIndex);
    await host.setUp(veth.index);
    pod = openNetlink(path);
    await pod.addAddress({ link: 'eth0', address: ip, prefixLength: 20 });
    await pod.setUp('lo');
    await pod.setUp('eth0');
    await pod.addRoute({ dst: '0.0.0.0/0', gateway: '198.18.0.1' });
  } finally {
    pod?.close();
    host.close();
  }
}

function ipBatchAdd(ns, hostVeth, ip) {
  sh(
    'ip',
    ['-batch', '-'],
    `link add ${hostVeth} mtu 1500 type veth peer name eth0 netns ${ns}\nlink set ${hostVeth} master ${bridge}\nlink set ${hostVeth} up\n`,
  );
  sh(
    'ip',
    ['-n', ns, '-batch', '-'],
    `addr add ${ip}/20 dev eth0\nlink set lo up\nlink set eth0 up\nroute add default via 198.18.0.1\n`,
  );
}

/** The outcome must be the same either way: checked once per method with ip -j. */
function verify(ns, hostVeth, ip) {
  const h = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', hostVeth]))[0];
  const a = JSON.parse(sh('ip', ['-n', ns, '-j', 'addr', 'show', 'dev', 'eth0']))[0];
  const r = JSON.parse(sh('ip', ['-n', ns, '-j', 'route', 'show', 'default']));
  const lo = JSON.parse(sh('ip', ['-n', ns, '-j', 'link', 'show', 'dev', 'lo']))[0];
  const ok =
    h.master === bridge &&
    h.flags.includes('UP') &&
    a.flags.includes('UP') &&
    a.addr_info.some((x) => x.local === ip && x.prefixlen === 20) &&
    r[0]?.gateway === '198.18.0.1' &&
    lo.flags.includes('UP');
  if (!ok) throw new Error(`unexpected state after ADD in ${ns}`);
}

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
  return {
    median: (s[Math.floor((s.length - 1) / 2)] + s[Math.ceil((s.length - 1) / 2)]) / 2,
    p90: q(0.9),
    min: s[0],
    max: s[s.length - 1],
  };
}

let bridgeIndex;

async function main() {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
  sh('ip', ['link', 'set', bridge, 'up']);
  const times = { berth: [], ip: [] };
  try {
    bridgeIndex = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', bridge]))[0].ifindex;
    // One untimed warm-up of each, verified.
    for (let i = 0; i < runs + 1; i++) {
      for (const method of i % 2 === 0 ? ['berth', 'ip'] : ['ip', 'berth']) {
        const ns = `${prefix}-${method[0]}${i}`;
        const hostVeth = `${prefix}${method[0]}${i}`;
        const ip = `198.18.0.${10 + (i % 200)}`;
        sh('ip', ['netns', 'add', ns]);
        try {
          const start = process.hrtime.bigint();
          if (method === 'berth') await berthAdd(ns, hostVeth, ip);
          else ipBatchAdd(ns, hostVeth, ip);
          const ms = Number(process.hrtime.bigint() - start) / 1e6;
          if (i === 0) verify(ns, hostVeth, ip);
          else times[method].push(ms);
        } finally {
          spawnSync('ip', ['netns', 'del', ns]);
          spawnSync('ip', ['link', 'del', hostVeth], { stdio: 'ignore' });
        }
      }
    }
  } finally {
    spawnSync('ip', ['link', 'del', bridge]);
  }
  const b = stats(times.berth);
  const p = stats(times.ip);
  const f = (x) => x.toFixed(2).padStart(7);
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  console.log(
    `kernel side of a bridge ADD, ${runs} runs each (fresh netns per run), kernel ${kernel}, node ${process.version}`,
  );
  console.log(`require('dist/netlink/rtnetlink') once: ${requireMs.toFixed(2)} ms`);
  console.log('method                          median      p90      min      max   (ms)');
  console.log(`berth netlink (in-process)    ${f(b.median)}  ${f(p90(b))}  ${f(b.min)}  ${f(b.max)}`);
  console.log(`ip -batch (2 processes)       ${f(p.median)}  ${f(p90(p))}  ${f(p.min)}  ${f(p.max)}`);
  console.log(
    `ratio ip/berth (median)       ${(p.median / b.median).toFixed(2)}x; target berth <= 5 ms: ${b.median <= 5 ? 'met' : 'NOT met'}`,
  );
}

function p90(s) {
  return s.p90;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
