// Result shape of spec 1.0.0: 0.4.0 without `ips[].version`, and without the optional fields 1.1.0 added.
import type { DNS } from './result';

export interface Interface100 {
  name: string;
  mac?: string;
  sandbox?: string;
}

export interface IPConfig100 {
  interface?: number;
  address: string;
  gateway?: string;
}

export interface Route100 {
  dst: string;
  gw?: string;
}

export interface Result100 {
  cniVersion: string;
  interfaces?: Interface100[];
  ips?: IPConfig100[];
  routes?: Route100[];
  dns?: DNS;
}
