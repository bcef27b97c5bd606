# shellcheck shell=bash
# The one reason outside this project for an end-to-end script not to run: a node binary built without
# single-executable support (Node SEA's fuse, which scripts/package.js sets with postject), so berth's
# package cannot be built. Exits 77 (test.sh reports the script as skipped) for the script named $1.
require_sea_fuse() {
  local node_bin
  node_bin="$(node -p process.execPath)"
  grep -q NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2 "$node_bin" && return 0
  echo "SKIP $1: $node_bin has no single-executable fuse; cannot build berth"
  exit 77
}
