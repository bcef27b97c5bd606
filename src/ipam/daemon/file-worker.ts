// The lease file work of berthd's batches, done by one worker thread with plain synchronous calls: each
// create or unlink can wait for the filesystem journal, and handing them one by one to libuv's pool costs
// the main thread more than the work itself on a busy machine. One message per batch, executed in order.
import { Worker } from 'node:worker_threads';

export type FileOp =
  /** New lease: temp file with the content, link(2) to its name (exclusive), temp name removed; fd kept. */
  | { kind: 'create'; tmp: string; target: string; content: string }
  /** Released lease or dropped record; absent is fine. */
  | { kind: 'unlink'; path: string }
  /** Attachment record: created in place, or replaced through a temp file when it exists. */
  | { kind: 'record'; file: string; tmp: string; data: string };

export type FileResult = { ok: true; fd?: number } | { ok: false; code: string; message: string };

// Plain JavaScript, run with `eval`: the same source works from dist/, from a single executable and under
// a test runner that compiles TypeScript on the fly (a .ts worker file would not load there).
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const fs = require('node:fs');
function run(op) {
  if (op.kind === 'create') {
    const fd = fs.openSync(op.tmp, 'wx', 0o600);
    try {
      fs.writeSync(fd, op.content);
      fs.linkSync(op.tmp, op.target);
    } catch (e) {
      fs.closeSync(fd);
      try { fs.unlinkSync(op.tmp); } catch {}
      throw e;
    }
    try { fs.unlinkSync(op.tmp); } catch {}
    return { ok: true, fd };
  }
  if (op.kind === 'unlink') {
    try { fs.unlinkSync(op.path); } catch (e) { if (e.code !== 'ENOENT') throw e; }
    return { ok: true };
  }
  try {
    fs.writeFileSync(op.file, op.data, { mode: 0o600, flag: 'wx' });
  } catch (e) {
    if (e.code !== 'EEXIST') throw e;
    fs.writeFileSync(op.tmp, op.data, { mode: 0o600, flag: 'wx' });
    fs.renameSync(op.tmp, op.file);
  }
  return { ok: true };
}
parentPort.on('message', ({ id, ops }) => {
  const results = [];
  for (const op of ops) {
    try {
      results.push(run(op));
    } catch (e) {
      results.push({ ok: false, code: e.code || 'EIO', message: e.message });
      // What follows in the batch was decided on the assumption this op worked.
      break;
    }
  }
  parentPort.postMessage({ id, results });
});
`;

/** One worker for the process; batches of every network go through it in the order they are sent. */
export class FileWorker {
  private worker: Worker | undefined;
  private seq = 0;
  private readonly pending = new Map<number, { resolve(r: FileResult[]): void; reject(e: unknown): void }>();

  private start(): Worker {
    // The fds it opens belong to the process: the main thread syncs and closes them, so the worker must not
    // track (and close on exit) them as its own.
    const w = new Worker(WORKER_SOURCE, { eval: true, trackUnmanagedFds: false });
    w.on('message', (m: { id: number; results: FileResult[] }) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      // An idle worker must not keep a one-shot `berth` command alive.
      if (this.pending.size === 0) w.unref();
      p?.resolve(m.results);
    });
    const fail = (err: unknown): void => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
      this.worker = undefined;
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`file worker exited with code ${code}`)));
    return w;
  }

  /** Runs the ops in order; results stop at the first failure (the rest were not attempted). */
  run(ops: FileOp[]): Promise<FileResult[]> {
    if (this.worker === undefined) this.worker = this.start();
    const w = this.worker;
    const id = this.seq++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.ref();
      w.postMessage({ id, ops });
    });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    if (w !== undefined) await w.terminate();
  }
}

let shared: FileWorker | undefined;

export function fileWorker(): FileWorker {
  shared ??= new FileWorker();
  return shared;
}
