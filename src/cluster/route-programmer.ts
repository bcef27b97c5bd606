// Keeps the host's routes to other nodes' blocks equal to the block map, for as long as berthd runs: a
// reconcile after every change of the map (coalesced: at most one running, one more queued), and a periodic
// one that repairs what someone else changed (a flushed route, a restarted interface). Nothing is removed
// before the map has been loaded once, so a restarting daemon leaves the routes it finds until it knows.
import type { BlockMapSource } from './block-map';
import {
  compareRoutes,
  desiredRoutes,
  kernelRoutes,
  reconcileRoutes,
  type DesiredRoutes,
  type ReconcileOutcome,
  type RouteStatusEntry,
  type RouteTable,
} from './routes';

export interface RouteProgrammerOptions {
  source: BlockMapSource;
  /** This node's name: its own blocks are local (on the bridge), never routed. */
  self: string;
  /** Opens a socket in the host namespace (closed after each use). */
  openTable: () => RouteTable & { close(): void };
  /** Routing table id (default main). */
  tableId?: number;
  /** Repair interval (default 30 s); 0 turns periodic repair off. */
  resyncMs?: number;
  log: (line: string) => void;
}

/** A sample in the shape berthd's metrics renderer takes. */
export interface RouteMetricSample {
  name: string;
  help: string;
  labels: Record<string, string>;
  value: number;
  type: 'gauge' | 'counter';
}

export interface RoutesReport {
  self: string;
  tableId: number;
  /** false until the block map has been loaded once. */
  loaded: boolean;
  entries: RouteStatusEntry[];
  last: { at: string; outcome: ReconcileOutcome } | undefined;
}

export class RouteProgrammer {
  private readonly lastKnown = new Map<string, readonly string[]>();
  private running: Promise<void> | undefined;
  private queued = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private last: { at: string; outcome: ReconcileOutcome } | undefined;
  private readonly counts = {
    reconciles: 0,
    reconcileErrors: 0,
    added: 0,
    replaced: 0,
    removed: 0,
  };

  constructor(private readonly opts: RouteProgrammerOptions) {}

  start(): void {
    this.unsubscribe = this.opts.source.onChange(() => this.schedule());
    const every = this.opts.resyncMs ?? 30_000;
    if (every > 0) {
      this.timer = setInterval(() => this.schedule(), every);
      this.timer.unref();
    }
    this.schedule();
  }

  /** Stops listening; a reconcile in flight finishes. Routes stay: pods keep their traffic while berthd is down. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.running;
  }

  /** Runs a reconcile now (after the one in flight, if any) and resolves when the kernel has been updated. */
  async reconcileNow(): Promise<ReconcileOutcome | undefined> {
    this.schedule();
    while (this.running !== undefined) await this.running;
    return this.last?.outcome;
  }

  private schedule(): void {
    if (this.stopped) return;
    if (this.running !== undefined) {
      this.queued = true;
      return;
    }
    this.running = this.loop().finally(() => {
      this.running = undefined;
    });
  }

  private async loop(): Promise<void> {
    do {
      this.queued = false;
      try {
        await this.reconcileOnce();
      } catch (err) {
        // A reconcile that could not even start (no netlink socket: EMFILE) or list the table: counted and
        // logged, and the next event or resync tries again. Thrown on, it would end berthd (unhandled).
        this.counts.reconcileErrors++;
        this.opts.log(`routes: reconcile failed: ${(err as Error).message}`);
      }
    } while (this.queued && !this.stopped);
  }

  /** The routes wanted now, remembering each live node's underlay for when its lease lapses. */
  desired(): DesiredRoutes | undefined {
    const view = this.opts.source.view();
    if (view === undefined) return undefined;
    for (const n of view.alive) if (n.underlay.length > 0) this.lastKnown.set(n.node, n.underlay);
    // A node that owns nothing any more (released, forgotten) is forgotten here too.
    const owners = new Set(view.blocks.map((b) => b.node));
    const alive = new Set(view.alive.map((n) => n.node));
    for (const node of [...this.lastKnown.keys()])
      if (!owners.has(node) && !alive.has(node)) this.lastKnown.delete(node);
    return desiredRoutes(view, this.opts.self, this.lastKnown);
  }

