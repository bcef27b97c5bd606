// The IPAM commands as functions of a parsed Request and the services they need (a store, the boot id), so
// the plugin and, later, the daemon run the same code.
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { Request } from '../cni-spec/request';
import type { IPConfig, Result } from '../cni-spec/types/result';
import { IMPLEMENTED_VERSION } from '../cni-spec/versions';
import { parseCidr } from '../address/cidr';
import { type Ip, formatIp, sameIp } from '../address/ip';
import {
  RangeSetExhaustedError,
  allocateFromSet,
  blockedOrdinals,
  nextCandidate,
  startOrdinal,
} from './allocator';
import type { ClusterAllocator } from './cluster-blocks';
import { type ConfigInput, type IpamConfig, parseIpamConfig, parseIpamConfigForRelease } from './config';
import { hostRoutedAddressing } from './host-routed';
import { checkContainerId, checkIfname } from './names';
import { describeRangeSet, rangeFor, rangeSetContains } from './range-set';
import { readResolvConf } from './resolv-conf';
import type { Lease, LeaseMeta, LeaseStore, PodIdentity } from './store';

export interface IpamDeps {
  /** The store of the configured network (the file store in the plugin). */
  openStore(conf: IpamConfig): LeaseStore;
  /** Current boot; undefined when unknown (then nothing is released for being from an earlier boot). */
  bootId: string | undefined;
  warn(msg: string): void;
  now(): Date;
  /** Cluster networks (`ipam.cluster`): the node's owned blocks of each pool, and claims of more. */
  cluster?: ClusterAllocator;
}

function clusterOf(conf: IpamConfig, deps: IpamDeps): ClusterAllocator | undefined {
  if (conf.cluster === undefined) return undefined;
  if (deps.cluster === undefined) {
    throw new CniError(
      ErrorCode.Internal,
      `network ${conf.network} is a cluster network; this store has no blocks`,
    );
  }
  refuseEditedClusterConfig(conf, deps);
  return deps.cluster;
}

/** A cluster network's config its allocator cannot serve (dataDir or pools edited): said before its store is opened. */
function refuseEditedClusterConfig(conf: IpamConfig, deps: IpamDeps): void {
  if (conf.cluster !== undefined) deps.cluster?.checkConfig?.(conf);
}

/** Code for an ADD/STATUS that cannot be served because a pool is full or the store unwritable (spec: STATUS). */
const NOT_AVAILABLE = ErrorCode.PluginNotAvailable;

function podIdentity(args: ReadonlyMap<string, string>): PodIdentity | undefined {
  const pod: PodIdentity = {};
  const map = {
    K8S_POD_NAMESPACE: 'namespace',
    K8S_POD_NAME: 'name',
    K8S_POD_UID: 'uid',
    K8S_POD_INFRA_CONTAINER_ID: 'infraContainerId',
  } as const;
  for (const [k, field] of Object.entries(map)) {
    const v = args.get(k);
    if (v !== undefined && v !== '') pod[field] = v;
  }
  return Object.keys(pod).length === 0 ? undefined : pod;
}

function configInput(req: Request): ConfigInput {
  return {
    config: req.config,
    cniVersion: req.cniVersion,
    cniArgs: req.cniArgs,
    args: req.args,
    runtimeConfig: (k) => req.runtimeConfig(k),
  };
}

function configOf(req: Request): IpamConfig {
  return parseIpamConfig(configInput(req));
}

function attachmentOf(req: Request): { containerId: string; ifname: string } {
  return { containerId: checkContainerId(req.containerId), ifname: checkIfname(req.ifname) };
}

/** Releases leases stamped with an earlier boot, unless the network keeps them. */
async function releaseEarlierBoots(
  s: Parameters<Parameters<LeaseStore['transact']>[0]>[0],
  conf: IpamConfig,
  deps: IpamDeps,
): Promise<void> {
  if (!conf.releaseOnReboot || deps.bootId === undefined) return;
  const stale = await s.leasesFromEarlierBoots();
  for (const l of stale) await s.release(l);
  if (stale.length > 0) {
    deps.warn(
      `berth-ipam: released ${stale.length} lease(s) of network ${conf.network} from an earlier boot`,
    );
  }
}

