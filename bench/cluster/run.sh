#!/usr/bin/env bash
# bench/cluster: cluster IPAM allocations per second and etcd round trips per ADD, cold and in steady churn,
# with 1 and with 3 berthd (issue 14). Root, after `npm run build`. Not a test, a measurement:
#   bash bench/cluster/run.sh [count-per-node=5000] [cold-concurrency=64] [live=500] [churn-pairs=5000] [churn-concurrency=16]
# A 3-member etcd 3.4 on the loopback of a private "underlay" namespace (scripts/lib/etcd.sh, as cluster-test.sh),
# its clients also served on the underlay bridge's 198.18.62.1, and three node namespaces on that bridge
# (198.18.62.1x), as in cluster-net-test.sh: each berthd programs its routes to the other nodes' blocks in its
# own namespace, as on real nodes (in one shared namespace the daemons' route programmers would undo each
# other's routes, a cost no real node pays). Then by default three runs: 1 berthd, 3 berthd in one cluster, and
# 3 berthd in three one-node clusters ("3x1", the control: the same three processes on the same cores at the
# same time, with no cluster traffic between them, so 3 against 3x1 is what cluster membership costs a node
# while 3 against 1 also contains the co-scheduling of three daemons on this machine's cores). Each run: fresh
# berthd with the production defaults (TTL 15 s, release after 5 min, reserve window 1 min) under their own
# etcd prefix, and bench/cluster/load.js giving every node the same load at the same time (cold ADDs on a
# network with no blocks yet, then DEL+ADD churn at a constant lease count). Round trips are every request the
# daemons sent to etcd during the phase (berthd_cluster_etcd_requests_total, by operation), keepalives and
# watch reconnects included. Prints the table for the README (with the 1-minute load average at the end of
# each run); everything it starts is killed by PID, the filesystems unmounted, the namespaces and the temp dir
# removed, also when it fails or is interrupted.
# Each node's berthd gets its own filesystem (BENCH_FS=own, the default), as on real nodes with one disk each: a
# 256 MB ext4 image per node in the temp dir, loop-mounted on the node's dir (data dir, state dir, socket),
# unmounted after its run and by the trap (mount -o loop frees the loop device on unmount). berthd's group
# commit is a syncfs(2) of its data dir's filesystem, so on one shared filesystem every round also writes back
# and waits for the other daemons', etcd's and every other process's dirty data there (and on a large root
# filesystem costs system time of its own). BENCH_FS=shared puts everything on the temp dir's filesystem, as
# before. Environment knobs (measurement aids, not needed):
#   BENCH_RUNS="1 3 3x1" the runs, in order (e.g. "1 3 3x1 3x1 3 1" alternates to spread the load's drift)
#   BENCH_NODE_FLAGS=""  extra node flags for every berthd, {run} replaced by the run's name (e.g. "--cpu-prof
#                        --cpu-prof-dir=/some/dir/{run}"); with flags the daemons are stopped by SIGTERM (up to
#                        10 s, then SIGKILL) so that node writes its profile
#   BENCH_ATTACH=""      a command run (bash -c, in the background) during each load phase with $RUN and
#                        $PIDS (the daemons' PIDs, comma-separated) set, sent SIGINT when the load ends; exec
#                        the tool so that it gets the signal (e.g. 'exec perf stat -e task-clock -p $PIDS
#                        --per-thread -o /some/dir/$RUN.txt')
#   BENCH_KEEP=dir       copy every run's result JSON there
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "bench/cluster: needs root (network namespace)" >&2; exit 1; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "bench/cluster: etcd/etcdctl missing (scripts/ensure-deps.sh installs etcd-server etcd-client)" >&2; exit 1; }
[ -f "$repo/dist/main.js" ] || { echo "bench/cluster: build first (npm run build)" >&2; exit 1; }
BENCH_FS="${BENCH_FS:-own}" BENCH_RUNS="${BENCH_RUNS:-1 3 3x1}" BENCH_NODE_FLAGS="${BENCH_NODE_FLAGS:-}"
BENCH_ATTACH="${BENCH_ATTACH:-}" BENCH_KEEP="${BENCH_KEEP:-}"
case "$BENCH_FS" in own | shared) ;; *) echo "bench/cluster: BENCH_FS is own or shared" >&2; exit 1 ;; esac
COUNT="${1:-5000}" COLD_CONC="${2:-64}" LIVE="${3:-500}" CHURN="${4:-5000}" CHURN_CONC="${5:-16}"

P="bt$$"
NS="$P-bc"
node_ns() { echo "$P-bc$1"; }
T="$(mktemp -d "/tmp/$P-bc.XXXXXX")"
declare -A DPID
MOUNTS=()
ETCD_NS="$NS" ETCD_DIR="$T" ETCD_TOKEN="$P" ETCD_CLIENT_HOST=198.18.62.1
source "$repo/scripts/lib/etcd.sh"

