// berthd in-process on a temp socket and temp data dir (any user): the daemon's store against the files
// and lease-file-store's index, batching, bad input, clients that leave, and the CLI's pure pieces.
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { spawnSync } from 'node:child_process';
import type * as fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import * as net from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { formatIp } from '../../src/address/ip';
import { ErrorCode } from '../../src/cni-spec/errors';
import { parseRequest } from '../../src/cni-spec/request';
import { callDaemon } from '../../src/ipam/daemon-client';
import { createLogger } from '../../src/daemon/log';
import { FilesystemSync } from '../../src/ipam/daemon/fs-sync';
import { Metrics } from '../../src/daemon/metrics';
import { Allocate, Release, Status } from '../../src/ipam/daemon/protocol';
import { BerthServer } from '../../src/daemon/server';
import { Service } from '../../src/ipam/daemon/service';
import { add as fileAdd, status as fileStatus } from '../../src/ipam/handlers';
import { openLeaseFileStore } from '../../src/ipam/lease-file-store';
import { loadNativeAddon } from '../../src/native-addon';
import { parseValidList, runGc } from '../../src/cli/gc';
import { age, leaseTable, runLeasesList, runLeasesRelease } from '../../src/cli/leases';

const BOOT = 'boot-test-1';

let dir: string;
let dataDir: string;
let socket: string;
let server: BerthServer | undefined;
let service: Service;
let logs: string[];

function conf(network = 'btnet', extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: '1.0.0',
    name: network,
    type: 'berth-ipam',
    ipam: { type: 'berth-ipam', dataDir, ranges: [[{ subnet: '198.18.200.0/24' }]], ...extra },
  };
}

function envelope(
  cid: string,
  network = 'btnet',
  args = '',
): { env: Record<string, string>; config: Record<string, unknown> } {
  return {
    env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0', CNI_ARGS: args },
    config: conf(network),
  };
}

function leaseFiles(network = 'btnet'): Map<string, string> {
  const d = join(dataDir, network);
  const out = new Map<string, string>();
  if (!existsSync(d)) return out;
  for (const f of readdirSync(d))
    if (/^\d+\.\d+\.\d+\.\d+$/.test(f)) out.set(f, readFileSync(join(d, f), 'utf8'));
  return out;
}

/** Inode numbers of the regular files under `root`, subdirectories included. */
function inodesUnder(root: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync(root)) {
    const path = join(root, name);
    const st = lstatSync(path);
    if (st.isDirectory()) out.push(...inodesUnder(path));
    else if (st.isFile()) out.push(st.ino);
  }
  return out;
}

/**
 * An allocate for `cid` on a raw connection (the test closes it to play a caller that left), once berthd
 * waits for the network's flock with it (holdNetworkLock first).
 */
