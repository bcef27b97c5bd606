#!/usr/bin/env node
// The warm path against the reference, as a runtime sees it (issue 13's targets): berth-bridge + berth-ipam
// through the C shim into a private berthd, beside Debian's bridge + host-local (/usr/lib/cni), both driven
// by cnitool in one run, alternating. A measurement, not a test.
// Run as root after `npm run build`:
//   node bench/warm/run.js [runs=30] [--rounds 3] [--cycles 2000] [--warmup 300] [--masq off|on]
// (--masq: only that setting, e.g. to profile it with BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR").
//
// Before the clock: one pod per plugin and setting (bridges and tables exist, as for every ADD but a node's
// first), then `warmup` ADD/DEL cycles of berth per setting (berthd as on a node that has run pods for a
// while; V8 optimises the handlers only after many calls). For ipMasq off, then on, each with its own bridge
// and /24 per plugin:
//  - sequential: `runs` pods per plugin, alternating run by run; per pod a fresh named netns (outside the
//    clock), then `cnitool add` and `cnitool del`, each timed as a whole process (cnitool's own start-up,
//    the shim or the Go plugin, IPAM). berthd's CPU per ADD and per DEL: utime+stime deltas of its
//    /proc/<pid>/stat around each berth call (the whole process, all threads).
//  - concurrent: `rounds` rounds, alternating; per round 50 netns, then 50 `cnitool add` started at once
//    (wall: first start to last exit), then 50 `cnitool del` at once. The median round is reported.
// Then the shim's peak RSS (/usr/bin/time's maxrss of the shim process itself, called directly with the env
// and stdin cnitool gives it, ADD and DEL) and berthd's RSS before and after `cycles` ADD/DEL cycles through
// the shim (4 at a time, ipMasq on, a new container id per cycle). At the end berthd's counters must show
// every berth call served in-process (none sent back to run standalone), else the numbers are not the
// warm path's and the bench fails. berthd runs on its own socket, run dir, nft table and data dir, and is
// stopped by PID (bench/daemon/daemon-process.js); namespaces, bridges and tables carry bt<pid>, and are
// removed in `finally`, also on SIGINT/SIGTERM. Writes bench/results/warm-<time>.md too.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const { join } = require('node:path');
const { repo, get, withDaemon } = require('../daemon/daemon-process');
const {
  cnitool,
  sh,
  trySh,
  msSince,
  pct,
  writeConflist,
  cnitoolAsync,
  nftTables,
  removeNewEmptyNftTables,
} = require('../bridge/cnitool');

const args = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const n = Number(args[i + 1]);
  if (!Number.isInteger(n)) throw new Error(`${name} needs a whole number, not ${args[i + 1]}`);
  return n;
};
const runs = Math.max(
  10,
  Number(args.find((a, i) => /^\d+$/.test(a) && !/^--/.test(args[i - 1] ?? '')) ?? 30),
);
const rounds = Math.max(1, flag('--rounds', 3));
const cycles = Math.max(0, flag('--cycles', 2000));
const warmup = Math.max(0, flag('--warmup', 300));
const onlyMasq = args.includes('--masq') ? args[args.indexOf('--masq') + 1] : undefined;
if (onlyMasq !== undefined && onlyMasq !== 'on' && onlyMasq !== 'off') throw new Error('--masq on|off');
const CONCURRENT = 50;
const CYCLE_WORKERS = 4;
const prefix = `bt${process.pid}`;
const shimBin = join(repo, 'native', 'shim', 'build', 'bin');
const reference = '/usr/lib/cni';
const TARGETS = { add: 0.5, del: 1.0, cAdd: 0.5, cDel: 1.0, shimRssKb: 2048, rssGrowthKb: 10 * 1024 };

let interrupted = '';
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => (interrupted = sig));
function checkInterrupted() {
  if (interrupted !== '') throw new Error(`interrupted by ${interrupted}`);
}

