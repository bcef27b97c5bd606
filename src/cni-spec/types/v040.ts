// Result shape of spec 0.3.0, 0.3.1 and 0.4.0 (identical): interfaces, any number of IPs tagged "4"/"6".
import type { DNS } from './result';

export interface Interface040 {
  name: string;
  mac?: string;
  sandbox?: string;
}

export interface IPConfig040 {
  version: '4' | '6';
  /** Index into `interfaces`; IPAM plugins leave it out. */
  interface?: number;
  address: string;
  gateway?: string;
}

export interface Route040 {
  dst: string;
  gw?: string;
}

export interface Result040 {
  cniVersion: string;
  interfaces?: Interface040[];
  ips?: IPConfig040[];
  routes?: Route040[];
  dns?: DNS;
}