async function allocateWaitingOnLock(cid: string): Promise<net.Socket> {
  const c = net.createConnection(socket);
  await new Promise<void>((resolve) => c.on('connect', resolve));
  const body = JSON.stringify(envelope(cid));
  c.write(
    `POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  await expect.poll(() => service.batchStats().lockWaits, { timeout: 5000 }).toBeGreaterThan(0);
  return c;
}

/** Holds the network's flock as a plugin working on the files would; returns the release. */
function holdNetworkLock(network = 'btnet'): () => void {
  const netDir = join(dataDir, network);
  mkdirSync(netDir, { recursive: true });
  const fd = openSync(join(netDir, 'lock'), 'a');
  const addon = loadNativeAddon();
  expect(addon.flock(fd, 'ex', true)).toBe(true);
  return () => {
    addon.flock(fd, 'un');
    closeSync(fd);
  };
}

async function startServer(maxBodyBytes?: number, syncer?: FilesystemSync): Promise<void> {
  const log = createLogger({ format: 'text', level: 'debug', write: (s) => logs.push(s) });
  const metrics = new Metrics();
  service = new Service({ dataDir, bootId: BOOT, log, metrics, ...(syncer ? { syncer } : {}) });
  server = new BerthServer({
    service,
    log,
    metrics,
    socketPath: socket,
    // This process, as whichever user runs the tests, may change things (root only by default).
    writerUids: [process.getuid!()],
    ...(maxBodyBytes ? { maxBodyBytes } : {}),
  });
  await new Promise<void>((resolve) => server!.http.listen(socket, resolve));
}

/** Sends raw bytes and returns the raw reply (the connection is closed by the server or by `end`). */
function raw(bytes: string, opts: { end?: boolean } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(socket);
    const chunks: Buffer[] = [];
    c.on('connect', () => (opts.end === false ? c.write(bytes) : c.end(bytes)));
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('close', () => resolve(Buffer.concat(chunks).toString()));
    c.on('error', reject);
  });
}

function jsonOf(reply: string): { status: number; body: Record<string, unknown> } {
  const status = Number(/^HTTP\/1\.1 (\d+)/.exec(reply)?.[1]);
  return { status, body: JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4)) as Record<string, unknown> };
}

/** Allocates through the daemon's socket for `cid`; the address handed out, without its prefix. */
async function allocatedIp(cid: string): Promise<string> {
  const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(cid) });
  return (r.body as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]!;
}

/** A CLI's io whose out and err both land in `lines`. */
function capturedIo(): { lines: string[]; io: { out: (x: string) => void; err: (x: string) => void } } {
  const lines: string[] = [];
  return { lines, io: { out: (x) => void lines.push(x), err: (x) => void lines.push(x) } };
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), `btd${process.pid}-`));
  dataDir = join(dir, 'data');
  socket = join(dir, 'berthd.sock');
  logs = [];
});

afterEach(async () => {
  if (server !== undefined) {
    await server.shutdown();
    service.close();
    server = undefined;
  }
  rmSync(dir, { recursive: true, force: true });
});

describe('the daemon store keeps the files and lease-file-store index as the plugin would', () => {
  test('allocate through the socket: the IP file, its record, and a plugin on the files sees it without rebuilding', async () => {
    await startServer();
    const r = await callDaemon({
      socket,
      method: 'POST',
      path: Allocate.path,
      body: envelope('ctr-a', 'btnet', 'K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0'),
    });
    expect(r.status).toBe(200);
    const ip = (r.body as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]!;
    expect(leaseFiles().get(ip)).toBe('ctr-a\r\neth0');

    // The plugin's own store, working on the files: same lease, metadata kept, and no index rebuild. Its
    // flock is blocking, and here it would run in the daemon's own process: wait until the daemon has let go
    // of the lock (it may still be writing the index after the reply), as a separate plugin process would.
    await service.drain();
    const warnings: string[] = [];
    const store = openLeaseFileStore({
      dataDir,
      network: 'btnet',
      bootId: BOOT,
      warn: (m) => warnings.push(m),
    });
    const leases = await store.transact(async (s) => s.leasesOf({ containerId: 'ctr-a', ifname: 'eth0' }), {
      readOnly: true,
    });
    expect(leases.map((l) => l.ip.value)).toHaveLength(1);
    expect(leases[0]!.meta.pod).toEqual({ namespace: 'ns1', name: 'web-0' });
    expect(warnings).toEqual([]);

    // A plugin ADD on the files next to it takes another address and keeps the index trusted.
    const req = parseRequest({
      env: {
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: 'ctr-b',
        CNI_NETNS: '/x',
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/x',
      },
      stdin: JSON.stringify(conf()),
    });
    const res = await fileAdd(req, {
      bootId: BOOT,
      warn: (m) => warnings.push(m),
      now: () => new Date(),
      openStore: () => store,
    });
    const ipB = res.ips![0]!.address.split('/')[0]!;
    expect(ipB).not.toBe(ip);
    expect(warnings).toEqual([]);

    // …and the daemon sees the plugin's lease at once (its directory changed: re-read).
    const list = await callDaemon({ socket, method: 'GET', path: '/v1/leases?network=btnet' });
    expect(
      (list.body as { leases: { ip: string; containerId: string }[] }).leases.map((l) => [
        l.ip,
        l.containerId,
      ]),
    ).toEqual([
      [ip, 'ctr-a'],
      [ipB, 'ctr-b'],
    ]);

    const del = await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('ctr-a') });
    expect(del.status).toBe(200);
    expect([...leaseFiles().keys()]).toEqual([ipB]);
    // The record is index, written when the daemon lets go of the lock.
    await service.drain();
    expect(existsSync(join(dataDir, 'btnet', '.berth', 'att', 'ctr-a:eth0'))).toBe(false);
  });

  test("file work on one address keeps the batch's order: take, give back, take again by another", async () => {
    await startServer();
    const store = service.store(dataDir, 'btnet');
    const ip = { family: 4 as const, value: (198n << 24n) | (18n << 16n) | (200n << 8n) | 9n };
    const meta = { origin: 'berth' as const };
    await store.transact(async (s) => {
      expect(await s.reserve({ ip, containerId: 'first', ifname: 'eth0', meta }, 0)).toBe(true);
      const [lease] = await s.leasesOf({ containerId: 'first', ifname: 'eth0' });
      await s.release(lease!);
      expect(await s.reserve({ ip, containerId: 'second', ifname: 'eth0', meta }, 0)).toBe(true);
    });
    expect(leaseFiles()).toEqual(new Map([['198.18.200.9', 'second\r\neth0']]));
    await store.transact(async (s) => {
      const [lease] = await s.leasesOf({ containerId: 'second', ifname: 'eth0' });
      await s.release(lease!);
      expect(await s.reserve({ ip, containerId: 'third', ifname: 'eth0', meta }, 0)).toBe(true);
      const [again] = await s.leasesOf({ containerId: 'third', ifname: 'eth0' });
      await s.release(again!);
    });
    expect(leaseFiles()).toEqual(new Map());
    // 'third' came and went within one hold: its record was never written; 'second''s is gone.
    await service.drain();
    expect(readdirSync(join(dataDir, 'btnet', '.berth', 'att'))).toEqual([]);
    expect(readdirSync(join(dataDir, 'btnet', '.berth', 'tmp'))).toEqual([]);
  });

  test('a release waits for no fsync round; an allocation does', async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    await service.drain();
    const rounds = service.batchStats().fsyncRounds;
    expect(rounds).toBeGreaterThan(0);
    const del = await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('ctr-1') });
    expect(del.status).toBe(200);
    expect(leaseFiles()).toEqual(new Map());
    await service.drain();
    expect(service.batchStats().fsyncRounds).toBe(rounds);
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-2') });
    expect(service.batchStats().fsyncRounds).toBe(rounds + 1);
  });

  test('concurrent requests share batches and fsync rounds, and get distinct addresses', async () => {
    await startServer();
    const n = 60;
    // A plugin on the files holds the network's flock until all 60 requests are in: the first batch waits
    // for it and the others queue behind it. Without that wait, how many requests share a batch depends on
    // how their bytes interleave with the batches, which load changes (60 batches once, in a CI run).
    const release = holdNetworkLock();
    let all: Promise<{ status: number; body: unknown }[]>;
    try {
      all = Promise.all(
        Array.from({ length: n }, (_, i) =>
          callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(`ctr-${i}`) }),
        ),
      );
      await expect.poll(() => server!.inFlightCount, { timeout: 5000 }).toBe(n);
    } finally {
      release();
    }
    const replies = await all;
    const ips = replies.map((r) => (r.body as { ips: { address: string }[] }).ips[0]!.address);
    expect(new Set(ips).size).toBe(n);
    expect(leaseFiles().size).toBe(n);
    const stats = service.batchStats();
    expect(stats.batchedRequests).toBe(n);
    // With 60 requests in flight at once, some must have been committed together, and made durable together.
    expect(stats.batches).toBeLessThan(n);
    expect(stats.fsyncRounds).toBeLessThan(stats.batches + 1);
  });

  test('ADD again for the same attachment returns the same address (idempotent, as berth-ipam)', async () => {
    await startServer();
    const a = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    const b = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    expect(b.body).toEqual(a.body);
    expect(leaseFiles().size).toBe(1);
  });

  test('an ADD again while the first one is on its way to the disk is answered only once the lease is durable', async () => {
    // The first sync round is held before its syncfs until the test lets it go; later rounds run.
    let letGo!: () => void;
    let rounds = 0;
    let synced = 0;
    const gated = new FilesystemSync(async (fd) => {
      if (rounds++ === 0) await new Promise<void>((r) => (letGo = r));
      await loadNativeAddon().syncfs(fd);
      synced++;
    });
    await startServer(undefined, gated);
    const first = callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    await expect.poll(() => rounds).toBe(1); // the first ADD's lease is written, its round held
    let again;
    try {
      // The repeat finds the lease in memory, not yet on the disk: its answer waits for a syncfs of its own.
      again = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
      expect(synced).toBe(1);
    } finally {
      letGo();
    }
    const a = await first;
    expect(again.body).toEqual(a.body);
    expect(leaseFiles().size).toBe(1);
  });

  test("allocate/release cycles recycle inodes: a release keeps the lease's inode as a spare, later leases are spares", async () => {
    await startServer();
    const netDir = join(dataDir, 'btnet');
    const spareDir = join(netDir, '.berth', 'spare');
    const spareInodes = (): Set<number> => new Set(existsSync(spareDir) ? inodesUnder(spareDir) : []);
    const leaseInode = (): number => statSync(join(netDir, [...leaseFiles().keys()][0]!)).ino;
    for (let i = 0; i < 30; i++) {
      const before = spareInodes();
      await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(`ctr-${i}`) });
      await service.drain();
      const lease = leaseInode();
      // Once the pool has grown to what a pair needs (a released inode is reused only after a sync round,
      // the next allocation's, covered its removal), no inode is allocated for a lease: it is a spare.
      if (i >= 10) expect(before.has(lease)).toBe(true);
      await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope(`ctr-${i}`) });
      await service.drain();
      expect(leaseFiles()).toEqual(new Map());
      // The released lease's inode was not freed: it waits under .berth/spare, stamped as no lease.
      expect(spareInodes().has(lease)).toBe(true);
    }
    const spares = readdirSync(spareDir);
    expect(spares.length).toBeGreaterThan(0);
    // Bounded by what is in flight around a sync round, not by the number of cycles (30 here: without
    // recycling there would be one spare per cycle). A round that ends just after the next placement looked
    // for a warm spare adds one: 8 or fewer on a quiet machine, 9 seen at load 11.
    expect(spares.length).toBeLessThanOrEqual(15);
    for (const f of spares) expect(readFileSync(join(spareDir, f), 'latin1').startsWith('{')).toBe(true);

    // A restarted daemon takes the spares over: after its first sync round, its leases are among them.
    const kept = spareInodes();
    await server!.shutdown();
    service.close();
    server = undefined;
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('after-restart-1') });
    await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('after-restart-1') });
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('after-restart-2') });
    await service.drain();
    expect(kept.has(leaseInode())).toBe(true);
  });

  test("a read-only listing on the files (the admin CLI without a daemon) leaves the daemon's spares alone", async () => {
    await startServer();
    for (const cid of ['ctr-1', 'ctr-2']) {
      await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(cid) });
      await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope(cid) });
    }
    await service.drain();
    const spareDir = join(dataDir, 'btnet', '.berth', 'spare');
    const ctimes = (): number[] =>
      readdirSync(spareDir)
        .sort()
        .map((f) => statSync(join(spareDir, f)).ctimeMs);
    const before = ctimes();
    expect(before.length).toBeGreaterThan(0);
    const onFiles = new Service({
      dataDir,
      bootId: BOOT,
      log: createLogger({ format: 'text', level: 'error', write: () => undefined }),
    });
    try {
      expect(await onFiles.list({ network: 'btnet' })).toEqual([]);
    } finally {
      onFiles.close();
    }
    expect(ctimes()).toEqual(before);
  });

  test('repeated STATUS on the files after daemon activity reads the kept occupancy map, not every lease (issue 12 item 7)', async () => {
    await startServer();
    for (const cid of ['ctr-1', 'ctr-2', 'ctr-3'])
      await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(cid) });
    await service.drain();
    const netDir = join(dataDir, 'btnet');
    const setsDir = join(netDir, '.berth', 'sets');
    const gen = (): number =>
      (JSON.parse(readFileSync(join(netDir, '.berth', 'state.json'), 'utf8')) as { gen: number }).gen;
    const maps = (): { file: string; gen: number }[] =>
      readdirSync(setsDir).map((file) => {
        const buf = readFileSync(join(setsDir, file));
        return {
          file,
          gen: (JSON.parse(buf.subarray(0, buf.indexOf(10)).toString()) as { gen: number }).gen,
        };
      });
    // berthd's commits moved the generation on: no occupancy map of the current one exists yet.
    const genAfterDaemon = gen();
    expect(maps().filter((m) => m.gen === genAfterDaemon)).toEqual([]);
    const dirMtime = statSync(netDir, { bigint: true }).mtimeNs;
    const rescans = service.batchStats().rescans;

    const store = openLeaseFileStore({ dataDir, network: 'btnet', bootId: BOOT, warn: () => undefined });
    const fileDeps = { bootId: BOOT, warn: () => undefined, now: () => new Date(), openStore: () => store };
    const statusReq = () =>
      parseRequest({
        env: { CNI_COMMAND: 'STATUS', CNI_PATH: '/x' },
        stdin: JSON.stringify({ ...conf(), cniVersion: '1.1.0' }),
      });
    await fileStatus(statusReq(), fileDeps);
    // The first STATUS built the map from the listing and kept it, at the current generation; it changed
    // nothing else: same generation, same directory mtime (berthd does not have to re-read the files).
    const kept = maps().filter((m) => m.gen === genAfterDaemon);
    expect(kept).toHaveLength(1);
    expect(gen()).toBe(genAfterDaemon);
    expect(statSync(netDir, { bigint: true }).mtimeNs).toBe(dirMtime);

    // The next STATUS answers from that map alone: mark every address taken in it (the lease files still
    // say 3 of 254) and STATUS says the pool is full. A STATUS that listed the leases would say ready.
    const path = join(setsDir, kept[0]!.file);
    const buf = readFileSync(path);
    const nl = buf.indexOf(10);
    writeFileSync(path, Buffer.concat([buf.subarray(0, nl + 1), Buffer.alloc(buf.length - nl - 1, 0xff)]));
    await expect(fileStatus(statusReq(), fileDeps)).rejects.toMatchObject({ code: 50 });
    writeFileSync(path, buf);
    await fileStatus(statusReq(), fileDeps);

    // berthd carries on without a rescan, and its next commit retires the map as before.
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-4') });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    await service.drain();
    expect(service.batchStats().rescans).toBe(rescans);
    expect(gen()).toBeGreaterThan(genAfterDaemon);
  });

  test('a plugin on the files that recreated .berth (without spare/) does not break the daemon', async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('ctr-1') });
    await service.drain();
    rmSync(join(dataDir, 'btnet', '.berth'), { recursive: true });
    const store = openLeaseFileStore({ dataDir, network: 'btnet', bootId: BOOT, warn: () => undefined });
    const req = parseRequest({
      env: {
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: 'on-files',
        CNI_NETNS: '/x',
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/x',
      },
      stdin: JSON.stringify(conf()),
    });
    await fileAdd(req, {
      bootId: BOOT,
      warn: () => undefined,
      now: () => new Date(),
      openStore: () => store,
    });
    expect(existsSync(join(dataDir, 'btnet', '.berth', 'spare'))).toBe(false);
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-2') });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('ctr-2') });
    expect([...leaseFiles().values()]).toEqual(['on-files\r\neth0']);
  });

  test('restart rebuilds from the files: a new service finds what the previous one wrote', async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    await server!.shutdown();
    service.close();
    server = undefined;
    await startServer();
    const list = await callDaemon({ socket, method: 'GET', path: '/v1/leases' });
    expect((list.body as { leases: { containerId: string }[] }).leases.map((l) => l.containerId)).toEqual([
      'ctr-1',
    ]);
  });
});

describe('taking over a host-local directory (issue 12 item 6)', () => {
  test('the daemon writes one found index, no record per lease found; the plugin on the files trusts it', async () => {
    const netDir = join(dataDir, 'btnet');
    mkdirSync(netDir, { recursive: true });
    for (let i = 0; i < 150; i++) writeFileSync(join(netDir, `198.18.200.${10 + i}`), `found-${i}\r\neth0`);
    await startServer();
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-a') });
    expect(r.status).toBe(200);
    await service.drain();
    // Before: one record per attachment found (151 files under .berth/att).
    expect(readdirSync(join(netDir, '.berth', 'att'))).toEqual(['ctr-a:eth0']);
    expect(
      readFileSync(join(netDir, '.berth', 'found'))
        .subarray(0, 1)
        .toString(),
    ).toBe('{');

    const warnings: string[] = [];
    const files = () =>
      openLeaseFileStore({ dataDir, network: 'btnet', bootId: BOOT, warn: (m) => warnings.push(m) });
    const leasesOf = (id: string) =>
      files().transact((s) => s.leasesOf({ containerId: id, ifname: 'eth0' }), { readOnly: true });
    const found = await leasesOf('found-3');
    expect(found.map((l) => formatIp(l.ip))).toEqual(['198.18.200.13']);
    expect(found[0]!.meta).toMatchObject({ origin: 'found', bootId: BOOT });
    expect(warnings).toEqual([]);

    // Released through the daemon: its found entry is hidden by a tombstone, for the plugin too.
    const del = await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('found-3') });
    expect(del.status).toBe(200);
    await service.drain();
    expect(leaseFiles().has('198.18.200.13')).toBe(false);
    expect(await leasesOf('found-3')).toEqual([]);
    const all = await files().transact((s) => s.all(), { readOnly: true });
    expect(all.map((l) => `${formatIp(l.ip)} ${l.containerId}`).sort()).toEqual(
      [...leaseFiles()].map(([ip, c]) => `${ip} ${c.split('\r\n')[0]}`).sort(),
    );
    expect(warnings).toEqual([]);

    // A restarted daemon reads the same index: the same leases, nothing written again.
    await server!.shutdown();
    service.close();
    server = undefined;
    const foundBefore = readFileSync(join(netDir, '.berth', 'found'));
    await startServer();
    const list = await callDaemon({ socket, method: 'GET', path: '/v1/leases?network=btnet' });
    expect((list.body as { leases: unknown[] }).leases).toHaveLength(150);
    const again = await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('found-4') });
    expect(again.status).toBe(200);
    await service.drain();
    expect(readFileSync(join(netDir, '.berth', 'found')).equals(foundBefore)).toBe(true);
    expect(await leasesOf('found-4')).toEqual([]);
    expect((await leasesOf('found-5')).map((l) => formatIp(l.ip))).toEqual(['198.18.200.15']);
    expect(warnings).toEqual([]);
  });
});

describe("a plugin holding a network's flock", () => {
  test('delays only that network: the daemon keeps serving others and /v1/health, then finishes the wait', async () => {
    await startServer();
    const release = holdNetworkLock();
    let waiting: Promise<{ status: number; body: unknown }>;
    try {
      waiting = callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-waits') });
      await expect.poll(() => service.batchStats().lockWaits, { timeout: 5000 }).toBeGreaterThan(0);
      // The event loop is free: another network and the health route answer meanwhile.
      const other = await callDaemon({
        socket,
        method: 'POST',
        path: Allocate.path,
        body: envelope('ctr-other', 'btother'),
      });
      expect(other.status).toBe(200);
      expect((await callDaemon({ socket, method: 'GET', path: '/v1/health' })).status).toBe(200);
      expect(leaseFiles()).toEqual(new Map());
    } finally {
      release();
    }
    const done = await waiting;
    expect(done.status).toBe(200);
    expect([...leaseFiles().values()]).toEqual(['ctr-waits\r\neth0']);
  });
});

describe("a batch that fails once the network's flock is taken", () => {
  test('lets go of the flock: a plugin on the files takes it at once', async () => {
    await startServer();
    expect(
      (await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-a') })).status,
    ).toBe(200);
    const lock = join(dataDir, 'btnet', 'lock');
    // node:fs as the store sees it (its ESM namespace follows the builtin's exports once synced).
    const builtinFs = require('node:fs') as typeof fs;
    const statSync = builtinFs.statSync;
    const restore = (): void => {
      builtinFs.statSync = statSync;
      syncBuiltinESMExports();
    };
    // The look at the lock file that follows the flock fails once (EIO).
    builtinFs.statSync = ((path: fs.PathLike, opts?: fs.StatSyncOptions) => {
      if (String(path) === lock) {
        restore();
        throw Object.assign(new Error(`EIO: i/o error, stat '${lock}'`), { code: 'EIO' });
      }
      return statSync(path, opts);
    }) as typeof fs.statSync;
    syncBuiltinESMExports();
    let failed;
    try {
      failed = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-b') });
    } finally {
      restore();
    }
    expect(failed.status).not.toBe(200);
    const other = spawnSync('flock', ['-n', lock, 'true'], { encoding: 'utf8' });
    expect(other.status, other.stderr).toBe(0);
  });
});

describe('a slow sync round (someone else writing a lot to the filesystem)', () => {
  test('does not keep the flock from a plugin on the files for more than the hold limit', async () => {
    // syncfs takes 1.5 s; the daemon keeps its hold at most 25 ms while a round's replies are out.
    const slow = new FilesystemSync(async (fd) => {
      await new Promise((r) => setTimeout(r, 1500));
      await loadNativeAddon().syncfs(fd);
    });
    await startServer(undefined, slow);
    const t0 = Date.now();
    const add = callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-slow') });
    await new Promise((r) => setTimeout(r, 150));
    // A plugin in another process, blocking on the network's flock as host-local does (at most 1 s).
    const other = spawnSync('flock', ['-w', '1', join(dataDir, 'btnet', 'lock'), 'true'], {
      encoding: 'utf8',
    });
    // flock -w 1 exits 0 only if it got the lock within its 1 s.
    expect(other.status, other.stderr).toBe(0);
    // The reply still waited for its round.
    const r = await add;
    expect(r.status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
  });
});

describe('networks that go away', () => {
  test('an idle network whose directory was removed is forgotten and its lock file closed', async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    const before = service.store(dataDir, 'btnet');
    const lockFds = (): string[] =>
      readdirSync('/proc/self/fd')
        .map((fd) => {
          try {
            return readlinkSync(`/proc/self/fd/${fd}`);
          } catch {
            return '';
          }
        })
        .filter((t) => t.startsWith(join(dataDir, 'btnet', 'lock')));
    // The reply leaves after its fsync; the index beside the files may still be being written.
    await service.drain();
    expect(lockFds()).toHaveLength(1);
    expect(service.sweep()).toBe(0);
    rmSync(dataDir, { recursive: true });
    expect(service.sweep()).toBe(1);
    expect(lockFds()).toEqual([]);
    expect(service.store(dataDir, 'btnet')).not.toBe(before);
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-2') });
    expect((r.body as { ips: { address: string }[] }).ips[0]!.address).toBe('198.18.200.2/24');
  });
});

describe('the data dirs served, remembered across restarts', () => {
  test('a removed data dir is dropped from the list; a corrupt list is ignored with a warning', async () => {
    const file = join(dir, 'berthd-data-dirs.json');
    const log = createLogger({ format: 'text', level: 'debug', write: (s) => logs.push(s) });
    const other = join(dir, 'other');
    mkdirSync(join(other, 'n1'), { recursive: true });
    writeFileSync(join(other, 'n1', 'lock'), '');
    const first = new Service({ dataDir, bootId: BOOT, log, dataDirsFile: file });
    first.store(other, 'n1');
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ version: 1, dataDirs: [other] });
    first.close();

    const second = new Service({ dataDir, bootId: BOOT, log, dataDirsFile: file });
    expect(second.knownDataDirs).toEqual([dataDir, other]);
    expect((await second.networkViews()).map((v) => [v.network, v.dataDir])).toEqual([['n1', other]]);
    await second.drain();
    rmSync(other, { recursive: true });
    expect(second.sweep()).toBe(1);
    expect(second.knownDataDirs).toEqual([dataDir]);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ version: 1, dataDirs: [] });
    second.close();

    writeFileSync(file, '{"dataDirs": [');
    const third = new Service({ dataDir, bootId: BOOT, log, dataDirsFile: file });
    expect(third.knownDataDirs).toEqual([dataDir]);
    expect(logs.join('')).toMatch(/WARN ignoring a corrupt list of data dirs served/);
    third.close();
  });
});

describe('bad input is a JSON error with an HTTP status and a CNI code, never a crash', () => {
  const cases: { name: string; request: string; status: number; code: number }[] = [
    {
      name: 'malformed JSON',
      request:
        'POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{"env": [',
      status: 400,
      code: ErrorCode.DecodingFailure,
    },
    {
      name: 'envelope without config',
      request:
        'POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{"env":{}}',
      status: 400,
      code: ErrorCode.DecodingFailure,
    },
    {
      name: 'unknown route',
      request: 'GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      status: 404,
      code: ErrorCode.UnsupportedField,
    },
    {
      name: 'wrong method',
      request: 'GET /v1/allocate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      status: 405,
      code: ErrorCode.UnsupportedField,
    },
    {
      name: 'unknown network',
      request: 'GET /v1/leases?network=nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      status: 404,
      code: ErrorCode.InvalidNetworkConfig,
    },
    {
      name: 'oversized body (declared)',
      request: 'POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}',
      status: 413,
      code: ErrorCode.DecodingFailure,
    },
    {
      name: 'garbage instead of HTTP',
      request: 'HELLO\r\n\r\n',
      status: 400,
      code: ErrorCode.DecodingFailure,
    },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      await startServer(4096);
      const r = jsonOf(await raw(c.request));
      expect(r.status).toBe(c.status);
      expect(r.body.code).toBe(c.code);
      expect(typeof r.body.msg).toBe('string');
      // Still serving.
      expect((await callDaemon({ socket, method: 'GET', path: '/v1/health' })).status).toBe(200);
    });
  }

  test('a CNI error of the handlers keeps its code (bad config → 7, bad container id → 4)', async () => {
    await startServer();
    const bad = await callDaemon({
      socket,
      method: 'POST',
      path: Allocate.path,
      body: { env: envelope('c').env, config: conf('btnet', { ranges: [[{ subnet: 'nope' }]] }) },
    });
    expect(bad.status).toBe(400);
    expect((bad.body as { code: number }).code).toBe(ErrorCode.InvalidNetworkConfig);
    const badId = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('../etc') });
    expect((badId.body as { code: number }).code).toBe(ErrorCode.InvalidEnvironmentVariables);
    expect(leaseFiles().size).toBe(0);
  });

  test('an oversized body streamed without a length is cut off with 413', async () => {
    await startServer(4096);
    const big = `{"env":{},"config":"${'x'.repeat(10_000)}"}`;
    const reply = await raw(
      `POST /v1/allocate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`,
    );
    expect(jsonOf(reply).status).toBe(413);
  });
});

describe('clients that leave', () => {
  test('mid-body: nothing started, no request left in flight, no connection kept', async () => {
    await startServer();
    await new Promise<void>((resolve) => {
      const c = net.createConnection(socket, () => {
        c.write('POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"env":');
        setTimeout(() => {
          c.destroy();
          resolve();
        }, 50);
      });
    });
    await expect.poll(() => server!.inFlightCount).toBe(0);
    await expect.poll(() => new Promise((r) => server!.http.getConnections((_, n) => r(n)))).toBe(0);
    expect(leaseFiles().size).toBe(0);
  });

  test('after the request, before the reply: the allocation is undone (nobody will use it)', async () => {
    await startServer();
    // Hold the network's flock as a plugin on the files would: the daemon queues the request and waits.
    const release = holdNetworkLock();
    try {
      const c = await allocateWaitingOnLock('ctr-gone');
      c.destroy();
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      release();
    }
    await expect.poll(() => server!.inFlightCount, { timeout: 5000 }).toBe(0);
    expect(leaseFiles().size).toBe(0);
    expect(logs.join('')).toMatch(/client left before the reply; allocation undone .*released=1/);
    // The address is free again: the next container gets the first one.
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-next') });
    expect((r.body as { ips: { address: string }[] }).ips[0]!.address).toBe('198.18.200.3/24');
  });
});

describe('a retried ADD while the first one waits', () => {
  test("the first one's caller leaves: the lease the retry answered with stays", async () => {
    await startServer();
    const release = holdNetworkLock();
    let retry: Promise<{ body: unknown }>;
    try {
      const c = await allocateWaitingOnLock('ctr-retried');
      // The runtime gave up on the first and retries the same attachment; then the first caller is gone.
      retry = callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-retried') });
      await expect.poll(() => server!.inFlightCount, { timeout: 5000 }).toBe(2);
      c.destroy();
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      release();
    }
    const answered = (await retry).body as { ips: { address: string }[] };
    expect(answered.ips[0]!.address).toBe('198.18.200.2/24');
    await expect.poll(() => server!.inFlightCount, { timeout: 5000 }).toBe(0);
    await service.drain();
    // The pod the retry configured keeps its lease (the first ADD's undo released it before).
    expect(leaseFiles().get('198.18.200.2')).toBe('ctr-retried\r\neth0');
  });
});

describe('stopping', () => {
  test('a request that starts while the stores drain is answered before the connections close', async () => {
    await startServer();
    const body = JSON.stringify(envelope('ctr-late'));
    const c = net.createConnection(socket);
    await new Promise<void>((resolve) => c.on('connect', resolve));
    let reply = '';
    const closed = new Promise<void>((resolve) => c.on('close', () => resolve()));
    c.on('data', (d: Buffer) => (reply += d.toString()));
    c.on('error', () => undefined); // a cut connection: the assertions below say so
    // The request line only: the connection is busy (not idle, so not closed at once), nothing in flight yet.
    c.write('POST /v1/allocate HTTP/1.1\r\n');
    await new Promise((r) => setTimeout(r, 50));
    // Its headers arrive while the stores drain: the request starts then.
    const drain = service.drain.bind(service);
    let drains = 0;
    service.drain = async () => {
      if (drains++ === 0) {
        c.write(`Host: x\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, 5)}`);
        await expect.poll(() => server!.inFlightCount).toBe(1);
      }
      await drain();
    };
    const stopping = server!.shutdown();
    await expect.poll(() => drains).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 50));
    c.write(body.slice(5));
    await stopping;
    await closed;
    service.close();
    server = undefined;
    // Served, not cut: the caller, which sent its whole request, gets its answer.
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    expect(leaseFiles().size).toBe(1);
  });
});

describe('log and metrics formats', () => {
  test('text lines for people, JSON lines for collectors, below-level lines dropped', () => {
    const out: string[] = [];
    const now = () => new Date('2026-01-01T00:00:00Z');
    createLogger({ format: 'text', level: 'info', write: (l) => out.push(l), now }).log('info', 'listening', {
      socket: '/run/x.sock',
      n: 2,
    });
    createLogger({ format: 'json', level: 'info', write: (l) => out.push(l), now }).log('warn', 'odd', {
      why: 'a b',
    });
    createLogger({ format: 'json', level: 'warn', write: (l) => out.push(l), now }).log('info', 'dropped');
    expect(out).toEqual([
      '2026-01-01T00:00:00.000Z INFO listening socket=/run/x.sock n=2\n',
      '{"time":"2026-01-01T00:00:00.000Z","level":"warn","msg":"odd","why":"a b"}\n',
    ]);
  });

  test('Prometheus text: counters with labels, gauges, cumulative histogram buckets', () => {
    const m = new Metrics();
    m.inc('berthd_allocations_total', 'Addresses handed out.', { network: 'n"1' });
    m.inc('berthd_allocations_total', 'Addresses handed out.', { network: 'n"1' }, 2);
    m.observeLatency('POST /v1/allocate', 0.0007);
    m.observeLatency('POST /v1/allocate', 0.02);
    const text = m.render([{ name: 'berthd_pool_free', help: 'Free.', labels: { network: 'n' }, value: 7 }]);
    expect(text).toContain(
      '# TYPE berthd_allocations_total counter\nberthd_allocations_total{network="n\\"1"} 3\n',
    );
    expect(text).toContain('# TYPE berthd_pool_free gauge\nberthd_pool_free{network="n"} 7\n');
    expect(text).toContain(
      'berthd_request_duration_seconds_bucket{route="POST /v1/allocate",le="0.0005"} 0\n',
    );
    expect(text).toContain(
      'berthd_request_duration_seconds_bucket{route="POST /v1/allocate",le="0.001"} 1\n',
    );
    expect(text).toContain(
      'berthd_request_duration_seconds_bucket{route="POST /v1/allocate",le="0.025"} 2\n',
    );
    expect(text).toContain('berthd_request_duration_seconds_bucket{route="POST /v1/allocate",le="+Inf"} 2\n');
    expect(text).toContain('berthd_request_duration_seconds_count{route="POST /v1/allocate"} 2\n');
  });
});

describe('metric types follow the Prometheus conventions', () => {
  /** `name -> type` from the `# TYPE` lines, and `name -> value` of unlabelled samples. */
  function parseExposition(text: string): { types: Map<string, string>; values: Map<string, number> } {
    const types = new Map<string, string>();
    const values = new Map<string, number>();
    for (const line of text.split('\n')) {
      const t = /^# TYPE (\S+) (\S+)$/.exec(line);
      if (t !== null) types.set(t[1]!, t[2]!);
      const v = /^([a-z_]+) (\S+)$/.exec(line);
      if (v !== null) values.set(v[1]!, Number(v[2]));
    }
    return { types, values };
  }

  test('one network name in two data dirs: two pool series (data_dir), not a duplicate Prometheus drops', async () => {
    await startServer();
    const second = join(dir, 'second-data');
    for (const d of [dataDir, second]) {
      const body = envelope('ctr-p');
      (body.config as { ipam: { dataDir: string } }).ipam.dataDir = d;
      expect((await callDaemon({ socket, method: 'POST', path: Allocate.path, body })).status).toBe(200);
    }
    const text = String((await callDaemon({ socket, method: 'GET', path: '/metrics' })).body);
    const series = text.split('\n').filter((l) => l.startsWith('berthd_pool_used{'));
    expect(series).toHaveLength(2);
    expect(new Set(series.map((l) => l.replace(/ \S+$/, ''))).size).toBe(2);
    expect(series.join('\n')).toContain(`data_dir="${second}"`);
  });

  test('sums since start are counters named _total / _seconds_total, and never go down when a network is forgotten', async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-m1') });
    await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('ctr-m1') });
    await service.drain();
    const first = parseExposition(
      String((await callDaemon({ socket, method: 'GET', path: '/metrics' })).body),
    );
    for (const name of [
      'berthd_batches_total',
      'berthd_batched_requests_total',
      'berthd_fsync_rounds_total',
      'berthd_rescans_total',
      'berthd_lock_waits_total',
      'berthd_lock_wait_seconds_total',
      'berthd_batch_seconds_total',
      'berthd_fsync_seconds_total',
    ])
      expect(first.types.get(name), name).toBe('counter');
    for (const old of ['berthd_batches', 'berthd_fsync_rounds', 'berthd_rescans', 'berthd_fsync_seconds'])
      expect(first.types.has(old), old).toBe(false);
    // Every counter is named _total; every gauge is something that can go down.
    for (const [name, type] of first.types) {
      if (type === 'counter') expect(name).toMatch(/_total$/);
      if (type === 'gauge') expect(name).not.toMatch(/_total$|_seconds$/);
    }
    expect(first.values.get('berthd_batches_total')).toBeGreaterThan(0);
    expect(first.values.get('berthd_fsync_rounds_total')).toBeGreaterThan(0);

    // The network's directory goes, the sweep forgets its store: its sums stay in the counters.
    rmSync(dataDir, { recursive: true });
    expect(service.sweep()).toBe(1);
    const after = parseExposition(
      String((await callDaemon({ socket, method: 'GET', path: '/metrics' })).body),
    );
    for (const name of ['berthd_batches_total', 'berthd_fsync_rounds_total', 'berthd_batch_seconds_total'])
      expect(after.values.get(name), name).toBeGreaterThanOrEqual(first.values.get(name)!);
  });
});

