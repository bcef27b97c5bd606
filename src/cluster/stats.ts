// The cluster's Prometheus series (design/cluster-ipam.md 3.10), rendered in the text format and appended
// to berthd's /metrics. Kept here so the cluster room needs nothing of the daemon's.

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`,
  );
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

interface Hist {
  counts: number[];
  sum: number;
  count: number;
}

export interface GaugeLine {
  name: string;
  help: string;
  labels: Labels;
  value: number;
  /** As daemon/metrics' SampledValue: 'counter' for a sum since start sampled rather than counted here. */
  type?: 'gauge' | 'counter';
}

export class ClusterStats {
  private readonly counters = new Map<string, { help: string; values: Map<string, number> }>();
  private readonly hists = new Map<string, { help: string; values: Map<string, Hist> }>();

  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    let c = this.counters.get(name);
    if (c === undefined) {
      c = { help, values: new Map() };
      this.counters.set(name, c);
    }
    const k = labelText(labels);
    c.values.set(k, (c.values.get(k) ?? 0) + by);
  }

  /** Current value of a counter (tests, bench). */
  counter(name: string, labels: Labels = {}): number {
    return this.counters.get(name)?.values.get(labelText(labels)) ?? 0;
  }

  /** Sum of a counter over all its label sets. */
  total(name: string): number {
    let n = 0;
    for (const v of this.counters.get(name)?.values.values() ?? []) n += v;
    return n;
  }

  observe(name: string, help: string, labels: Labels, seconds: number): void {
    let h = this.hists.get(name);
    if (h === undefined) {
      h = { help, values: new Map() };
      this.hists.set(name, h);
    }
    const k = labelText(labels);
    let v = h.values.get(k);
    if (v === undefined) {
      v = { counts: BUCKETS.map(() => 0), sum: 0, count: 0 };
      h.values.set(k, v);
    }
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]!) v.counts[i]!++;
    v.sum += seconds;
    v.count++;
  }

  render(gauges: readonly GaugeLine[]): string {
    const out: string[] = [];
    for (const [name, c] of this.counters) {
      out.push(`# HELP ${name} ${c.help}`, `# TYPE ${name} counter`);
      for (const [l, v] of c.values) out.push(`${name}${l} ${v}`);
    }
    for (const [name, h] of this.hists) {
      out.push(`# HELP ${name} ${h.help}`, `# TYPE ${name} histogram`);
      for (const [l, v] of h.values) {
        const inner = l === '' ? '' : `${l.slice(1, -1)},`;
        BUCKETS.forEach((b, i) => out.push(`${name}_bucket{${inner}le="${b}"} ${v.counts[i]}`));
        out.push(
          `${name}_bucket{${inner}le="+Inf"} ${v.count}`,
          `${name}_sum${l} ${v.sum}`,
          `${name}_count${l} ${v.count}`,
        );
      }
    }
    const byName = new Map<string, GaugeLine[]>();
    for (const g of gauges) byName.set(g.name, [...(byName.get(g.name) ?? []), g]);
    for (const [name, gs] of byName) {
      out.push(`# HELP ${name} ${gs[0]!.help}`, `# TYPE ${name} ${gs[0]!.type ?? 'gauge'}`);
      for (const g of gs) out.push(`${name}${labelText(g.labels)} ${g.value}`);
    }
    return out.length === 0 ? '' : `${out.join('\n')}\n`;
  }
}
