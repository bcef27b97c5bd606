// Network names, container ids and interface names become file names under dataDir: checked here (with the
// protocol's own rules plus the store's length limit) so that none can climb out of it or collide with the
// store's files. The dispatcher checks the same rules; the store checks again because the daemon will call it too.
import { CniError, ErrorCode } from '../cni-spec/errors';
import { containerIdProblem, ifnameProblem, networkNameProblem } from '../cni-spec/identifiers';

/** Longest container id: `<id>:<ifname>` (ifname <= 15 bytes) must fit a 255-byte file name. */
export const MAX_CONTAINER_ID = 239;

export function checkNetworkName(name: unknown): string {
  const problem =
    typeof name !== 'string'
      ? 'must be a string'
      : name.length > 255
        ? 'must be at most 255 bytes'
        : networkNameProblem(name);
  if (problem !== undefined) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      `invalid network name ${JSON.stringify(name)}: ${problem} (it names a directory under dataDir)`,
    );
  }
  return name as string;
}

export function checkContainerId(id: unknown): string {
  const problem =
    typeof id !== 'string'
      ? 'must be a string'
      : id.length > MAX_CONTAINER_ID
        ? `must be at most ${MAX_CONTAINER_ID} bytes`
        : containerIdProblem(id);
  if (problem !== undefined) {
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `invalid container id ${JSON.stringify(id)}: ${problem}`,
    );
  }
  return id as string;
}

export function checkIfname(ifname: unknown): string {
  const problem = typeof ifname !== 'string' ? 'must be a string' : ifnameProblem(ifname);
  if (problem !== undefined) {
    throw new CniError(
      ErrorCode.InvalidEnvironmentVariables,
      `invalid interface name ${JSON.stringify(ifname)}: ${problem}`,
    );
  }
  return ifname as string;
}
