// The admin operations behind `berth leases|gc|status`: asked of berthd when its socket answers, otherwise
// run in-process by the same Service straight on the files (same flock, same layout), so both agree.
import { CniError, ErrorCode } from '../cni-spec/errors';
import { BOOT_ID_FILE, readBootId } from '../ipam/boot-id';
import { DEFAULT_DATA_DIR } from '../ipam/config';
import { DaemonUnavailable, callDaemon } from '../ipam/daemon-client';
import { createLogger } from './log';
import type {
  AdminGcReply,
  AdminGcRequest,
  AdminReleaseReply,
  DaemonStatus,
  LeaseList,
  LeaseView,
  NetworkView,
} from '../ipam/daemon/protocol';
import { DATA_DIRS_FILE, DEFAULT_SOCKET, RECOMMENDED_STATE_DIR } from '../ipam/daemon/protocol';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { LeaseFilter } from '../ipam/daemon/service';

export interface AdminBackend {
  /** 'daemon' or 'files', for the user to know what answered. */
  readonly kind: 'daemon' | 'files';
  readonly where: string;
  list(filter: LeaseFilter): Promise<LeaseView[]>;
  show(query: string, filter: LeaseFilter): Promise<LeaseView[]>;
  /** With `holder`, only while that attachment still holds the address (409 otherwise). */
  release(
    ip: string,
    filter: LeaseFilter,
    holder?: { containerId: string; ifname: string },
  ): Promise<AdminReleaseReply>;
  gc(req: AdminGcRequest): Promise<AdminGcReply>;
  status(filter: LeaseFilter): Promise<{ daemon?: DaemonStatus; networks: NetworkView[] }>;
  close(): void;
}

export interface BackendOptions {
  socket?: string;
  /** Given explicitly: also passed to the daemon, which otherwise lists its own --data-dir. */
  dataDir?: string;
  /** berthd's --state-dir, where it lists the data dirs it served (read when berthd does not answer). */
  stateDir?: string;
}

/**
 * Where berthd may have listed the data dirs it served: the given --state-dir, else its default (the
 * socket's directory) and the one the README and the DaemonSet recommend (kept across reboots).
 */
export function dataDirsFiles(o: BackendOptions, socket: string): string[] {
  const dirs = o.stateDir !== undefined ? [resolve(o.stateDir)] : [dirname(socket), RECOMMENDED_STATE_DIR];
  return [...new Set(dirs)].map((d) => join(d, DATA_DIRS_FILE));
}

function query(filter: LeaseFilter): string {
  const p = new URLSearchParams();
  if (filter.network !== undefined) p.set('network', filter.network);
  if (filter.dataDir !== undefined) p.set('dataDir', filter.dataDir);
  const s = p.toString();
  return s === '' ? '' : `?${s}`;
}

function daemonBackend(socket: string, defaults: LeaseFilter): AdminBackend {
  const ask = async <T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> => {
    const reply = await callDaemon({ socket, method, path, ...(body === undefined ? {} : { body }) });
    if (reply.status >= 200 && reply.status < 300) return reply.body as T;
    throw (
      CniError.fromJson(reply.body) ??
      new CniError(ErrorCode.Internal, `berthd answered HTTP ${reply.status}`)
    );
  };
  const f = (filter: LeaseFilter): LeaseFilter => ({ ...defaults, ...filter });
  return {
    kind: 'daemon',
    where: socket,
    list: async (filter) => (await ask<LeaseList>('GET', `/v1/leases${query(f(filter))}`)).leases,
    show: async (q, filter) => {
      try {
        return (await ask<LeaseList>('GET', `/v1/leases/${encodeURIComponent(q)}${query(f(filter))}`)).leases;
      } catch (err) {
        if (err instanceof CniError && err.code === ErrorCode.UnknownContainer) return [];
        throw err;
      }
    },
    release: (ip, filter, holder) => {
      const q = query(f(filter));
      const who =
        holder === undefined
          ? ''
          : `${q === '' ? '?' : '&'}${new URLSearchParams({ containerId: holder.containerId, ifname: holder.ifname }).toString()}`;
      return ask<AdminReleaseReply>('DELETE', `/v1/leases/${encodeURIComponent(ip)}${q}${who}`);
    },
    gc: (req) =>
      ask<AdminGcReply>('POST', '/v1/gc', {
        ...(defaults.dataDir !== undefined ? { dataDir: defaults.dataDir } : {}),
        ...req,
      }),
    status: async (filter) => {
      const s = await ask<DaemonStatus>('GET', `/v1/status${query(f(filter))}`);
      return { daemon: s, networks: s.networks };
    },
    close: () => undefined,
  };
}

