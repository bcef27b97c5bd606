#!/usr/bin/env bash
# The demo (placeholder until the bridge plugin lands): gets dependencies and the build in place and says
# what the demo will show.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/ensure-deps.sh"
cat <<'MSG'
berth is built. The demo is not there yet; once berth-bridge lands it will, as root:
  1. create two pods (network namespaces) and attach them to a berth bridge network through
     berth exec, the way containerd or CRI-O run CNI plugins;
  2. show their addresses from berth-ipam's lease files and ping one pod from the other;
  3. run CHECK, DEL and GC and show that nothing is left behind.
What works today:  CNI_COMMAND=VERSION ./bin/berth-bridge </dev/null
MSG
