#!/usr/bin/env bash
# bench/cluster: cluster IPAM allocations per second and etcd round trips per ADD, cold and in steady churn,
# with 1 and with 3 berthd (issue 14). Root, after `npm run build`. Not a test, a measurement:
#   bash bench/cluster/run.sh [count-per-node=5000] [cold-concurrency=64] [live=500] [churn-pairs=5000] [churn-concurrency=16]
# A 3-member etcd 3.4 on the loopback of a private "underlay" namespace (scripts/lib/etcd.sh, as cluster-test.sh),
# its clients also served on the underlay bridge's 198.18.62.1, and three node namespaces on that bridge
# (198.18.62.1x), as in cluster-net-test.sh: each berthd programs its routes to the other nodes' blocks in its
# own namespace, as on real nodes (in one shared namespace the daemons' route programmers would undo each
# other's routes, a cost no real node pays). Then for N = 1 and N = 3: N fresh berthd with the production defaults (TTL 15 s, release after 5 min, reserve
# window 1 min) under their own etcd prefix, and bench/cluster/load.js giving every node the same load at the
# same time (cold ADDs on a network with no blocks yet, then DEL+ADD churn at a constant lease count). Round
# trips are every request the daemons sent to etcd during the phase (berthd_cluster_etcd_requests_total, by
# operation), keepalives and watch reconnects included. Prints the table for the README; everything it
# starts is killed by PID, the namespace and temp dir removed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "bench/cluster: needs root (network namespace)" >&2; exit 1; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "bench/cluster: etcd/etcdctl missing (scripts/ensure-deps.sh installs etcd-server etcd-client)" >&2; exit 1; }
[ -f "$repo/dist/main.js" ] || { echo "bench/cluster: build first (npm run build)" >&2; exit 1; }
COUNT="${1:-5000}" COLD_CONC="${2:-64}" LIVE="${3:-500}" CHURN="${4:-5000}" CHURN_CONC="${5:-16}"

P="bt$$"
NS="$P-bc"
node_ns() { echo "$P-bc$1"; }
T="$(mktemp -d "/tmp/$P-bc.XXXXXX")"
declare -A DPID
ETCD_NS="$NS" ETCD_DIR="$T" ETCD_TOKEN="$P" ETCD_CLIENT_HOST=198.18.62.1
source "$repo/scripts/lib/etcd.sh"

stop_daemons() {
  for n in "${!DPID[@]}"; do
    kill -9 "${DPID[$n]}" 2>/dev/null
    wait "${DPID[$n]}" 2>/dev/null
    unset "DPID[$n]"
  done
}
cleanup() {
  stop_daemons
  etcd_kill_all
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
  mkdir -p "$d/data"
  ip netns exec "$(node_ns "$2")" node "$repo/bin/berth" daemon --socket "$d/sock" --data-dir "$d/data" \
    --state-dir "$d" --etcd-endpoints "$EPU" --etcd-prefix "/bench-$1" --node-name "n$2" \
    --node-id-file "$d/node-id" --underlay-address "198.18.62.1$2" --log-level warn >>"$d/log" 2>&1 &
  DPID[$2]=$!
  local end=$((SECONDS + 20))
  until ip netns exec "$NS" curl -sf --unix-socket "$d/sock" http://b/v1/health >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "bench/cluster: berthd $2 did not start" >&2; tail -5 "$d/log" >&2; return 1; }
    sleep 0.1
  done
  TARGET="$d/sock:$d/data:${DPID[$2]}"
}

results=()
for nodes in 1 3; do
  run="n$nodes"
  targets=""
  for i in $(seq 1 "$nodes"); do
    start_daemon "$run" "$i" || exit 1
    targets="${targets:+$targets,}$TARGET"
  done
  echo "bench/cluster: $nodes berthd, $COUNT cold ADDs per node at $COLD_CONC-way, then $CHURN DEL+ADD pairs at $LIVE live, $CHURN_CONC-way (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  ip netns exec "$NS" node "$repo/bench/cluster/load.js" "$COUNT" "$COLD_CONC" "$LIVE" "$CHURN" "$CHURN_CONC" "$targets" \
    >"$T/$run.json" || { echo "bench/cluster: load failed" >&2; exit 1; }
  results+=("$T/$run.json")
  stop_daemons
done
node "$repo/bench/cluster/load.js" table "${results[@]}"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