describe('CLI pieces', () => {
  test('valid-attachment lists: JSON as in cni.dev/valid-attachments, or lines', () => {
    expect(parseValidList('[{"containerID":"a","ifname":"eth0"}]')).toEqual([
      { containerID: 'a', ifname: 'eth0' },
    ]);
    expect(parseValidList('# kept\na eth0\nb/net1\n\n')).toEqual([
      { containerID: 'a', ifname: 'eth0' },
      { containerID: 'b', ifname: 'net1' },
    ]);
    expect(() => parseValidList('a b c')).toThrow(/line 1/);
  });

  test('leases release asks on the terminal and does what the answer says', async () => {
    await startServer();
    const ip = await allocatedIp('ctr-ask');
    const { lines: out, io } = capturedIo();
    const questions: string[] = [];
    const ask =
      (answer: string) =>
      async (q: string): Promise<string> => {
        questions.push(q);
        return answer;
      };
    expect(await runLeasesRelease(ip, { socket, ask: ask('n') }, io)).toBe(1);
    expect(questions[0]).toMatch(
      new RegExp(`^Release ${ip.replace(/\./g, '\\.')} in network btnet, held by ctr-ask/eth0\\?`),
    );
    expect(leaseFiles().has(ip)).toBe(true);
    expect(await runLeasesRelease('not-an-ip', { socket, yes: true }, io)).toBe(1);
    expect(await runLeasesRelease(ip, { socket, ask: ask('yes') }, io)).toBe(0);
    expect(leaseFiles().has(ip)).toBe(false);
    expect(out.join('')).toContain(`released ${ip} (network btnet, container ctr-ask/eth0)`);
  });

  test('leases release: an address that changed hands while the operator answered is not released (409)', async () => {
    await startServer();
    const ip = await allocatedIp('ctr-old');
    const { io } = capturedIo();
    // While the question is on the screen, the pod goes and another takes the same address.
    const ask = async (): Promise<string> => {
      await callDaemon({ socket, method: 'POST', path: Release.path, body: envelope('ctr-old') });
      const again = await callDaemon({
        socket,
        method: 'POST',
        path: Allocate.path,
        body: envelope('ctr-new', 'btnet', `IgnoreUnknown=1;IP=${ip}`),
      });
      expect((again.body as { ips: { address: string }[] }).ips[0]!.address.split('/')[0]).toBe(ip);
      return 'y';
    };
    // Thrown as berthd's CNI error (main prints it, exit 1).
    await expect(runLeasesRelease(ip, { socket, ask }, io)).rejects.toThrow(
      /changed hands: now held by ctr-new\/eth0, not ctr-old\/eth0; not released/,
    );
    expect(leaseFiles().get(ip)).toBe('ctr-new\r\neth0');
  });

  test('berth gc: an empty valid list releases nothing without --all; leases newer than the list stay', async () => {
    await startServer();
    for (const id of ['ctr-1', 'ctr-2'])
      await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(id) });
    const { lines: out, io } = capturedIo();
    const empty = join(dir, 'empty.txt');
    writeFileSync(empty, '\n');
    expect(await runGc({ socket, network: 'btnet', valid: empty }, io)).toBe(1);
    expect(out.join('')).toMatch(/the valid list is empty: that would release every lease of network btnet/);
    expect(leaseFiles().size).toBe(2);
    // A list taken before ctr-3 existed: ctr-3's lease is newer than the list and stays.
    await new Promise((r) => setTimeout(r, 20));
    const listed = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 20));
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-3') });
    // A lease host-local wrote (leaked) before the list: berth first reads it after listedAt, and must
    // not take that for its age; its file's time is its age.
    const leak = join(dataDir, 'btnet', '198.18.200.50');
    writeFileSync(leak, 'ctr-leak\r\neth0', { mode: 0o600 });
    const before = new Date(Date.parse(listed) - 60_000);
    utimesSync(leak, before, before);
    // One host-local wrote after the list (a pod the list cannot name): it stays.
    writeFileSync(join(dataDir, 'btnet', '198.18.200.51'), 'ctr-new-hl\r\neth0', { mode: 0o600 });
    const gc = await callDaemon({
      socket,
      method: 'POST',
      path: '/v1/gc',
      body: { network: 'btnet', valid: [{ containerID: 'ctr-1', ifname: 'eth0' }], listedAt: listed },
    });
    expect(gc.status).toBe(200);
    expect(
      (gc.body as { released: { containerId: string }[] }).released.map((l) => l.containerId).sort(),
    ).toEqual(['ctr-2', 'ctr-leak']);
    expect([...leaseFiles().values()].sort()).toEqual([
      'ctr-1\r\neth0',
      'ctr-3\r\neth0',
      'ctr-new-hl\r\neth0',
    ]);
    // The list file is as old as its last write: written now, it covers every lease.
    writeFileSync(empty, '\n');
    expect(await runGc({ socket, network: 'btnet', valid: empty, all: true }, io)).toBe(0);
    expect(leaseFiles().size).toBe(0);
  });

  test("a relative --data-dir means the same to berthd as to the files (the command's directory)", async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-rel') });
    const { lines, io } = capturedIo();
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      expect(await runLeasesList({ socket, dataDir: 'data', json: true }, io)).toBe(0);
    } finally {
      process.chdir(cwd);
    }
    const listed = JSON.parse(lines.join('')) as { containerId: string; dataDir: string }[];
    expect(listed.map((l) => [l.containerId, l.dataDir])).toEqual([['ctr-rel', dataDir]]);
  });

  test('berth gc --valid FILE: the list is as old as the file (dry run, review, then the real run)', async () => {
    await startServer();
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-1') });
    const { io } = capturedIo();
    const list = join(dir, 'valid.txt');
    writeFileSync(list, 'ctr-1 eth0\n');
    const written = new Date(Date.now() - 5_000);
    utimesSync(list, written, written);
    // A pod made after the list was written, before the real run.
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-2') });
    expect(await runGc({ socket, network: 'btnet', valid: list }, io)).toBe(0);
    expect([...leaseFiles().values()].sort()).toEqual(['ctr-1\r\neth0', 'ctr-2\r\neth0']);
  });

  test("berth gc: a valid id that only starts a lease's id is refused; dryRun must be a boolean", async () => {
    await startServer();
    const long = `${'ab'.repeat(32)}`;
    await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope(long) });
    const short = await callDaemon({
      socket,
      method: 'POST',
      path: '/v1/gc',
      body: { network: 'btnet', valid: [{ containerID: long.slice(0, 12), ifname: 'eth0' }] },
    });
    expect(short.status).toBe(400);
    expect(JSON.stringify(short.body)).toMatch(/only the start of .*give whole ids/);
    const text = await callDaemon({
      socket,
      method: 'POST',
      path: '/v1/gc',
      body: { network: 'btnet', valid: [], dryRun: 'true' },
    });
    expect(text.status).toBe(400);
    expect(leaseFiles().size).toBe(1);
  });

  test('only writerUids may change anything; reads are open to whoever reaches the socket', async () => {
    const log = createLogger({ format: 'text', level: 'error', write: () => undefined });
    const metrics = new Metrics();
    service = new Service({ dataDir, bootId: BOOT, log, metrics });
    // Nobody this process could be.
    server = new BerthServer({ service, log, metrics, socketPath: socket, writerUids: [4_000_000_000] });
    await new Promise<void>((resolve) => server!.http.listen(socket, resolve));
    const add = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-x') });
    expect(add.status).toBe(403);
    expect(JSON.stringify(add.body)).toMatch(/to root only \(peer uid \d+\)/);
    expect(leaseFiles().size).toBe(0);
    const del = await callDaemon({ socket, method: 'DELETE', path: '/v1/leases/198.18.200.2' });
    expect(del.status).toBe(403);
    expect((await callDaemon({ socket, method: 'GET', path: '/v1/leases' })).status).toBe(200);
    // A reader names a directory berthd does not serve: berthd would open it as root (its .berth state made
    // or repaired there). Refused, and nothing written under it.
    const theirs = mkdtempSync(join(tmpdir(), 'bt-theirs-'));
    try {
      mkdirSync(join(theirs, 'x'));
      writeFileSync(join(theirs, 'x', 'lock'), '');
      const q = `/v1/leases?dataDir=${encodeURIComponent(theirs)}`;
      const r = await callDaemon({ socket, method: 'GET', path: q });
      expect(r.status).toBe(403);
      expect(JSON.stringify(r.body)).toMatch(/not served by berthd: naming another is for root only/);
      expect(readdirSync(join(theirs, 'x'))).toEqual(['lock']);
      // Its own data dir stays readable by name.
      const own = `/v1/leases?dataDir=${encodeURIComponent(dataDir)}`;
      expect((await callDaemon({ socket, method: 'GET', path: own })).status).toBe(200);
    } finally {
      rmSync(theirs, { recursive: true, force: true });
    }
  });

  test('a data dir a root read names is listed, but not remembered as one berthd serves', async () => {
    const log = createLogger({ format: 'text', level: 'error', write: () => undefined });
    const file = join(dataDir, '..', 'served-dirs.json');
    service = new Service({ dataDir, bootId: BOOT, log, dataDirsFile: file });
    const other = mkdtempSync(join(tmpdir(), 'bt-other-'));
    try {
      mkdirSync(join(other, 'x'));
      writeFileSync(join(other, 'x', 'lock'), '');
      expect(await service.list({ dataDir: other })).toEqual([]);
      expect(service.servesDataDir(other)).toBe(false);
      expect(existsSync(file) ? readFileSync(file, 'utf8') : '').not.toContain(other);
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  test('lease table and ages', () => {
    const now = new Date('2026-01-02T00:00:00Z');
    expect(age('2026-01-01T23:59:30Z', now)).toBe('30s');
    expect(age('2026-01-01T23:00:00Z', now)).toBe('60m');
    expect(age('2025-12-30T00:00:00Z', now)).toBe('3d');
    const t = leaseTable(
      [
        {
          network: 'n',
          dataDir: '/d',
          ip: '198.18.0.2',
          containerId: '0123456789abcdef',
          ifname: 'eth0',
          pod: { namespace: 'ns', name: 'p' },
          createdAt: '2026-01-01T23:59:00Z',
        },
      ],
      now,
    );
    expect(t.split('\n')[0]).toMatch(/^NETWORK\s+IP\s+CONTAINER\s+IFNAME\s+POD\s+AGE$/);
    expect(t.split('\n')[1]).toMatch(/^n\s+198\.18\.0\.2\s+0123456789ab\s+eth0\s+ns\/p\s+60s$/);
  });
});

describe('what a power cut can leave in the directory', () => {
  test("a released lease's inode stamped as a spare, still under the lease's name: removed, its address free", async () => {
    await startServer();
    mkdirSync(join(dataDir, 'btnet'), { recursive: true });
    // As a DEL leaves it when the rename into .berth/spare was lost and the `{` stamped over its first byte
    // was not; host-local never writes `{`. Any other unreadable file keeps its address.
    writeFileSync(join(dataDir, 'btnet', '198.18.200.2'), '{tr-a\r\neth0', { mode: 0o600 });
    writeFileSync(join(dataDir, 'btnet', '198.18.200.3'), '\0\0garbage', { mode: 0o600 });
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: envelope('ctr-b') });
    expect(r.status).toBe(200);
    expect((r.body as { ips: { address: string }[] }).ips[0]!.address).toBe('198.18.200.2/24');
    expect(leaseFiles().get('198.18.200.2')).toBe('ctr-b\r\neth0');
    expect(leaseFiles().get('198.18.200.3')).toBe('\0\0garbage');
    expect(logs.join('')).toMatch(/removed a released lease that a power cut left behind/);
  });
});

