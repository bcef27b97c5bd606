#!/usr/bin/env bash
# The full bridge suite (scripts/netns-test.sh) through berth-shim with no berthd: every berth-bridge and
# berth-ipam call (cnitool's, berth exec's and berth-bridge's own IPAM delegation) goes to the shims in
# native/shim/build/bin, which find no daemon at BERTH_SOCKET and exec the standalone program. Root.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$repo/native/shim/build/bin/berth-bridge" ] || { echo "shim-netns-test.sh: build first (npm run build)" >&2; exit 1; }
nosock="$(mktemp -u "/tmp/bt$$-no-berthd.XXXXXX.sock")"
echo "# shim-netns-test: plugins = berth-shim (native/shim/build/bin), BERTH_SOCKET=$nosock (absent): fallback"
PLUGIN_DIR="$repo/native/shim/build/bin" BERTH_SOCKET="$nosock" exec bash "$repo/scripts/netns-test.sh"
