// `berth daemon`: berthd in the foreground (systemd runs it so), options checked here before it starts.
import { isLogFormat, isLogLevel } from '../daemon/log';
import { runDaemon } from '../daemon/lifecycle';

export interface DaemonCliOptions {
  socket?: string;
  dataDir?: string;
  stateDir?: string;
  logFormat?: string;
  logLevel?: string;
  metricsAddress?: string;
}

export async function runDaemonCommand(o: DaemonCliOptions, err: (s: string) => void): Promise<number> {
  const format = o.logFormat ?? 'text';
  const level = o.logLevel ?? 'info';
  if (!isLogFormat(format)) {
    err(`berth daemon: --log-format must be text or json, got ${format}\n`);
    return 2;
  }
  if (!isLogLevel(level)) {
    err(`berth daemon: --log-level must be debug, info, warn or error, got ${level}\n`);
    return 2;
  }
  for (const [flag, v] of [
    ['--socket', o.socket],
    ['--data-dir', o.dataDir],
    ['--state-dir', o.stateDir],
  ] as const) {
    if (v !== undefined && !v.startsWith('/')) {
      err(`berth daemon: ${flag} must be an absolute path, got ${v}\n`);
      return 2;
    }
  }
  return runDaemon({
    logFormat: format,
    logLevel: level,
    ...(o.socket !== undefined ? { socket: o.socket } : {}),
    ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}),
    ...(o.stateDir !== undefined ? { stateDir: o.stateDir } : {}),
    ...(o.metricsAddress !== undefined ? { metricsAddress: o.metricsAddress } : {}),
  });
}