describe('memory', () => {
  test("a network keeps a bounded number of range-set bitmaps, however many pods' ipRanges it sees", async () => {
    await startServer();
    for (let i = 0; i < 24; i++) {
      const body = envelope(`ctr-r${i}`);
      // Each pod its own range (runtimeConfig.ipRanges): a range set, and a bitmap, of its own.
      body.config.runtimeConfig = { ipRanges: [[{ subnet: `198.18.${100 + i}.0/24` }]] };
      const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body });
      expect(r.status).toBe(200);
      expect((r.body as { ips: { address: string }[] }).ips[0]!.address).toBe(`198.18.${100 + i}.2/24`);
    }
    const store = service.store(dataDir, 'btnet') as unknown as { occupancies: Map<string, unknown> };
    expect(store.occupancies.size).toBeLessThanOrEqual(8);
    // A set used again after it was dropped is rebuilt from the leases: .2 stays taken.
    const again = envelope('ctr-r0b');
    again.config.runtimeConfig = { ipRanges: [[{ subnet: '198.18.100.0/24' }]] };
    const r = await callDaemon({ socket, method: 'POST', path: Allocate.path, body: again });
    expect((r.body as { ips: { address: string }[] }).ips[0]!.address).toBe('198.18.100.3/24');
  });
});

