// What the IPAM service and its stores report through: a log and counters. berthd supplies them
// (src/daemon/log.ts, src/daemon/metrics.ts); the IPAM room names only the shape it needs, so it does not
// depend on the daemon that hosts it.
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
}

export interface Counters {
  inc(name: string, help: string, labels?: Record<string, string>, by?: number): void;
}
