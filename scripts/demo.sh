#!/usr/bin/env bash
# The main job in one command (root): installs what is missing, builds, then `berth demo` attaches two
# throw-away pod namespaces with berth-bridge + berth-ipam, shows their addresses, pings one from the
# other and removes everything again. Extra arguments go to `berth demo` (e.g. --reference).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "demo.sh: must run as root (it creates network namespaces and a bridge)" >&2; exit 1; }
if [ -x scripts/ensure-deps.sh ]; then scripts/ensure-deps.sh; fi
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run --silent build
exec node bin/berth demo "$@"