describe('admin commands with berthd down', () => {
  test('without --data-dir, the files of every data dir berthd listed as served are read, as berthd would', async () => {
    // From dist: the backend loads the lease service with require(), which a TypeScript source cannot serve.
    const { openAdminBackend } = createRequire(__filename)(
      join(__dirname, '../../dist/daemon/admin-backend'),
    ) as typeof import('../../src/daemon/admin-backend');
    const log = createLogger({ format: 'text', level: 'error', write: () => undefined });
    // berthd served a second data dir (named by a plugin config), then stopped: its state file stays.
    const stateDir = join(dir, 'state');
    mkdirSync(stateDir, { mode: 0o700 });
    const other = join(dir, 'other-data');
    const network = `btd${process.pid}o`;
    const d = new Service({
      dataDir,
      bootId: BOOT,
      log,
      dataDirsFile: join(stateDir, 'berthd-data-dirs.json'),
    });
    const body = envelope('ctr-o', network);
    (body.config as { ipam: { dataDir: string } }).ipam.dataDir = other;
    await d.call(Allocate, body);
    await d.drain();
    d.close();
    const b = await openAdminBackend({ socket: join(stateDir, 'berthd.sock') });
    try {
      expect(b.kind).toBe('files');
      expect(b.where).toContain(other);
      // Only this network: the default data dir of the host is looked in, and has no such network.
      const leases = await b.list({ network });
      expect(leases.map((l) => [l.containerId, l.dataDir])).toEqual([['ctr-o', other]]);
    } finally {
      b.close();
    }
  });
});

