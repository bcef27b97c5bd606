// An in-memory routing table with the kernel's matching rules for what reconciles use: one route per
// (table, dst, metric) whatever its protocol (EEXIST), replace by that key, delete matching on the fields
// given (protocol and gateway only when set), ESRCH when nothing matches.
import { NetlinkError } from '../../src/netlink/errors';
import type { Route, RouteFilter, RouteOptions } from '../../src/netlink/types';
import type { RouteTable } from '../../src/cluster/routes';

export class FakeRouteTable implements RouteTable {
  routes: Route[] = [];
  calls: string[] = [];
  closed = 0;
  /** Destinations whose next operation fails with this code. */
  failOn = new Map<string, string>();

  close(): void {
    this.closed++;
  }

  private route(o: RouteOptions, protocol: number): Route {
    const family = o.dst.includes(':') ? 6 : 4;
    return {
      family,
      dst: o.dst,
      gateway: o.gateway,
      oif: undefined,
      priority: o.priority,
      table: o.table ?? 254,
      scope: 0,
      protocol,
      type: 1,
      prefsrc: undefined,
    };
  }

  private failIfAsked(op: string, dst: string): void {
    const code = this.failOn.get(dst);
    if (code !== undefined) throw new NetlinkError({ code, errno: -1, op, object: dst });
  }

  private sameKey(a: Route, o: RouteOptions): boolean {
    return a.dst === o.dst && a.table === (o.table ?? 254) && (a.priority ?? 0) === (o.priority ?? 0);
  }

  listRoutes(filter: RouteFilter = {}): Promise<Route[]> {
    return Promise.resolve(
      this.routes.filter(
        (r) =>
          (filter.protocol === undefined || r.protocol === filter.protocol) &&
          (filter.table === undefined || r.table === filter.table),
      ),
    );
  }

  addRoute(o: RouteOptions): Promise<void> {
    this.calls.push(`add ${o.dst} via ${o.gateway}`);
    this.failIfAsked('RTM_NEWROUTE', o.dst);
    if (this.routes.some((r) => this.sameKey(r, o)))
      return Promise.reject(
        new NetlinkError({ code: 'EEXIST', errno: -17, op: 'RTM_NEWROUTE', object: o.dst }),
      );
    this.routes.push(this.route(o, o.protocol ?? 3));
    return Promise.resolve();
  }

  replaceRoute(o: RouteOptions): Promise<void> {
    this.calls.push(`replace ${o.dst} via ${o.gateway}`);
    this.failIfAsked('RTM_NEWROUTE', o.dst);
    this.routes = this.routes.filter((r) => !this.sameKey(r, o));
    this.routes.push(this.route(o, o.protocol ?? 3));
    return Promise.resolve();
  }

  delRoute(o: RouteOptions): Promise<void> {
    this.calls.push(`delete ${o.dst}`);
    this.failIfAsked('RTM_DELROUTE', o.dst);
    const i = this.routes.findIndex(
      (r) =>
        r.dst === o.dst &&
        r.table === (o.table ?? 254) &&
        (o.protocol === undefined || r.protocol === o.protocol) &&
        (o.gateway === undefined || r.gateway === o.gateway) &&
        (o.priority === undefined || r.priority === o.priority),
    );
    if (i < 0)
      return Promise.reject(
        new NetlinkError({ code: 'ESRCH', errno: -3, op: 'RTM_DELROUTE', object: o.dst }),
      );
    this.routes.splice(i, 1);
    return Promise.resolve();
  }
}
