// Result shape of spec 0.1.0 and 0.2.0 (identical): at most one IPv4 and one IPv6 config, no interfaces.
import type { DNS } from './result';

export interface Route020 {
  dst: string;
  gw?: string;
}

export interface IPConfig020 {
  /** CIDR of the host address, e.g. "10.1.0.5/24". */
  ip: string;
  gateway?: string;
  routes?: Route020[];
}

export interface Result020 {
  cniVersion: string;
  ip4?: IPConfig020;
  ip6?: IPConfig020;
  dns?: DNS;
}