describe('reboot', () => {
  const quietLog = () => createLogger({ format: 'text', level: 'error', write: () => undefined });
  const bootCfg = (cid: string, cniVersion: string) => ({
    env: { CNI_CONTAINERID: cid, CNI_NETNS: `/run/netns/${cid}`, CNI_IFNAME: 'eth0' },
    config: {
      cniVersion,
      name: 'btnet',
      type: 'berth-ipam',
      ipam: { type: 'berth-ipam', dataDir, ranges: [[{ subnet: '198.18.200.0/29' }]] },
    },
  });
  /** Boot 1 of berthd: x gets 198.18.200.2, then the daemon stops. */
  async function bootOneWithX(cniVersion: string): Promise<void> {
    const before = new Service({ dataDir, bootId: 'boot-1', log: quietLog() });
    expect((await before.call(Allocate, bootCfg('x', cniVersion)))!.ips![0]!.address).toBe('198.18.200.2/29');
    await before.drain();
    before.close();
  }

  test("a STATUS before the new boot's first ADD leaves the earlier boot's leases to that ADD to release", async () => {
    const cfg = (cid: string) => bootCfg(cid, '1.1.0');
    await bootOneWithX('1.1.0');
    service = new Service({ dataDir, bootId: 'boot-2', log: quietLog() });
    // A runtime's readiness check (CNI STATUS) comes first: it changes nothing, the boot included.
    await service.call(Status, { env: {}, config: cfg('x').config });
    await service.drain();
    expect(leaseFiles().get('198.18.200.2')).toBe('x\r\neth0');
    // The first ADD of boot 2 applies the reboot rule: x's lease of boot 1 goes.
    await service.call(Allocate, cfg('y'));
    await service.drain();
    expect([...leaseFiles().keys()].filter((f) => /^198/.test(f))).toEqual(['198.18.200.3']);
    service.close();
  });

  test('a container id that came back after the reboot (through host-local) with another address keeps it', async () => {
    const log = quietLog();
    const cfg = (cid: string) => bootCfg(cid, '1.0.0');
    await bootOneWithX('1.0.0');
    // Boot 2: the runtime restarts x under the same id through host-local (its DEL, then its ADD).
    rmSync(join(dataDir, 'btnet', '198.18.200.2'));
    writeFileSync(join(dataDir, 'btnet', '198.18.200.3'), 'x\r\neth0');
    writeFileSync(join(dataDir, 'btnet', 'last_reserved_ip.0'), '198.18.200.3');
    service = new Service({ dataDir, bootId: 'boot-2', log });
    expect((await service.call(Allocate, cfg('y')))!.ips![0]!.address).toBe('198.18.200.4/29');
    for (let i = 0; i < 3; i++) await service.call(Allocate, cfg(`z${i}`));
    expect(leaseFiles().get('198.18.200.3')).toBe('x\r\neth0');
    await service.drain();
    service.close();
  });
});