function ipConfig(conf: IpamConfig, setId: number, ip: Ip): IPConfig {
  const range = rangeFor(conf.rangeSets[setId]!, ip)!;
  return { address: `${formatIp(ip)}/${range.subnet.prefix}`, gateway: formatIp(range.gateway) };
}

export async function add(req: Request, deps: IpamDeps): Promise<Result> {
  const conf = configOf(req);
  const att = attachmentOf(req);
  const dns = conf.resolvConf === undefined ? undefined : readResolvConf(conf.resolvConf);
  const meta: LeaseMeta = { createdAt: deps.now().toISOString(), origin: 'berth' };
  if (deps.bootId !== undefined) meta.bootId = deps.bootId;
  if (req.netns !== '') meta.netns = req.netns;
  const pod = podIdentity(req.cniArgs);
  if (pod !== undefined) meta.pod = pod;

  const cluster = clusterOf(conf, deps);
  // Monotonic (the claim timeout counts from here): not the lease's wall-clock time.
  const started = performance.now();
  let ips: IPConfig[];
  for (;;) {
    // On a cluster network a range set with no free owned address ends the attempt (nothing kept), a block
    // is claimed outside the lock, and the ADD runs again.
    const outcome = await deps
      .openStore(conf)
      .transact(async (s): Promise<{ ips: IPConfig[] } | { need: number }> => {
        await releaseEarlierBoots(s, conf, deps);
        const sets = cluster === undefined ? conf.rangeSets : await cluster.ownedRangeSets(conf);
        // Idempotent ADD: what the attachment already holds is returned again (legacy id-only leases do not count,
        // as in host-local's duplicate check).
        const held = (await s.leasesOf(att)).filter((l) => l.ifname === att.ifname);
        const remaining = [...conf.requested];
        const taken: Lease[] = [];
        const out: IPConfig[] = [];
        try {
          for (const [setId, pool] of conf.rangeSets.entries()) {
            const set = sets[setId]!;
            const idx = remaining.findIndex((ip) => rangeSetContains(pool, ip));
            const requested = idx === -1 ? undefined : remaining.splice(idx, 1)[0];
            const existing = held.find((l) => rangeSetContains(pool, l.ip));
            if (existing !== undefined) {
              if (requested !== undefined && !sameIp(requested, existing.ip)) {
                throw new CniError(
                  ErrorCode.InvalidNetworkConfig,
                  `failed to allocate for range ${setId}: ${att.containerId}/${att.ifname} already holds ${formatIp(existing.ip)}, not the requested ${formatIp(requested)}`,
                );
              }
              out.push(ipConfig(conf, setId, existing.ip));
              continue;
            }
            if (set.length === 0) {
              if (requested !== undefined) {
                throw new CniError(
                  ErrorCode.InvalidNetworkConfig,
                  `failed to allocate for range ${setId}: requested IP address ${formatIp(requested)} is not in a block this node owns`,
                );
              }
              for (const l of taken.reverse()) await s.release(l);
              return { need: setId };
            }
            let ip: Ip;
            try {
              ip = await allocateFromSet({
                session: s,
                set,
                setId,
                ...att,
                meta,
                ...(requested === undefined ? {} : { requested }),
                policy: conf.policy,
                exclude: conf.exclude,
              });
            } catch (err) {
              if (!(err instanceof CniError)) throw err;
              if (cluster !== undefined && err instanceof RangeSetExhaustedError) {
                for (const l of taken.reverse()) await s.release(l);
                return { need: setId };
              }
              throw new CniError(
                err.code,
                `failed to allocate for range ${setId}: ${err.message}`,
                err.details,
                {
                  cause: err,
                },
              );
            }
            taken.push({ ip, ...att, meta });
            out.push(ipConfig(conf, setId, ip));
          }
          if (remaining.length > 0) {
            throw new CniError(
              ErrorCode.InvalidNetworkConfig,
              `failed to allocate all requested IPs: ${remaining.map(formatIp).join(' ')} (in no configured range set)`,
            );
          }
        } catch (err) {
          // Nothing of a failed ADD stays: every range set is allocated under this one lock.
          for (const l of taken.reverse()) await s.release(l);
          throw err;
        }
        return { ips: out };
      });
    if ('ips' in outcome) {
      ips = outcome.ips;
      break;
    }
    await cluster!.needMore(conf, outcome.need, started);
  }
  cluster?.afterAdd(
    conf,
    ips.map((c) => parseCidr(c.address)!.ip),
  );

  const result: Result = { cniVersion: IMPLEMENTED_VERSION, ips };
  if (conf.cluster !== undefined) {
    // Pods of other nodes share the pool: host prefixes, so none looks on-link (see host-routed.ts).
    const hostRouted = hostRoutedAddressing(conf.rangeSets, ips);
    result.ips = hostRouted.ips;
    const routes = [...hostRouted.poolRoutes, ...conf.routes];
    if (routes.length > 0) result.routes = routes;
  } else if (conf.routes.length > 0) result.routes = conf.routes;
  if (dns !== undefined) result.dns = dns;
  return result;
}