/**
 * The files themselves. With --data-dir, that one only; without, as berthd would answer: its --data-dir's
 * default and every data dir it listed as served (its state dir's list, see dataDirsFiles), so that berthd
 * being down does not hide the leases of another data dir.
 */
function filesBackend(o: BackendOptions, socket: string): AdminBackend {
  // Named, and not there: a typo, said as berthd says it (not an empty node).
  if (o.dataDir !== undefined && !existsSync(o.dataDir))
    throw new Error(`data dir ${o.dataDir} does not exist`);
  // Loaded only here: the daemon's store is not needed when the daemon answers.
  const { Service } = require('../ipam/daemon/service') as typeof import('../ipam/daemon/service');
  const log = createLogger({ format: 'text', level: 'warn', write: (s) => process.stderr.write(s) });
  const dataDir = o.dataDir ?? DEFAULT_DATA_DIR;
  const service = new Service({
    dataDir,
    bootId: readBootId(BOOT_ID_FILE, () => undefined),
    log,
    ...(o.dataDir === undefined ? { readDataDirsFiles: dataDirsFiles(o, socket) } : {}),
  });
  const f = (filter: LeaseFilter): LeaseFilter => (o.dataDir !== undefined ? { dataDir, ...filter } : filter);
  return {
    kind: 'files',
    where: o.dataDir === undefined ? service.knownDataDirs.join(', ') : dataDir,
    list: (filter) => service.list(f(filter)),
    show: (q, filter) => service.show(q, f(filter)),
    release: (ip, filter, holder) => service.release(ip, f(filter), holder),
    gc: (req) => service.adminGc(o.dataDir !== undefined ? { dataDir, ...req } : req),
    status: async (filter) => ({ networks: await service.networkViews(f(filter)) }),
    close: () => service.close(),
  };
}

/** berthd when its socket answers /v1/health, else the files under the data dir. */
export async function openAdminBackend(given: BackendOptions): Promise<AdminBackend> {
  // A relative --data-dir means the same to berthd as to the files: this command's directory.
  const o = given.dataDir !== undefined ? { ...given, dataDir: resolve(given.dataDir) } : given;
  const socket = o.socket ?? DEFAULT_SOCKET;
  try {
    const reply = await callDaemon({ socket, method: 'GET', path: '/v1/health', timeoutMs: 5_000 });
    if (reply.status === 200 || reply.status === 503)
      return daemonBackend(socket, o.dataDir !== undefined ? { dataDir: o.dataDir } : {});
  } catch (err) {
    if (!(err instanceof DaemonUnavailable)) throw err;
    // Not "berthd is down": this user may not use its socket, and the files are root's too.
    if (err.sysCode === 'EACCES' || err.sysCode === 'EPERM')
      throw new Error(`permission denied on ${socket}: berth's admin commands need root`);
  }
  // Not as another user either: the directories it may not read would be skipped with a warning, and an
  // empty node reported with exit 0 (berthd down and its socket's directory open to others, after a reboot).
  if (process.geteuid?.() !== 0)
    throw new Error(
      `berthd does not answer on ${socket}, and the lease files are root's: berth's admin commands need root`,
    );
  return filesBackend(o, socket);
}
