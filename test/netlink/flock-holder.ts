// A flock held by another process, as a plugin on the files (host-local, berth-ipam) holds it: util-linux
// `flock <file> sh -c 'echo held; cat'` keeps the lock until its stdin closes. Resolves once it is held.
import { type ChildProcess, spawn } from 'node:child_process';

export interface FlockHolder {
  child: ChildProcess;
  /** Lets go of the lock: resolves when the holder has exited. */
  release(): Promise<void>;
}

export async function holdFlock(path: string, opts: { shared?: boolean } = {}): Promise<FlockHolder> {
  const child = spawn('flock', [opts.shared === true ? '-s' : '-x', path, 'sh', '-c', 'echo held; cat'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.stdout.once('data', () => resolve());
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  return {
    child,
    release: async () => {
      child.stdin.end();
      await exited;
    },
  };
}