export async function del(req: Request, deps: IpamDeps): Promise<void> {
  const conf = parseIpamConfigForRelease(configInput(req), deps.warn);
  const att = attachmentOf(req);
  const released = await deps.openStore(conf).transact(async (s) => {
    // By attachment, not by range: a DEL after the ranges changed still frees the address.
    const leases = await s.leasesOf(att);
    for (const l of leases) await s.release(l);
    return leases.map((l) => l.ip);
  });
  if (conf.cluster !== undefined && released.length > 0) deps.cluster?.afterRelease(conf, released);
}

export async function check(req: Request, deps: IpamDeps): Promise<void> {
  const conf = configOf(req);
  const att = attachmentOf(req);
  refuseEditedClusterConfig(conf, deps); // CHECK needs no blocks, only a config the network is served with
  const leases = await deps.openStore(conf).transact(async (s) => s.leasesOf(att), { readOnly: true });
  if (leases.length === 0) {
    // host-local's words ("Failed to find address added by container"), but the spec's code for an
    // unknown container (3) rather than host-local's generic 999.
    throw new CniError(
      ErrorCode.UnknownContainer,
      `failed to find an address added by container ${att.containerId} (ifname ${att.ifname}): no lease in network ${conf.network}`,
    );
  }
  // A runtime that calls the IPAM plugin directly may send no prevResult: then, as host-local does, a
  // lease of the attachment is all CHECK can ask for.
  if (req.prevResult === undefined) return;
  const listed = (req.prevResult.ips ?? [])
    .map((c) => parseCidr(c.address)?.ip)
    .filter((ip): ip is Ip => ip !== undefined);
  // Addresses outside our range sets may come from other plugins of the chain: only ours must be leased.
  const prev = listed.filter((ip) => conf.rangeSets.some((set) => rangeSetContains(set, ip)));
  const missing = prev.filter((ip) => !leases.some((l) => sameIp(l.ip, ip)));
  const extra = leases.filter((l) => !listed.some((ip) => sameIp(l.ip, ip)));
  if (missing.length > 0 || extra.length > 0) {
    const parts = [
      ...(missing.length > 0
        ? [`prevResult lists ${missing.map(formatIp).join(', ')} which the attachment does not hold`]
        : []),
      ...(extra.length > 0
        ? [
            `the attachment holds ${extra.map((l) => formatIp(l.ip)).join(', ')} which prevResult does not list`,
          ]
        : []),
    ];
    throw new CniError(
      ErrorCode.Internal,
      `leases of ${att.containerId}/${att.ifname} in network ${conf.network} do not match prevResult: ${parts.join('; ')}`,
    );
  }
}

