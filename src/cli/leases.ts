// `berth leases`: who holds which address, as a table for people or JSON for scripts, one lease in detail,
// and releasing one by hand (asked for confirmation, since the pod holding it loses its address).
import { type AdminBackend, type BackendOptions, openAdminBackend } from '../daemon/admin-backend';
import { formatIp, parseIp } from '../address/ip';
import type { LeaseView } from '../ipam/daemon/protocol';
import { columnWidths } from './table';

export interface CliIo {
  out(s: string): void;
  err(s: string): void;
}

export interface LeaseCliOptions extends BackendOptions {
  network?: string;
  json?: boolean;
}

/** 42s, 5m, 3h, 2d: enough to tell a fresh lease from a leaked one. */
export function age(createdAt: string | undefined, now: Date): string {
  if (createdAt === undefined) return '-';
  const s = Math.max(0, Math.floor((now.getTime() - Date.parse(createdAt)) / 1000));
  if (!Number.isFinite(s)) return '-';
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/**
 * Text a caller chose (K8S_POD_NAME, CNI_NETNS: berth-ipam takes them as given) as a terminal line may show it:
 * control characters escaped (they could move the cursor, clear the screen or forge rows), and cut at `max`.
 */
function printable(text: string, max = Infinity): string {
  const safe = text.replace(
    /[\u0000-\u001f\u007f-\u009f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
  return safe.length <= max ? safe : `${safe.slice(0, max - 1)}…`;
}

/** A Kubernetes name is at most 253 characters: the table shows namespace/name up to 80. */
const POD_COLUMN_MAX = 80;

function podText(l: LeaseView): string | undefined {
  if (l.pod === undefined) return undefined;
  const text = [l.pod.namespace, l.pod.name].filter(Boolean).join('/');
  return text === '' ? undefined : text;
}

export function leaseTable(leases: readonly LeaseView[], now: Date): string {
  const rows = [
    ['NETWORK', 'IP', 'CONTAINER', 'IFNAME', 'POD', 'AGE'],
    ...leases.map((l) => [
      l.network,
      l.ip,
      l.containerId.length > 12 ? l.containerId.slice(0, 12) : l.containerId,
      l.ifname || '-',
      printable(podText(l) ?? '-', POD_COLUMN_MAX),
      age(l.createdAt, now),
    ]),
  ];
  const widths = columnWidths(rows);
  return (
    rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') +
    '\n'
  );
}

async function withBackend<T>(o: BackendOptions, io: CliIo, fn: (b: AdminBackend) => Promise<T>): Promise<T> {
  const b = await openAdminBackend(o);
  if (b.kind === 'files')
    io.err(`berth: berthd is not answering; working on the lease files under ${b.where}\n`);
  try {
    return await fn(b);
  } finally {
    b.close();
  }
}

function filterOf(o: LeaseCliOptions): { network?: string } {
  return o.network === undefined ? {} : { network: o.network };
}

export async function runLeasesList(o: LeaseCliOptions, io: CliIo): Promise<number> {
  const leases = await withBackend(o, io, (b) => b.list(filterOf(o)));
  if (o.json === true) io.out(`${JSON.stringify(leases, null, 2)}\n`);
  else if (leases.length === 0) io.out('no leases\n');
  else io.out(leaseTable(leases, new Date()));
  return 0;
}

export async function runLeasesShow(query: string, o: LeaseCliOptions, io: CliIo): Promise<number> {
  const leases = await withBackend(o, io, (b) => b.show(query, filterOf(o)));
  if (o.json === true) io.out(`${JSON.stringify(leases, null, 2)}\n`);
  else {
    for (const l of leases) {
      const lines: [string, string | undefined][] = [
        ['ip', l.ip],
        ['network', l.network],
        ['data dir', l.dataDir],
        ['container', l.containerId],
        ['ifname', l.ifname || '(legacy lease: container id only)'],
        [
          'pod',
          l.pod === undefined
            ? undefined
            : printable((podText(l) ?? '') + (l.pod.uid ? ` (uid ${l.pod.uid})` : '')),
        ],
        ['netns', l.netns === undefined ? undefined : printable(l.netns)],
        [
          'created',
          l.createdAt === undefined ? undefined : `${l.createdAt} (${age(l.createdAt, new Date())} ago)`,
        ],
        ['boot id', l.bootId],
        ['origin', l.origin],
      ];
      io.out(
        lines
          .filter(([, v]) => v !== undefined)
          .map(([k, v]) => `${`${k}:`.padEnd(11)}${v}`)
          .join('\n') + '\n\n',
      );
    }
  }
  if (leases.length === 0) {
    io.err(`berth: no lease matches ${JSON.stringify(query)}\n`);
    return 1;
  }
  return 0;
}

export interface ReleaseOptions extends LeaseCliOptions {
  yes?: boolean;
  /** Asks the question and resolves to the answer line; undefined when there is no terminal to ask on. */
  ask?: (question: string) => Promise<string>;
}

/** Reads one answer from the terminal; only when stdin is one. */
export function terminalAsk(): ((q: string) => Promise<string>) | undefined {
  if (!process.stdin.isTTY) return undefined;
  return async (q) => {
    const readline = require('node:readline/promises') as typeof import('node:readline/promises');
    const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
    try {
      return await rl.question(q);
    } finally {
      rl.close();
    }
  };
}

export async function runLeasesRelease(ip: string, o: ReleaseOptions, io: CliIo): Promise<number> {
  return withBackend(o, io, async (b) => {
    const want = parseIp(ip);
    if (want === undefined) {
      io.err(`berth: ${JSON.stringify(ip)} is not an IP address\n`);
      return 1;
    }
    const canonical = formatIp(want);
    const held = (await b.show(canonical, filterOf(o))).filter((l) => l.ip === canonical);
    if (held.length === 0) {
      io.err(`berth: no lease holds ${canonical}\n`);
      return 1;
    }
    if (o.yes !== true) {
      if (o.ask === undefined) {
        io.err('berth: refusing to release without --yes (no terminal to ask for confirmation)\n');
        return 1;
      }
      const who = held
        .map(
          (l) => `${l.ip} in network ${l.network}, held by ${l.containerId}${l.ifname ? `/${l.ifname}` : ''}`,
        )
        .join('; ');
      const answer = await o.ask(
        `Release ${who}? The pod keeps using the address until it is deleted. [y/N] `,
      );
      if (!/^y(es)?$/i.test(answer.trim())) {
        io.err('berth: not released\n');
        return 1;
      }
    }
    // The holder shown (and confirmed) goes along: if the address changed hands meanwhile, nothing is released.
    const seen =
      held.length === 1 ? { containerId: held[0]!.containerId, ifname: held[0]!.ifname } : undefined;
    const r = await b.release(canonical, filterOf(o), seen);
    if (o.json === true) io.out(`${JSON.stringify(r, null, 2)}\n`);
    else
      for (const l of r.released)
        io.out(
          `released ${l.ip} (network ${l.network}, container ${l.containerId}${l.ifname ? `/${l.ifname}` : ''})\n`,
        );
    return 0;
  });
}
