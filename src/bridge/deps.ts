// The services berth-bridge's handlers work with, passed as a value: where its state lives, how it reaches
// the kernel, how it calls IPAM, and (tests only) where to fail on purpose. The standalone plugin builds them
// from its environment; berthd builds them from its own configuration.
// Loaded on every plugin start (even VERSION): what it needs is required lazily, when first used.
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { Request, RequestCommand } from '../cni-spec/request';
import type { Result } from '../cni-spec/types/result';
import type { Netlink } from './kernel';

/** Default directory of berth's runtime state; BERTH_RUN_DIR overrides it (tests use a private one). */
export const DEFAULT_RUN_DIR = '/run/berth';

export function runDir(env: Readonly<Record<string, string | undefined>>): string {
  const d = env.BERTH_RUN_DIR;
  return d !== undefined && d !== '' ? d : DEFAULT_RUN_DIR;
}

/** Default table name for both families (inet: masquerade, bridge: spoof check). */
export const DEFAULT_NFT_TABLE = 'berth';

/** BERTH_NFT_TABLE overrides the table name so tests can work in a private table. */
export function nftTable(env: Readonly<Record<string, string | undefined>>): string {
  const t = env.BERTH_NFT_TABLE;
  return t !== undefined && /^[A-Za-z][A-Za-z0-9_]{0,30}$/.test(t) ? t : DEFAULT_NFT_TABLE;
}

/** One call of the network's IPAM plugin, with the request's environment and stdin. */
export interface IpamCall {
  pluginType: string;
  command: RequestCommand;
  request: Request;
}

export interface BridgeKernel {
  /** An rtnetlink socket in the host namespace (the caller's own). */
  host(): Promise<Netlink>;
  /** An rtnetlink socket bound to a pod's namespace (path or open fd). */
  netns(netns: string | number): Promise<Netlink>;
}

export interface BridgeDeps {
  /** berth's run directory: network locks and the attachment registry live under `<runDir>/bridge`. */
  runDir: string;
  /** The nftables table name (both families) for masquerade and spoof check. */
  nftTable: string;
  kernel: BridgeKernel;
  /** Runs the IPAM plugin: ADD returns its result in the internal model, other commands undefined. */
  ipam(call: IpamCall): Promise<Result | undefined>;
  /** Tests only: throws at the named point of ADD (after-veth, after-ipam, after-gateway, after-masq). */
  fault?(point: string): void;
}

type KernelModule = typeof import('./kernel');

export const systemKernel: BridgeKernel = {
  host: () => (require('./kernel') as KernelModule).hostNetlink(),
  netns: (netns) => (require('./kernel') as KernelModule).netnsNetlink(netns),
};

/** IPAM as the CNI spec has it: the plugin executable found on CNI_PATH. */
export const execIpam = (call: IpamCall): Promise<Result | undefined> =>
  (require('../cni-spec/invoke') as typeof import('../cni-spec/invoke')).delegate(call);

/**
 * The standalone plugin's services: BERTH_RUN_DIR and BERTH_NFT_TABLE choose where state lives (tests use
 * private ones), BERTH_TEST_FAULT injects a failure.
 */
export function depsFromEnv(env: Readonly<Record<string, string | undefined>>): BridgeDeps {
  const deps: BridgeDeps = {
    runDir: runDir(env),
    nftTable: nftTable(env),
    kernel: systemKernel,
    ipam: execIpam,
  };
  const point = env.BERTH_TEST_FAULT;
  if (point !== undefined && point !== '') deps.fault = faultAt(point);
  return deps;
}

/** A fault hook that fails at `point` only. */
export function faultAt(point: string): (at: string) => void {
  return (at) => {
    if (at === point) throw new CniError(ErrorCode.Internal, `injected fault ${at} (BERTH_TEST_FAULT)`);
  };
}
