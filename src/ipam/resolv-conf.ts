// The DNS part of an IPAM result, read from a resolv.conf-style file exactly as host-local parses it.
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { DNS } from '../cni-spec/types/result';
import { readRegularFile } from './lease-dir';

export function parseResolvConf(text: string): DNS {
  const dns: DNS = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const fields = line.split(/\s+/);
    if (fields.length < 2) continue;
    const [key, ...rest] = fields;
    switch (key) {
      case 'nameserver':
        (dns.nameservers ??= []).push(rest[0]!);
        break;
      case 'domain':
        dns.domain = rest[0]!;
        break;
      case 'search':
        (dns.search ??= []).push(...rest);
        break;
      case 'options':
        (dns.options ??= []).push(...rest);
        break;
      default:
        // Other keywords (sortlist, lookup, …) have no place in a CNI result.
        break;
    }
  }
  return dns;
}

const RESOLV_CONF_MAX_BYTES = 1 << 20;

export function readResolvConf(path: string): DNS {
  // "No DNS" as host-local reads it (a character device, which berth otherwise refuses).
  if (path === '/dev/null') return {};
  let text: string;
  try {
    // A regular file of at most 1 MiB: a FIFO, a device or a huge file there would stall or swamp berthd.
    text = readRegularFile(path, RESOLV_CONF_MAX_BYTES).toString('utf8');
  } catch (err) {
    throw new CniError(
      ErrorCode.IoFailure,
      `cannot read resolvConf ${path}: ${(err as Error).message}`,
      undefined,
      {
        cause: err,
      },
    );
  }
  return parseResolvConf(text);
}
