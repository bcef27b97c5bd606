// Counters, gauges and a latency histogram in Prometheus' text format (version 0.0.4), without a client
// library: berthd exports a handful of series and must not grow a dependency for them.

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`,
  );
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

/** Request latency buckets (seconds): the daemon's own work is sub-millisecond, fsync a few ms. */
const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** Buckets of whole plugin calls (seconds): a warm ADD takes milliseconds, a cold one or a slow IPAM more. */
const CALL_BUCKETS = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

interface Histogram {
  counts: number[];
  sum: number;
  count: number;
}

/**
 * A value read at scrape time: a gauge (pool sizes come from the network stores), or a counter kept
 * elsewhere (the stores' batch statistics), which must only ever grow and is named `_total` as Prometheus'
 * conventions say, so that `rate()` works on it.
 */
export interface SampledValue {
  name: string;
  help: string;
  labels: Labels;
  value: number;
  /** Gauge unless said otherwise. */
  type?: 'gauge' | 'counter';
}

export class Metrics {
  private readonly counters = new Map<string, { help: string; values: Map<string, number> }>();
  private readonly histograms = new Map<string, Histogram>();
  private readonly families = new Map<string, { help: string; series: Map<string, Histogram> }>();

  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    let c = this.counters.get(name);
    if (c === undefined) {
      c = { help, values: new Map() };
      this.counters.set(name, c);
    }
    const key = labelText(labels);
    c.values.set(key, (c.values.get(key) ?? 0) + by);
  }

  observeLatency(route: string, seconds: number): void {
    const key = labelText({ route });
    let h = this.histograms.get(key);
    if (h === undefined) {
      h = { counts: BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.histograms.set(key, h);
    }
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]!) h.counts[i]!++;
    h.sum += seconds;
    h.count++;
  }

  /** One observation of a named histogram (plugin calls: milliseconds to seconds, CALL_BUCKETS). */
  observe(name: string, help: string, labels: Labels, seconds: number): void {
    let family = this.families.get(name);
    if (family === undefined) {
      family = { help, series: new Map() };
      this.families.set(name, family);
    }
    const key = labelText(labels);
    let h = family.series.get(key);
    if (h === undefined) {
      h = { counts: CALL_BUCKETS.map(() => 0), sum: 0, count: 0 };
      family.series.set(key, h);
    }
    for (let i = 0; i < CALL_BUCKETS.length; i++) if (seconds <= CALL_BUCKETS[i]!) h.counts[i]!++;
    h.sum += seconds;
    h.count++;
  }

  /** The exposition text; `sampled` values are read by the caller at scrape time. */
  render(sampled: readonly SampledValue[]): string {
    const out: string[] = [];
    for (const [name, c] of this.counters) {
      out.push(`# HELP ${name} ${c.help}`, `# TYPE ${name} counter`);
      for (const [labels, v] of c.values) out.push(`${name}${labels} ${v}`);
    }
    const byName = new Map<string, SampledValue[]>();
    for (const g of sampled) byName.set(g.name, [...(byName.get(g.name) ?? []), g]);
    for (const [name, samples] of byName) {
      out.push(`# HELP ${name} ${samples[0]!.help}`, `# TYPE ${name} ${samples[0]!.type ?? 'gauge'}`);
      for (const s of samples) out.push(`${name}${labelText(s.labels)} ${s.value}`);
    }
    const h = 'berthd_request_duration_seconds';
    out.push(
      `# HELP ${h} Time from a request's headers to its reply (the body's transfer included), by route.`,
      `# TYPE ${h} histogram`,
    );
    for (const [key, hist] of this.histograms) {
      const inner = key.slice(1, -1);
      BUCKETS.forEach((b, i) => out.push(`${h}_bucket{${inner},le="${b}"} ${hist.counts[i]}`));
      out.push(
        `${h}_bucket{${inner},le="+Inf"} ${hist.count}`,
        `${h}_sum${key} ${hist.sum}`,
        `${h}_count${key} ${hist.count}`,
      );
    }
    for (const [name, family] of this.families) {
      out.push(`# HELP ${name} ${family.help}`, `# TYPE ${name} histogram`);
      for (const [key, hist] of family.series) {
        const inner = key === '' ? '' : `${key.slice(1, -1)},`;
        CALL_BUCKETS.forEach((b, i) => out.push(`${name}_bucket{${inner}le="${b}"} ${hist.counts[i]}`));
        out.push(
          `${name}_bucket{${inner}le="+Inf"} ${hist.count}`,
          `${name}_sum${key} ${hist.sum}`,
          `${name}_count${key} ${hist.count}`,
        );
      }
    }
    return `${out.join('\n')}\n`;
  }
}
