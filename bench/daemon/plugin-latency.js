#!/usr/bin/env node
// berth-ipam ADD latency with and without berthd: the built plugin run as a runtime runs it (one process
// per call, stdin config, CNI_* env), timed from spawn to exit. Not a test, a measurement.
// Run as root after `npm run build`:  node bench/daemon/plugin-latency.js [runs=60]
//
// Runs alternate (files, daemon, files, daemon, …) on two networks in one temp data dir, so both see the
// same machine load; each ADD is followed by an untimed DEL. Also prints what loading node:http would
// add to the plugin (the daemon client speaks HTTP/1.1 on a raw node:net socket instead).
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const os = require('node:os');
const { join } = require('node:path');
const { repo, withDaemon } = require('./daemon-process');

const runs = Math.max(10, Number(process.argv[2] ?? 60));

function conf({ socket, dataDir }, name, daemon) {
  return JSON.stringify({
    cniVersion: '1.0.0',
    name,
    type: 'berth-ipam',
    ipam: {
      type: 'berth-ipam',
      dataDir,
      daemonSocket: daemon ? socket : false,
      ranges: [[{ subnet: '198.18.192.0/24' }]],
    },
  });
}

function run(command, cid, stdin) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(join(repo, 'bin', 'berth-ipam'), [], {
      env: {
        PATH: process.env.PATH,
        CNI_COMMAND: command,
        CNI_CONTAINERID: cid,
        CNI_NETNS: '/run/netns/x',
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/opt/cni/bin',
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`${command} ${cid}: exit ${code} ${out}`));
      else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
    });
    child.stdin.end(stdin);
  });
}

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(1);
  return `median ${q(0.5)} ms, p90 ${q(0.9)} ms, min ${s[0].toFixed(1)} ms`;
}

async function main() {
  await withDaemon('btlat', async (d) => {
    const files = [];
    const viaDaemon = [];
    for (let i = 0; i < runs; i++) {
      for (const [name, useDaemon, into] of [
        ['btlatf', false, files],
        ['btlatd', true, viaDaemon],
      ]) {
        const c = conf(d, name, useDaemon);
        into.push(await run('ADD', `lat-${i}`, c));
        await run('DEL', `lat-${i}`, c);
      }
    }
    const http = spawnSync(
      process.execPath,
      [
        '-e',
        "const t=process.hrtime.bigint();require('node:http');console.log(Number(process.hrtime.bigint()-t)/1e6)",
      ],
      { encoding: 'utf8' },
    );
    const net = spawnSync(
      process.execPath,
      [
        '-e',
        "const t=process.hrtime.bigint();require('node:net');console.log(Number(process.hrtime.bigint()-t)/1e6)",
      ],
      { encoding: 'utf8' },
    );
    console.log(
      `berth-ipam ADD, ${runs} runs each, ${os.cpus().length} CPUs, load ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
    console.log(`  on the files:     ${stats(files)}`);
    console.log(`  through berthd:   ${stats(viaDaemon)}`);
    console.log(
      `  require('node:http') in a fresh node: ${Number(http.stdout).toFixed(2)} ms; require('node:net'): ${Number(net.stdout).toFixed(2)} ms`,
    );
  });
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