export async function gc(req: Request, deps: IpamDeps): Promise<void> {
  const conf = parseIpamConfigForRelease(configInput(req), deps.warn);
  const valid = req.validAttachments ?? [];
  const validKeys = new Set(valid.map((a) => `${a.containerID}\n${a.ifname}`));
  const validIds = new Set(valid.map((a) => a.containerID));
  const failures: string[] = [];
  const released: Ip[] = [];
  await deps.openStore(conf).transact(async (s) => {
    for (const l of await s.all()) {
      // A legacy lease names no interface: it stays while any attachment of its container is valid.
      const keep =
        l.ifname === '' ? validIds.has(l.containerId) : validKeys.has(`${l.containerId}\n${l.ifname}`);
      if (keep) continue;
      try {
        await s.release(l);
        released.push(l.ip);
      } catch (err) {
        failures.push(`${formatIp(l.ip)}: ${(err as Error).message}`);
      }
    }
    // Files named after an address that hold no lease: nobody's, so never valid (host-local leaks them).
    try {
      const dead = (await s.releaseDeadFiles?.()) ?? [];
      if (dead.length > 0) {
        for (const ip of dead) released.push(ip);
        deps.warn(
          `berth-ipam: GC released ${dead.length} address(es) whose lease file held no attachment: ${dead.map(formatIp).join(', ')}`,
        );
      }
    } catch (err) {
      failures.push(`files holding no lease: ${(err as Error).message}`);
    }
  });
  if (conf.cluster !== undefined && released.length > 0) deps.cluster?.afterRelease(conf, released);
  if (failures.length > 0) {
    throw new CniError(
      ErrorCode.IoFailure,
      `GC could not release ${failures.length} lease(s)`,
      failures.join('; '),
    );
  }
}

/** STATUS's answer for what an ADD is told to try again later (11: fenced, busy): not ready (50). */
function notReadyFor11<T>(fn: () => T): T {
  const as50 = (err: unknown): never => {
    if (err instanceof CniError && err.code === ErrorCode.TryAgainLater)
      throw new CniError(NOT_AVAILABLE, err.message);
    throw err;
  };
  try {
    const r = fn();
    return (r instanceof Promise ? r.catch(as50) : r) as T;
  } catch (err) {
    return as50(err);
  }
}

export async function status(req: Request, deps: IpamDeps): Promise<void> {
  const conf = configOf(req);
  const cluster = notReadyFor11(() => clusterOf(conf, deps));
  const store = deps.openStore(conf);
  const unwritable = await store.unwritableReason();
  if (unwritable !== undefined) {
    throw new CniError(
      NOT_AVAILABLE,
      `lease store of network ${conf.network} is not writable: ${unwritable}`,
    );
  }
  const full = await store.transact(
    async (s) => {
      let sets = conf.rangeSets;
      if (cluster !== undefined) {
        sets = await notReadyFor11(() => cluster.ownedRangeSets(conf));
      }
      const releasable =
        conf.releaseOnReboot && deps.bootId !== undefined ? await s.leasesFromEarlierBoots() : [];
      const out: string[] = [];
      for (const [setId, set] of sets.entries()) {
        if (set.length === 0) {
          out.push(`range set ${setId} (no block owned)`);
          continue;
        }
        const occupancy = await s.occupancy(set);
        // From after the cursor, where the next ADD looks: a set too large for a bitmap (an IPv6 /64) is probed
        // address by address, and from its start a STATUS stepped past every lease (0.35 s at 20,000 leases).
        const start = startOrdinal({ set, cursor: await s.lastReserved(setId), policy: 'round-robin' });
        const free = nextCandidate({ set, start, occupancy, blocked: blockedOrdinals(set, conf.exclude) });
        if (free === undefined && !releasable.some((l) => rangeSetContains(set, l.ip))) {
          out.push(`range set ${setId} (${describeRangeSet(set)})`);
        }
      }
      return out;
    },
    { readOnly: true },
  );
  if (full.length > 0 && cluster !== undefined) {
    // A cluster node is ready while it can still claim a block.
    const why = await cluster.claimImpossibleReason(conf);
    if (why === undefined) return;
    throw new CniError(
      NOT_AVAILABLE,
      `no free address in the blocks this node owns in ${full.join(', ')} of network ${conf.network}, and no block can be claimed: ${why}`,
    );
  }
  if (full.length > 0) {
    throw new CniError(NOT_AVAILABLE, `no free address in ${full.join(', ')} of network ${conf.network}`);
  }
}
