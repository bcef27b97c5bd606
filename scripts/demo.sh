#!/usr/bin/env bash
# The main job in one command (root): dependencies and build via scripts/ensure-deps.sh, then `berth demo`
# attaches two throw-away pod namespaces with berth-bridge + berth-ipam through the same runtime as
# `berth exec`, shows their addresses, pings one pod from the other, DELs both and removes the namespaces,
# the bridge and its temp files (also on failure or Ctrl-C). Arguments go to `berth demo`
# (`--reference` runs the same flow on Debian's bridge + host-local, for comparison).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "demo.sh: must run as root (it creates network namespaces and a bridge)" >&2; exit 1; }
bash "$repo/scripts/ensure-deps.sh"
exec node "$repo/bin/berth" demo "$@"
