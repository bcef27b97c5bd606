#!/usr/bin/env bash
# The full bridge suite (scripts/netns-test.sh) on the warm path: a private berthd (socket, run dir and
# state in the run's temp dir, killed by PID on exit) serves every berth-bridge and berth-ipam call that
# cnitool, berth exec and berth-bridge's own IPAM delegation make through the shims in native/shim/build/bin;
# the run ends by checking berthd's counters (calls served, none sent back). Root.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$repo/native/shim/build/bin/berth-bridge" ] || { echo "warm-netns-test.sh: build first (npm run build)" >&2; exit 1; }
echo "# warm-netns-test: plugins = berth-shim (native/shim/build/bin) -> a private berthd"
BERTHD=private PLUGIN_DIR="$repo/native/shim/build/bin" exec bash "$repo/scripts/netns-test.sh"
