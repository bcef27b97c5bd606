// The internal result model (spec 1.1.0): handlers build only this; versions are converted at the edge.

export interface Interface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
  socketPath?: string;
  pciID?: string;
}

export interface IPConfig {
  /** CIDR of the host address and prefix, e.g. "10.1.0.5/24". */
  address: string;
  gateway?: string;
  /** Index into `interfaces`; IPAM plugins leave it out. */
  interface?: number;
}

export interface Route {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface DNS {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

/** A result in spec 1.0.0/1.1.0 shape (the two differ only by optional fields). */
export interface Result {
  cniVersion: string;
  interfaces?: Interface[];
  ips?: IPConfig[];
  routes?: Route[];
  dns?: DNS;
}
