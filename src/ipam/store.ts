// The lease store contract: what the IPAM handlers (and later the daemon) need from any store, so that the
// file store and an in-memory (or etcd) store are interchangeable.
import type { Ip } from '../address/ip';
import type { Occupancy } from './allocator';
import type { RangeSet } from './range-set';

/** Who the pod is, from CNI_ARGS (containerd and CRI-O send these). */
export interface PodIdentity {
  namespace?: string;
  name?: string;
  uid?: string;
  infraContainerId?: string;
}

/** What berth records beside a lease; host-local records none of it. */
export interface LeaseMeta {
  /** Boot (kernel boot_id) the lease belongs to: written by berth, or the boot a host-local lease was first seen in. */
  bootId?: string;
  netns?: string;
  pod?: PodIdentity;
  /** ISO 8601 time the lease was taken (or first seen). */
  createdAt?: string;
  /** `berth` for leases berth-ipam wrote, `found` for leases found on disk without berth's metadata. */
  origin?: 'berth' | 'found';
}

export interface Attachment {
  containerId: string;
  /** '' for host-local's legacy files, which hold only the container id. */
  ifname: string;
}

export interface Lease extends Attachment {
  ip: Ip;
  meta: LeaseMeta;
}

export interface NewLease extends Attachment {
  ip: Ip;
  meta: LeaseMeta;
}

/**
 * Exclusive access to one network's leases, valid inside `LeaseStore.transact`. Every method sees the
 * effect of the session's earlier calls.
 */
export interface LeaseSession {
  /** Takes `ip` for the attachment unless it is already taken ("taken" is a value: false). */
  reserve(lease: NewLease, setId: number): Promise<boolean>;
  /** The cursor host-local keeps per range set (`last_reserved_ip.<setId>`). */
  lastReserved(setId: number): Promise<Ip | undefined>;
  /**
   * Whether the index has `ip` (an address of `set`) taken, asked before reserving a requested address: a
   * reserve of a taken one would look like an index that missed a lease (the file store rebuilds it then).
   * Each store answers the cheapest way it knows (berthd: its taken set; the files: the set's occupancy).
   */
  isTaken(ip: Ip, set: RangeSet): Promise<boolean>;
  /** Which addresses of the set are taken, kept current by reserve/release of this session. */
  occupancy(set: RangeSet): Promise<Occupancy>;
  /** Leases held by the attachment (legacy id-only leases too when `ifname` matches none). Cheap: O(its leases). */
  leasesOf(attachment: Attachment): Promise<Lease[]>;
  /** Every lease of the network (GC, listing). */
  all(): Promise<Lease[]>;
  /**
   * Leases recorded under another boot than the store's current one; cheap (empty) once this boot has been
   * seen. Marks the boot as seen when the session commits.
   */
  leasesFromEarlierBoots(): Promise<Lease[]>;
  /** Releases one lease (as returned by leasesOf/all); a no-op when it is already gone. */
  release(lease: Lease): Promise<void>;
  /**
   * Removes IP-named files that were read and hold no lease (empty, or not `<id>\r\n<ifname>`: host-local
   * killed between its exclusive create and its write, a power cut before the data reached the disk).
   * They keep their address taken, and no runtime can name them in a DEL or a GC's valid list; taken under
   * the lock host-local also writes under, none is half-way through a write. Returns their addresses. (GC.)
   */
  releaseDeadFiles?(): Promise<Ip[]>;
}

export interface TransactOptions {
  /**
   * Change nothing (CHECK, STATUS): no lease, no record, no boot marked as seen. A store may still keep
   * derived data it had to rebuild and that stays exact (the file store's occupancy maps).
   */
  readOnly?: boolean;
}

export interface LeaseStore {
  /**
   * Runs `fn` with the network locked (for files: flock on `<dir>/lock`, shared with host-local), then
   * persists the session's changes; the lock is released also when `fn` throws.
   */
  transact<T>(fn: (session: LeaseSession) => Promise<T>, opts?: TransactOptions): Promise<T>;
  /** Why leases cannot be written right now, or undefined when they can (STATUS). */
  unwritableReason(): Promise<string | undefined>;
}
