// libcni's skel refuses a call whose CNI_NETNS is the plugin's own network namespace (the host's) with code
// 8, unless CNI_NETNS_OVERRIDE is 1 or true: an ADD there would configure the host, and the DEL a runtime
// sends after a failed ADD would delete the host's interface of that name (a veth "eth0" on kind nodes).
import { CniError, ErrorCode } from '../cni-spec/errors';
import type { Request } from '../cni-spec/request';
import { isOwnNetns } from './kernel';

export function refuseOwnNetns(req: Request): void {
  if (req.netns === '') return;
  // As skel: "1", or "true" in any case.
  const override = req.env.CNI_NETNS_OVERRIDE;
  if (override === '1' || override?.toUpperCase() === 'TRUE') return;
  if (isOwnNetns(req.netns)) {
    throw new CniError(
      ErrorCode.InvalidNetns,
      `CNI_NETNS ${req.netns} is the plugin's own network namespace (the host's); set CNI_NETNS_OVERRIDE=1 to allow it`,
    );
  }
}