for (const [what, path] of [
  ['cnitool', cnitool],
  ['the reference bridge', join(reference, 'bridge')],
  ['the reference host-local', join(reference, 'host-local')],
  ['the shim (npm run build)', join(shimBin, 'berth-bridge')],
  ['GNU time', '/usr/bin/time'],
]) {
  if (!fs.existsSync(path)) throw new Error(`bench/warm: ${what} is missing: ${path}`);
}
if (process.getuid() !== 0) throw new Error('bench/warm: run as root');

const work = fs.mkdtempSync(join(os.tmpdir(), `${prefix}-warm-`));
const netconf = join(work, 'net.d');
const refData = join(work, 'host-local');
const runDir = join(work, 'run');
const table = `${prefix}t`;
for (const d of [netconf, refData, runDir]) fs.mkdirSync(d, { recursive: true });

/**
 * The four networks: per ipMasq setting (m = 0 off, 1 on) one for the reference and one for berth, each on
 * its own bridge and /24 of 198.19.224.0/22.
 */
function networks(berthData) {
  const plugin = (m, label, type, ipam, third) => {
    const name = `${prefix}${label[0]}${m}`;
    const ranges = [[{ subnet: `198.19.${third}.0/24` }]];
    const p = { label, masq: m === 1, net: name, bridge: name, type, ipam: { ...ipam, ranges } };
    return { ...p, conflist: writeConflist(netconf, p) };
  };
  return [0, 1].map((m) => ({
    masq: m === 1,
    plugins: [
      plugin(m, 'reference', 'bridge', { type: 'host-local', dataDir: refData }, 224 + 2 * m),
      plugin(m, 'berth', 'berth-bridge', { type: 'berth-ipam', dataDir: berthData }, 225 + 2 * m),
    ],
  }));
}

let nsSeq = 0;
const liveNs = new Set();
function addNs() {
  const ns = `${prefix}-n${nsSeq++}`;
  sh('ip', ['netns', 'add', ns]);
  liveNs.add(ns);
  return ns;
}
function delNs(ns) {
  trySh('ip', ['netns', 'del', ns]);
  liveNs.delete(ns);
}

/** utime + stime of a process, all threads, in ms (from /proc/<pid>/stat, clock ticks of 10 ms). */
function cpuMs(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}
/** VmRSS or VmHWM of a process, kB. */
function statusKb(pid, key) {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

/** Runs the shim as berth-bridge with the env and stdin cnitool gives it; with GNU time when `rssFile`. */
function shimCall(env, p, command, containerId, ns, rssFile) {
  const plugin = join(shimBin, 'berth-bridge');
  const [cmd, argv] = rssFile ? ['/usr/bin/time', ['-f', '%M', '-o', rssFile, plugin]] : [plugin, []];
  const { plugins, ...top } = p.conflist;
  const stdin = JSON.stringify({ ...top, ...plugins[0] });
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, {
      env: {
        ...env,
        CNI_COMMAND: command,
        CNI_CONTAINERID: containerId,
        CNI_NETNS: `/var/run/netns/${ns}`,
        CNI_IFNAME: 'eth0',
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`shim ${command}: ${code} ${out}`)),
    );
    child.stdin.end(stdin);
  });
}

function samples() {
  const one = () => ({ add: [], del: [], cAdd: [], cDel: [] });
  return { reference: one(), berth: one(), cpuAdd: 0, cpuDel: 0 };
}

async function sequential(env, pid, plugins, s, n = runs) {
  for (let i = 0; i < n; i++) {
    for (const p of i % 2 === 0 ? plugins : [...plugins].reverse()) {
      checkInterrupted();
      const ns = addNs();
      try {
        const berth = p.label === 'berth';
        const c0 = berth ? cpuMs(pid) : 0;
        s[p.label].add.push(await cnitoolAsync('add', p.net, ns, env));
        const c1 = berth ? cpuMs(pid) : 0;
        s[p.label].del.push(await cnitoolAsync('del', p.net, ns, env));
        if (berth) {
          s.cpuAdd += c1 - c0;
          s.cpuDel += cpuMs(pid) - c1;
        }
      } finally {
        delNs(ns);
      }
    }
  }
}

