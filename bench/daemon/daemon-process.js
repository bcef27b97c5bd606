// A throw-away berthd for the benches in this directory: the built daemon (bin/berth) on a socket and a data
// dir in a fresh temp dir, ready once /v1/health answers, stopped with SIGTERM and removed afterwards, also
// when the bench fails (SIGKILL if it has not exited 10 s after the SIGTERM). BENCH_NODE_ARGS passes node
// flags to the daemon (e.g. "--cpu-prof --cpu-prof-dir=DIR").
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const { join } = require('node:path');

const repo = join(__dirname, '..', '..');

/** GET on the daemon's socket; resolves with the body as text. */
function get(socket, path) {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: socket, path }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks).toString()));
      })
      .on('error', reject);
  });
}

/**
 * Runs `fn({ dir, socket, dataDir, pid })` against a fresh daemon started with `extraArgs` besides its
 * socket and data dir; returns what `fn` returns.
 */
async function withDaemon(tag, fn, extraArgs = []) {
  const dir = fs.mkdtempSync(join(os.tmpdir(), `${tag}${process.pid}-`));
  const socket = join(dir, 'berthd.sock');
  const dataDir = join(dir, 'data');
  const nodeArgs = process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(' ') : [];
  const daemon = spawn(
    process.execPath,
    [
      ...nodeArgs,
      join(repo, 'bin', 'berth'),
      'daemon',
      '--socket',
      socket,
      '--data-dir',
      dataDir,
      '--log-level',
      'warn',
      ...extraArgs,
    ],
    {
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  const exited = new Promise((resolve) => daemon.once('exit', resolve));
  try {
    for (let i = 0; ; i++) {
      try {
        await get(socket, '/v1/health');
        break;
      } catch (err) {
        if (i >= 200 || daemon.exitCode !== null)
          throw new Error(`berthd did not come up: ${err.message}`, { cause: err });
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    return await fn({ dir, socket, dataDir, pid: daemon.pid });
  } finally {
    if (daemon.exitCode === null) daemon.kill('SIGTERM');
    const kill = setTimeout(() => daemon.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(kill);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

module.exports = { repo, get, withDaemon };
