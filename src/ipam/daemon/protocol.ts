// The wire contract between berth-ipam, berthd and the `berth` CLI, declared once so the three cannot drift:
// routes, the request envelope and the reply shapes. Types and constants only: the plugin loads this.
import type { CniErrorJson } from '../../cni-spec/errors';
import type { Result } from '../../cni-spec/types/result';

/** Where berthd listens unless told otherwise (directory 0700, socket 0600). */
export const DEFAULT_SOCKET = '/run/berth/berthd.sock';
/** berthd's list of the data dirs it serves, in its state dir (by default the socket's directory). */
export const DATA_DIRS_FILE = 'berthd-data-dirs.json';
/** The --state-dir the README and the DaemonSet give berthd: kept across reboots, unlike /run. */
export const RECOMMENDED_STATE_DIR = '/var/lib/berth';

/** Largest request body berthd reads; a CNI config is a few KiB. */
export const MAX_BODY_BYTES = 1 << 20;
/**
 * Largest GC request (root only): its valid list may name every pod an operator's script found, ~100 bytes
 * each with 64-hex container ids, so 1 MiB refused a list of ~10,000 (`berth gc --valid` fed from a
 * cluster-wide listing); 16 MiB takes ~170,000, more than Kubernetes' 150,000 pods per cluster, and its
 * copies while read and parsed stay well inside the DaemonSet's 256 MiB.
 */
export const MAX_GC_BODY_BYTES = 16 << 20;

/**
 * A CNI invocation forwarded as is (Multus' `{Env, Config}`): the CNI_* variables and the network's whole
 * config, dataDir included, so one daemon serves every network of the node.
 */
export interface Envelope {
  env: Record<string, string>;
  /** The stdin config: the parsed object, or its JSON text. */
  config: Record<string, unknown> | string;
}

/** A POST route taking an envelope; `Reply` is the 200 body. */
export interface Method<Reply> {
  readonly path: string;
  readonly command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS';
  /** Phantom: only carries the reply type to callers. */
  readonly reply?: Reply;
}

function defineMethod<Reply>(path: string, command: Method<Reply>['command']): Method<Reply> {
  return { path, command };
}

/** What a method without a result answers. */
export interface Ack {
  ok: true;
}

export const Allocate = defineMethod<Result>('/v1/allocate', 'ADD');
export const Release = defineMethod<Ack>('/v1/release', 'DEL');
export const Check = defineMethod<Ack>('/v1/check', 'CHECK');
export const Gc = defineMethod<Ack>('/v1/gc', 'GC');
export const Status = defineMethod<Ack>('/v1/status', 'STATUS');

export const METHODS = [Allocate, Release, Check, Gc, Status] as const;

/** One lease as the admin API shows it. */
export interface LeaseView {
  network: string;
  dataDir: string;
  ip: string;
  containerId: string;
  /** '' for host-local's legacy id-only leases. */
  ifname: string;
  pod?: { namespace?: string; name?: string; uid?: string };
  netns?: string;
  createdAt?: string;
  bootId?: string;
  origin?: string;
}

/** GET /v1/leases[?network=N&dataDir=D] and GET /v1/leases/<ip|container>. */
export interface LeaseList {
  leases: LeaseView[];
}

/** Admin GC (POST /v1/gc without `config`): what stays, and whether to only report. */
export interface AdminGcRequest {
  network: string;
  dataDir?: string;
  valid: { containerID: string; ifname: string }[];
  dryRun?: boolean;
  /**
   * ISO time the valid list was taken (`berth gc`: when it started): a lease made later is kept, its pod
   * being newer than the list.
   */
  listedAt?: string;
}

export interface AdminGcReply {
  network: string;
  dryRun: boolean;
  released: LeaseView[];
}

/** DELETE /v1/leases/<ip>[?network=N&dataDir=D]. */
export interface AdminReleaseReply {
  released: LeaseView[];
}

/** Per range set of a network, from the last config the daemon saw for it. */
export interface PoolView {
  rangeSet: number;
  ranges: string;
  size: number;
  used: number;
  free: number;
}

export interface NetworkView {
  network: string;
  dataDir: string;
  leases: number;
  /** Known once an ADD/STATUS for the network carried its config. */
  pools?: PoolView[];
}

/** GET /v1/status. */
export interface DaemonStatus {
  version: 1;
  pid: number;
  uptimeSeconds: number;
  socket: string;
  draining: boolean;
  networks: NetworkView[];
  /** The warm path (berthd running the plugins): absent from a daemon that does not serve them. */
  warm?: WarmStatus;
}

/** What `berth status` shows of the warm path. */
export interface WarmStatus {
  /** True while berthd takes plugin calls (false once draining). */
  up: boolean;
  plugins: readonly string[];
  /** Plugin calls berthd ran (whatever their outcome), since it started. */
  served: number;
  /** Of those, the ones that ended with a CNI error. */
  errors: number;
  /** Calls berthd sent back to run standalone (421: another run dir, nft table, plugin, test faults). */
  notServed: number;
  inFlight: number;
  deadlineMs: number;
  runDir: string;
  nftTable: string;
  /** The last call refused for naming another run dir, nft table or boot id file than berthd's. */
  settingsMismatch?: string;
}

/** GET /v1/health. */
export interface Health {
  ok: boolean;
  draining: boolean;
}

/** Every non-2xx reply is a CNI error object. */
export type ErrorReply = CniErrorJson;