async function concurrent(env, plugins, s) {
  for (let r = 0; r < rounds; r++) {
    for (const p of r % 2 === 0 ? plugins : [...plugins].reverse()) {
      checkInterrupted();
      const pods = Array.from({ length: CONCURRENT }, addNs);
      let deleted = false;
      try {
        for (const [command, into] of [
          ['add', s[p.label].cAdd],
          ['del', s[p.label].cDel],
        ]) {
          const t0 = process.hrtime.bigint();
          const settled = await Promise.allSettled(pods.map((ns) => cnitoolAsync(command, p.net, ns, env)));
          into.push(msSince(t0));
          const failed = settled.filter((x) => x.status === 'rejected');
          if (failed.length > 0)
            throw new Error(`${failed.length} concurrent ${command}s failed: ${failed[0].reason}`);
        }
        deleted = true;
      } finally {
        // After a failure the runtime's DEL, so the reference's iptables chains go too.
        if (!deleted) await Promise.allSettled(pods.map((ns) => cnitoolAsync('del', p.net, ns, env)));
        pods.forEach(delNs);
      }
    }
  }
}

async function shimRss(env, p) {
  const file = join(work, 'rss');
  const kb = { add: 0, del: 0 };
  const ns = addNs();
  try {
    for (let i = 0; i < 10; i++) {
      for (const command of ['ADD', 'DEL']) {
        await shimCall(env, p, command, `${prefix}-rss${i}`, ns, file);
        const key = command.toLowerCase();
        kb[key] = Math.max(kb[key], Number(fs.readFileSync(file, 'utf8').trim().split('\n').pop()));
      }
    }
  } finally {
    delNs(ns);
  }
  return kb;
}

/** `count` ADD/DEL cycles through the shim, CYCLE_WORKERS at a time, each worker in its own netns. */
async function cycleThrough(env, p, count, tag) {
  let next = 0;
  await Promise.all(
    Array.from({ length: CYCLE_WORKERS }, async () => {
      const ns = addNs();
      try {
        while (next < count) {
          checkInterrupted();
          const id = `${prefix}-${tag}${next++}`;
          await shimCall(env, p, 'ADD', id, ns);
          await shimCall(env, p, 'DEL', id, ns);
        }
      } finally {
        delNs(ns);
      }
    }),
  );
}

async function churn(env, pid, p) {
  const before = statusKb(pid, 'VmRSS');
  const t0 = process.hrtime.bigint();
  await cycleThrough(env, p, cycles, 'c');
  return { before, after: statusKb(pid, 'VmRSS'), hwm: statusKb(pid, 'VmHWM'), seconds: msSince(t0) / 1000 };
}

/** Sums over berthd's /metrics lines that match `re` (all label sets). */
async function metricSum(socket, re) {
  const metrics = await get(socket, '/metrics');
  return metrics
    .split('\n')
    .filter((l) => re.test(l))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
}

