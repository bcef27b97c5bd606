// berthd's log: one line per event on stderr, as text for people or JSON lines for collectors (--log-format).
export type LogFormat = 'text' | 'json';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
}

export interface LoggerOptions {
  format: LogFormat;
  level: LogLevel;
  write(line: string): void;
  now?: () => Date;
}

/**
 * Text a caller chose as the log takes it (a call's stderr line, an error's message): a plugin error may echo
 * a config of megabytes (the caller gets it whole).
 */
const MAX_LOG_LINE = 4096;
export function shortLogLine(line: string): string {
  return line.length <= MAX_LOG_LINE ? line : `${line.slice(0, MAX_LOG_LINE)}… (${line.length} characters)`;
}

export function createLogger(o: LoggerOptions): Logger {
  const min = RANK[o.level];
  return {
    log(level, msg, fields = {}) {
      if (RANK[level] < min) return;
      const time = (o.now?.() ?? new Date()).toISOString();
      if (o.format === 'json') {
        o.write(`${JSON.stringify({ time, level, msg, ...fields })}\n`);
        return;
      }
      const extra = Object.entries(fields)
        .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`)
        .join(' ');
      o.write(`${time} ${level.toUpperCase()} ${msg}${extra === '' ? '' : ` ${extra}`}\n`);
    },
  };
}

export function isLogFormat(s: string): s is LogFormat {
  return s === 'text' || s === 'json';
}

export function isLogLevel(s: string): s is LogLevel {
  return s in RANK;
}
