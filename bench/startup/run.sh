#!/usr/bin/env bash
# Size and start-up of the single executable (out/berth, `npm run package`) against `node -e 0` and the
# reference plugins in /usr/lib/cni. Start-up = one `CNI_COMMAND=VERSION` execution, stdin /dev/null,
# stdout discarded, environment reduced to PATH, CNI_COMMAND and a BERTH_SOCKET naming no socket; commands interleaved round by round
# (startup.py: wall-time median and p10–p90, CPU user+sys median from wait4, ratios to `node -e 0`), then
# the same with hyperfine when it is installed (`apt-get install hyperfine`), as a cross-check.
#   bench/startup/run.sh [RUNS]   (default 30; builds out/berth first if it is missing)
# Writes bench/results/startup-<time>.md too.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runs="${1:-30}"
cd "$repo"
[ -x out/berth ] || npm run package >&2
mkdir -p bench/results
report="bench/results/startup-$(date -u +%Y%m%dT%H%M%SZ).md"
node_bin="$(command -v node)"
links="$(mktemp -d "$repo/out/.startup.XXXXXX")"
trap 'rm -rf "$links"' EXIT
ln out/berth "$links/berth-bridge"
ln out/berth "$links/berth-ipam"

{
  echo "## Start-up bench ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
  echo
  echo "$(out/berth --version)"
  echo
  echo "| file | size (bytes) | MiB |"
  echo "| --- | ---: | ---: |"
  for f in out/berth out/berth-shim "$node_bin" /usr/lib/cni/bridge /usr/lib/cni/host-local out/sea/berth.js out/sea/sea-prep.blob; do
    [ -e "$f" ] || continue
    s="$(stat -L -c %s "$f")"
    echo "| \`$f\` | $s | $(awk -v s="$s" 'BEGIN { printf "%.1f", s / 1048576 }') |"
  done
  echo
  # out/berth-bridge and out/berth-ipam are the shim: the single executable under the plugins' names is
  # timed through hard links of its own; the shim, with no berthd to forward to, execs it (a row of its own).
  cmds=("node -e 0=$node_bin -e 0" "berth-bridge (single executable)=$links/berth-bridge"
    "berth-ipam (single executable)=$links/berth-ipam"
    "berth-bridge (shim, no berthd: execs the above)=$repo/out/berth-bridge"
    "node bin/berth-bridge (source tree)=$node_bin $repo/bin/berth-bridge")
  for ref in bridge host-local; do
    [ -x "/usr/lib/cni/$ref" ] && cmds+=("reference $ref=/usr/lib/cni/$ref")
  done
  python3 bench/startup/startup.py --runs "$runs" "${cmds[@]}"
  if command -v hyperfine >/dev/null; then
    echo
    echo "hyperfine cross-check (each command in its own block of $runs runs):"
    echo
    hf="$(mktemp)"
    env -i PATH=/usr/bin:/bin CNI_COMMAND=VERSION hyperfine -N --warmup 3 --runs "$runs" --output null \
      --export-markdown "$hf" "$node_bin -e 0" "$links/berth-bridge" "/usr/lib/cni/bridge" </dev/null >/dev/null 2>&1
    sed "s#$links/##; s#$repo/##" "$hf"
    rm -f "$hf"
  fi
} | tee "$report"
echo "(written to $report)" >&2