/** berthd's own counters: every call served in-process, none sent back (421). */
async function servedCounts(socket) {
  return {
    served: await metricSum(socket, /^berthd_plugin_calls_total\{/),
    errors: await metricSum(socket, /^berthd_plugin_errors_total\{/),
    fallbacks: await metricSum(socket, /^berthd_plugin_fallbacks_total\{/),
  };
}

/** Seconds berthd spent in berth-bridge calls of `command` so far (its latency histogram's sum). */
function daemonSeconds(socket, command) {
  const re = new RegExp(
    `^berthd_plugin_call_duration_seconds_sum\\{plugin="berth-bridge",command="${command}"\\}`,
  );
  return metricSum(socket, re);
}

const load = () =>
  os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');
const ms = (x) => `${x.toFixed(1)} ms`;
const mb = (kb) => `${(kb / 1024).toFixed(1)} MB`;
const verdict = (ok) => (ok ? 'pass' : '**miss**');

/** The table rows of the timed phases, per ipMasq setting. */
function timingRows(results) {
  const lines = [];
  for (const { masq, s } of results) {
    const m = masq ? 'on' : 'off';
    const ref = s.reference;
    const b = s.berth;
    const rows = [
      ['ADD median (p90)', ref.add, b.add, TARGETS.add, 0.5],
      ['DEL median (p90)', ref.del, b.del, TARGETS.del, 0.5],
      [`${CONCURRENT} concurrent ADDs, wall (median round)`, ref.cAdd, b.cAdd, TARGETS.cAdd],
      [`${CONCURRENT} concurrent DELs, wall (median round)`, ref.cDel, b.cDel, TARGETS.cDel],
    ];
    for (const [what, r, o, target, p90] of rows) {
      const cell = (xs) => (p90 ? `${ms(pct(xs, 0.5))} (${ms(pct(xs, 0.9))})` : ms(pct(xs, 0.5)));
      const ratio = pct(o, 0.5) / pct(r, 0.5);
      lines.push(
        `| ${what} | ${m} | ${cell(r)} | ${cell(o)} | ${ratio.toFixed(2)} | ≤ ${target.toFixed(1)} | ${verdict(ratio <= target)} |`,
      );
    }
    const n = b.add.length;
    lines.push(
      `| berthd CPU per ADD / per DEL (sequential) | ${m} | | ${ms(s.cpuAdd / n)} / ${ms(s.cpuDel / n)} | | | |`,
    );
    lines.push(
      `| berthd time in the call per ADD / per DEL (sequential, mean) | ${m} | | ${ms((1000 * s.daemonAdd) / n)} / ${ms((1000 * s.daemonDel) / n)} | | | |`,
    );
  }
  return lines;
}

function report({ results, rss, life, counts, loadBefore, loadAfter }) {
  const lines = [
    `## bench/warm (${new Date().toISOString()}): berth (shim → berthd) against the reference bridge + host-local, through cnitool`,
    '',
    `${os.cpus().length} cores, node ${process.version}, kernel ${os.release()}; load average ${loadBefore} before, ${loadAfter} after; ` +
      `${runs} sequential pods per plugin and setting, ${rounds} rounds of ${CONCURRENT} concurrent, berthd warmed by ${warmup} ADD/DEL cycles per setting, ${cycles} churn cycles`,
    '',
    '| measure | ipMasq | reference | berth | berth / reference | target | |',
    '| --- | --- | ---: | ---: | ---: | ---: | --- |',
  ];
  lines.push(...timingRows(results));
  const shim = Math.max(rss.add, rss.del);
  lines.push(
    `| shim peak RSS, ADD / DEL | | | ${mb(rss.add)} / ${mb(rss.del)} | | ≤ 2 MB | ${verdict(shim <= TARGETS.shimRssKb)} |`,
  );
  const growth = life.after - life.before;
  lines.push(
    `| berthd RSS before → after ${cycles} ADD/DEL cycles (peak) | on | | ${mb(life.before)} → ${mb(life.after)} (${mb(life.hwm)}) | ${growth < 0 ? '−' : '+'}${mb(Math.abs(growth))} | growth ≤ 10 MB | ${verdict(growth <= TARGETS.rssGrowthKb)} |`,
  );
  lines.push(
    '',
    `Churn: ${cycles} cycles in ${life.seconds.toFixed(1)} s. berthd served ${counts.served} plugin calls in-process, ` +
      `${counts.errors} ended with a CNI error, ${counts.fallbacks} sent back to run standalone.`,
  );
  return lines.join('\n');
}

async function main() {
  const forward = sh('sysctl', ['-n', 'net.ipv4.ip_forward']).trim();
  const tablesBefore = nftTables();
  // berth's run dir is /run/berth, tmpfs on a node; on this VM /run and /tmp are the root filesystem, whose
  // journal the lease files' syncfs rounds hold: a run dir there makes berthd's main thread wait in unlink
  // and open for another call's journal commit, which no node pays. (Unmounted in the finally below.)
  sh('mount', ['-t', 'tmpfs', '-o', 'mode=0700,size=16m', `${prefix}-run`, runDir]);
  let nets = [];
  try {
    const daemonArgs = ['--run-dir', runDir, '--nft-table', table];
    const text = await withDaemon(
      'bt',
      async ({ socket, dataDir, pid }) => {
        nets = networks(dataDir);
        const env = {
          ...process.env,
          NETCONFPATH: netconf,
          CNI_PATH: `${shimBin}:${reference}`,
          BERTH_SOCKET: socket,
          BERTH_RUN_DIR: runDir,
          BERTH_NFT_TABLE: table,
        };
        const loadBefore = load();
        // Warm-up: the bridges and nft tables exist before the clock starts, as for every ADD but a node's first,
        // and berthd has served `warmup` ADD/DEL cycles per setting, as a node's daemon has after its first
        // pods: V8 compiles the handlers' hot code only after many calls (--warmup 0 measures a fresh daemon).
        for (const { masq, plugins } of nets) {
          await sequential(env, pid, plugins, samples(), 1);
          // Only the settings measured: a profile of one setting should hold that setting's code alone.
          if (onlyMasq === undefined || masq === (onlyMasq === 'on'))
            await cycleThrough(env, plugins[1], warmup, 'w');
        }
        const results = [];
        for (const { masq, plugins } of nets) {
          if (onlyMasq !== undefined && masq !== (onlyMasq === 'on')) continue;
          const s = samples();
          const inDaemon = [await daemonSeconds(socket, 'ADD'), await daemonSeconds(socket, 'DEL')];
          await sequential(env, pid, plugins, s);
          s.daemonAdd = (await daemonSeconds(socket, 'ADD')) - inDaemon[0];
          s.daemonDel = (await daemonSeconds(socket, 'DEL')) - inDaemon[1];
          await concurrent(env, plugins, s);
          results.push({ masq, s });
          // Shown at once: the churn below takes minutes, and an interrupted run keeps these.
          console.error(timingRows([{ masq, s }]).join('\n'));
          console.error(`bench/warm: ipMasq ${masq ? 'on' : 'off'} done (load ${load()})`);
        }
        const berthMasq = nets[1].plugins[1];
        const rss = await shimRss(env, berthMasq);
        const life = await churn(env, pid, berthMasq);
        const counts = await servedCounts(socket);
        if (counts.fallbacks > 0 || counts.errors > 0)
          throw new Error(
            `berthd sent ${counts.fallbacks} calls back and ${counts.errors} failed: not the warm path`,
          );
        return report({ results, rss, life, counts, loadBefore, loadAfter: load() });
      },
      daemonArgs,
    );
    console.log(text);
    fs.mkdirSync(join(repo, 'bench', 'results'), { recursive: true });
    const file = join(
      repo,
      'bench',
      'results',
      `warm-${new Date().toISOString().replace(/[-:]|\.\d+/g, '')}.md`,
    );
    fs.writeFileSync(file, `${text}\n`);
    console.error(`(written to ${file})`);
  } finally {
    [...liveNs].forEach(delNs);
    for (const { plugins } of nets) for (const p of plugins) trySh('ip', ['link', 'del', p.bridge]);
    trySh('nft', ['delete', 'table', 'inet', table]);
    removeNewEmptyNftTables(tablesBefore);
    trySh('sysctl', ['-qw', `net.ipv4.ip_forward=${forward}`]);
    trySh('umount', ['-l', runDir]);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