stop_daemons() {
  if [ -n "$BENCH_NODE_FLAGS" ]; then
    for n in "${!DPID[@]}"; do kill -TERM "${DPID[$n]}" 2>/dev/null; done
    local end=$((SECONDS + 10))
    for n in "${!DPID[@]}"; do
      while kill -0 "${DPID[$n]}" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    done
  fi
  for n in "${!DPID[@]}"; do
    kill -9 "${DPID[$n]}" 2>/dev/null
    wait "${DPID[$n]}" 2>/dev/null
    unset "DPID[$n]"
  done
}
cleanup() {
  [ -z "${apid:-}" ] || { kill -INT "$apid" 2>/dev/null; wait "$apid" 2>/dev/null; }
  stop_daemons
  etcd_kill_all
  # The loop devices go with the unmount (mount -o loop sets autoclear).
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  for i in 1 2 3; do ip netns del "$(node_ns "$i")" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add ulbr type bridge
ip -n "$NS" addr add 198.18.62.1/24 dev ulbr
ip -n "$NS" link set ulbr up
for i in 1 2 3; do
  n="$(node_ns "$i")"
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip -n "$n" link add ul0 type veth peer name "ul-n$i" netns "$NS"
  ip -n "$NS" link set "ul-n$i" master ulbr up
  ip -n "$n" addr add "198.18.62.1$i/24" dev ul0
  ip -n "$n" link set ul0 up
done
EPU="$(etcd_endpoints_on 198.18.62.1)"
etcd_start_all new
etcd_healthy 20 || { echo "bench/cluster: etcd did not become healthy" >&2; exit 1; }

start_daemon() { # run i → TARGET (not echoed: a $(…) subshell would own the daemon and its PID)
  local d="$T/$1/n$2"
  mkdir -p "$d"
  if [ "$BENCH_FS" = own ]; then
    truncate -s 256M "$T/$1-n$2.img" && mkfs.ext4 -q -F "$T/$1-n$2.img" && mount -o loop "$T/$1-n$2.img" "$d" ||
      { echo "bench/cluster: could not mount a filesystem for node $2" >&2; return 1; }
    MOUNTS+=("$d")
  fi
  mkdir -p "$d/data"
  # shellcheck disable=SC2086 # BENCH_NODE_FLAGS is a list of flags
  ip netns exec "$(node_ns "$2")" node ${BENCH_NODE_FLAGS//\{run\}/$1} "$repo/bin/berth" daemon --socket "$d/sock" --data-dir "$d/data" \
    --state-dir "$d" --etcd-endpoints "$EPU" --etcd-prefix "/bench-$1${SEPARATE:+-n$2}" --node-name "n$2" \
    --node-id-file "$d/node-id" --underlay-address "198.18.62.1$2" --log-level warn >>"$d/log" 2>&1 &
  DPID[$2]=$!
  local end=$((SECONDS + 20))
  until ip netns exec "$NS" curl -sf --unix-socket "$d/sock" http://b/v1/health >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "bench/cluster: berthd $2 did not start" >&2; tail -5 "$d/log" >&2; return 1; }
    sleep 0.1
  done
  TARGET="$d/sock:$d/data:${DPID[$2]}"
}

unmount_run() { # run: the nodes' filesystems of a finished run (their daemons are stopped)
  local keep=()
  for m in "${MOUNTS[@]}"; do
    if [[ "$m" == "$T/$1/"* ]]; then
      umount "$m" || keep+=("$m")
    else
      keep+=("$m")
    fi
  done
  MOUNTS=("${keep[@]}")
  rm -f "$T/$1"-n*.img
}

results=()
k=0
for spec in $BENCH_RUNS; do
  k=$((k + 1))
  nodes="${spec%x1}"
  SEPARATE=""
  [ "$nodes" = "$spec" ] || SEPARATE=1
  run="r$k-n$spec"
  targets=""
  pids=""
  for i in $(seq 1 "$nodes"); do
    start_daemon "$run" "$i" || exit 1
    targets="${targets:+$targets,}$TARGET"
    pids="${pids:+$pids,}${DPID[$i]}"
  done
  echo "bench/cluster: $nodes berthd${SEPARATE:+ in separate clusters} ($BENCH_FS filesystem), $COUNT cold ADDs per node at $COLD_CONC-way, then $CHURN DEL+ADD pairs at $LIVE live, $CHURN_CONC-way (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  apid=""
  if [ -n "$BENCH_ATTACH" ]; then
    RUN="$run" PIDS="$pids" bash -c "$BENCH_ATTACH" &
    apid=$!
  fi
  ip netns exec "$NS" node "$repo/bench/cluster/load.js" "$COUNT" "$COLD_CONC" "$LIVE" "$CHURN" "$CHURN_CONC" "$targets" \
    >"$T/$run.json"
  rc=$?
  if [ -n "$apid" ]; then
    kill -INT "$apid" 2>/dev/null
    wait "$apid" 2>/dev/null
    apid=""
  fi
  [ $rc = 0 ] || { echo "bench/cluster: load failed" >&2; exit 1; }
  node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));r.load=process.argv[2];r.fs=process.argv[3];if(process.argv[4])r.separate=true;require("fs").writeFileSync(process.argv[1],JSON.stringify(r))' \
    "$T/$run.json" "$(cut -d' ' -f1 /proc/loadavg)" "$BENCH_FS" "$SEPARATE"
  [ -z "$BENCH_KEEP" ] || cp "$T/$run.json" "$BENCH_KEEP/"
  results+=("$T/$run.json")
  stop_daemons
  unmount_run "$run"
done
node "$repo/bench/cluster/load.js" table "${results[@]}"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