  /** Refused block keys already logged. */
  private refusedLogged = new Set<string>();

  private async reconcileOnce(): Promise<void> {
    const desired = this.desired();
    if (desired === undefined) return;
    // Said once per block key, while it stays refused.
    const refusedNow = new Set<string>();
    for (const r of desired.refused) {
      const key = `${r.network} ${r.dst} ${r.node}`;
      refusedNow.add(key);
      if (!this.refusedLogged.has(key))
        this.opts.log(
          `routes: block ${r.dst} of node ${r.node} (network ${r.network}) not routed: ${r.reason}`,
        );
    }
    this.refusedLogged = refusedNow;
    const table = this.opts.openTable();
    let outcome: ReconcileOutcome;
    try {
      outcome = await reconcileRoutes({
        table,
        desired,
        ...(this.opts.tableId !== undefined ? { tableId: this.opts.tableId } : {}),
      });
    } finally {
      table.close();
    }
    this.counts.reconciles++;
    this.counts.added += outcome.added.length;
    this.counts.replaced += outcome.replaced.length;
    this.counts.removed += outcome.removed.length;
    this.counts.reconcileErrors += outcome.errors.length;
    this.last = { at: new Date().toISOString(), outcome };
    const changes = [
      ...outcome.added.map((d) => `+${d}`),
      ...outcome.replaced.map((d) => `~${d}`),
      ...outcome.removed.map((d) => `-${d}`),
    ];
    if (changes.length > 0) this.opts.log(`routes: ${changes.join(' ')}`);
    for (const c of outcome.conflicts)
      this.opts.log(`routes: ${c}: another owner's route holds this destination; not installed`);
    for (const e of outcome.errors) this.opts.log(`routes: ${e.op} ${e.dst} failed: ${e.message}`);
  }

  /** What berthd wants and whether the kernel agrees, read from the kernel now. */
  async report(): Promise<RoutesReport> {
    const tableId = this.opts.tableId ?? 254;
    const desired = this.desired();
    const base = { self: this.opts.self, tableId, last: this.last };
    if (desired === undefined) return { ...base, loaded: false, entries: [] };
    const table = this.opts.openTable();
    try {
      return { ...base, loaded: true, entries: compareRoutes(desired, await kernelRoutes(table, tableId)) };
    } finally {
      table.close();
    }
  }

  /** Prometheus samples: routes wanted per family, held blocks, changes and reconcile errors since start. */
  samples(): RouteMetricSample[] {
    const desired = this.desired();
    const count = (f: 4 | 6) =>
      desired?.routes.filter((r) => (r.dst.includes(':') ? 6 : 4) === f).length ?? 0;
    const counter = (name: string, help: string, value: number, labels: Record<string, string> = {}) => ({
      name,
      help,
      labels,
      value,
      type: 'counter' as const,
    });
    return [
      ...([4, 6] as const).map((f) => ({
        name: 'berthd_cluster_routes',
        help: "Routes to other nodes' blocks berthd keeps in the kernel (proto 190)",
        labels: { family: `ipv${f}` },
        value: count(f),
        type: 'gauge' as const,
      })),
      {
        name: 'berthd_cluster_routes_held',
        help: 'Blocks of other nodes berthd cannot route (owner underlay unknown, of no usable family, or shared with another node); their kernel routes are left alone',
        labels: {},
        value: desired?.held.length ?? 0,
        type: 'gauge',
      },
      {
        name: 'berthd_cluster_route_conflicts',
        help: "Destinations held by another owner's route at the last reconcile",
        labels: {},
        value: this.last?.outcome.conflicts.length ?? 0,
        type: 'gauge',
      },
      counter('berthd_cluster_route_reconciles_total', 'Route reconciles run', this.counts.reconciles),
      counter(
        'berthd_cluster_route_reconcile_errors_total',
        'Route operations that failed during reconciles',
        this.counts.reconcileErrors,
      ),
      ...(['added', 'replaced', 'removed'] as const).map((op) =>
        counter('berthd_cluster_route_changes_total', 'Route changes made by reconciles', this.counts[op], {
          op,
        }),
      ),
    ];
  }
}
