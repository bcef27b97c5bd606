#!/usr/bin/env bash
# Cluster networks end to end (issue 15, root): an underlay bridge in a private namespace, three "node"
# namespaces attached to it (198.18.61.1x, fd00:ff:61::1x), each running its own berthd (own run dir, data
# dir, state dir and socket, --underlay-address) and berth-bridge for two dual-stack pods; a 3-member etcd on
# loopback in the underlay namespace, its clients served on the underlay bridge's address. Then: every pod
# pings every other pod in both families (TTL: one hop on a node, two across nodes), the receiving pod sees
# the sender's pod address (no NAT inside the pool), a block a node releases loses its routes on the other
# nodes, a restarted berthd reconciles (none duplicated, none lost), a forgotten node's routes go everywhere,
# and nothing is left afterwards. Everything it starts is killed by PID; namespaces and temp dir are removed,
# also on failure. Prints one line per check and `N passed, N failed`.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "SKIP cluster-net-test.sh: needs root (network namespaces)"; exit 77; }
for c in etcd etcdctl ping nft curl; do
  command -v "$c" >/dev/null ||
    { echo "SKIP cluster-net-test.sh: $c missing (scripts/ensure-deps.sh installs it)"; exit 77; }
done
[ -f "$repo/dist/main.js" ] || { echo "cluster-net-test.sh: build first (npm run build)" >&2; exit 1; }

P="bt$$"
UL="$P-ul"
tmp="$(mktemp -d "/tmp/$P-cn.XXXXXX")"
T="$tmp"
DRV="$repo/scripts/lib/cluster-driver.js"
ECHO="$repo/scripts/lib/udp-echo.js"
PREFIX=/berth/v1
NET=cnet
POOL4=198.19.64.0/22
POOL6=fd00:b15:64::/112
NFT_TABLE="${P}cn"
IPAM="{\"type\":\"berth-ipam\",\"ranges\":[[{\"subnet\":\"$POOL4\"}],[{\"subnet\":\"$POOL6\"}]],\"cluster\":{\"blockSize\":26,\"blockSize6\":122}}"
UNDERLAYS="n1=198.18.61.11/fd00:ff:61::11,n2=198.18.61.12/fd00:ff:61::12,n3=198.18.61.13/fd00:ff:61::13"
PODS="p10 p11 p20 p21 p30 p31"
declare -A DPID V4 V6
source "$repo/scripts/lib/checks.sh"
ETCD_NS="$UL" ETCD_DIR="$T" ETCD_TOKEN="$P" ETCD_CLIENT_HOST=198.18.61.1
source "$repo/scripts/lib/etcd.sh"
EPU="$(etcd_endpoints_on 198.18.61.1)"

node_ns() { echo "$P-n$1"; }
pod_ns() { echo "$P-$1"; }
node_of() { echo "${1:1:1}"; } # p21 → 2

kill_daemon() { # i
  local p="${DPID[$1]:-}"
  [ -n "$p" ] || return 0
  kill -9 "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  unset "DPID[$1]"
  return 0
}

teardown() {
  for i in "${!DPID[@]}"; do kill_daemon "$i"; done
  etcd_kill_all
  for p in $PODS; do ip netns del "$(pod_ns "$p")" 2>/dev/null; done
  for i in 1 2 3; do ip netns del "$(node_ns "$i")" 2>/dev/null; done
  ip netns del "$UL" 2>/dev/null
}
trap 'teardown; rm -rf "$tmp"' EXIT

# --- the underlay, three nodes, etcd ---------------------------------------------------------------------
t0=$SECONDS
ip netns add "$UL"
ip -n "$UL" link set lo up
ip -n "$UL" link add ulbr type bridge
ip -n "$UL" addr add 198.18.61.1/24 dev ulbr
ip -n "$UL" link set ulbr up
for i in 1 2 3; do
  n="$(node_ns "$i")"
  ip netns add "$n"
  ip -n "$n" link set lo up
  ip -n "$n" link add ul0 type veth peer name "ul-n$i" netns "$UL"
  ip -n "$UL" link set "ul-n$i" master ulbr up
  ip -n "$n" addr add "198.18.61.1$i/24" dev ul0
  ip -n "$n" addr add "fd00:ff:61::1$i/64" dev ul0 nodad
  ip -n "$n" link set ul0 up
  mkdir -p "$T/n$i/data" "$T/n$i/state" "$T/n$i/run"
done
etcd_start_all new
check "3-member etcd healthy in the underlay namespace" etcd_healthy 20

start_daemon() { # i
  local i=$1
  ip netns exec "$(node_ns "$i")" node "$repo/bin/berth" daemon --socket "$T/n$i.sock" \
    --data-dir "$T/n$i/data" --state-dir "$T/n$i/state" \
    --etcd-endpoints "$EPU" --node-name "n$i" --node-id-file "$T/n$i/node-id" \
    --underlay-address "198.18.61.1$i" --underlay-address "fd00:ff:61::1$i" \
    --node-lease-ttl 2s --ownership-horizon 6s --claim-timeout 3s --block-release-after 0 \
    --reserve-window 2s --forget-margin 1s --log-level info >>"$T/n$i.log" 2>&1 &
  DPID[$i]=$!
  local end=$((SECONDS + 20))
  until curl -sf --unix-socket "$T/n$i.sock" http://b/v1/health >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { tail -5 "$T/n$i.log"; return 1; }
    sleep 0.1
  done
}
for i in 1 2 3; do check "berthd n$i up in its node namespace" start_daemon "$i"; done

# --- helpers -----------------------------------------------------------------------------------------------
conf() { # i
  echo "{\"cniVersion\":\"1.0.0\",\"name\":\"$NET\",\"type\":\"berth-bridge\",\"bridge\":\"cbr0\",\"isGateway\":true,\"isDefaultGateway\":true,\"ipMasq\":true,\"ipam\":${IPAM%\}},\"dataDir\":\"$T/n$1/data\",\"daemonSocket\":\"$T/n$1.sock\"}}"
}
pod_cmd() { # ADD|DEL pod
  local i
  i="$(node_of "$2")"
  conf "$i" | ip netns exec "$(node_ns "$i")" env CNI_COMMAND="$1" CNI_CONTAINERID="$2" \
    CNI_NETNS="/run/netns/$(pod_ns "$2")" CNI_IFNAME=eth0 CNI_PATH="$repo/bin" \
    BERTH_RUN_DIR="$T/n$i/run" BERTH_NFT_TABLE="$NFT_TABLE" "$repo/bin/berth-bridge"
}
# The proto-190 routes a node's kernel has, and the ones etcd's block map says it should have.
kernel_routes() { # i
  { ip -n "$(node_ns "$1")" -4 route show proto 190; ip -n "$(node_ns "$1")" -6 route show proto 190; } |
    awk '{print $1 " via " $3}' | LC_ALL=C sort
}
expected_routes() { # i
  ip netns exec "$UL" node "$DRV" routes "$EPU" "$PREFIX" "n$1" "$UNDERLAYS" | LC_ALL=C sort
}
routes_agree() { # i: kernel == etcd, printed as a diff when not
  diff <(expected_routes "$1") <(kernel_routes "$1")
}
wait_for() { # seconds cmd…: polls every 0.1 s (the deadline in ms: $SECONDS counts whole seconds, so a
  # deadline in it ends anywhere between n-1 and n seconds later)
  local end=$(($(now_ms) + $1 * 1000))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(now_ms)" -lt $end ] || { "$@"; return 1; }
    sleep 0.1
  done
}
all_agree() { for i in "$@"; do routes_agree "$i" || return 1; done; }
blocks_of() { # i → this node's block keys
  etcd_ctl get --prefix "$PREFIX/nets/$NET/blocks/" | paste - - | grep "\"node\":\"n$1\"" | awk '{print $1}' | sort
}
block_claims() { # → every block key of the network and its value (the claim), tab-separated
  etcd_ctl get --prefix "$PREFIX/nets/$NET/blocks/" | paste - - | LC_ALL=C sort
}
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
storm() { # i out count prefix → driver allocations on node i, same IPAM config as the pods
  ip netns exec "$(node_ns "$1")" env NET="$NET" IPAM="$IPAM" node "$DRV" storm "$2" "$3" 20 "$4" "$T/n$1.sock:$T/n$1/data"
}
release() { # i in
  ip netns exec "$(node_ns "$1")" env NET="$NET" IPAM="$IPAM" node "$DRV" del "$2" "$T/n$1.sock:$T/n$1/data"
}
jsonf() { node -e "const o=JSON.parse(process.argv[1]); console.log(eval('o.'+process.argv[2]))" "$1" "$2"; }
berth_on() { local i=$1; shift; ip netns exec "$(node_ns "$i")" node "$repo/bin/berth" "$@" --socket "$T/n$i.sock"; }

# --- two dual-stack pods per node ----------------------------------------------------------------------------
add_pod() { # pod
  ip netns add "$(pod_ns "$1")"
  pod_cmd ADD "$1" >"$T/$1.json" || return 1
  V4[$1]="$(node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); console.log(r.ips.find(i=>!i.address.includes(":")).address)' "$T/$1.json")"
  V6[$1]="$(node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); console.log(r.ips.find(i=>i.address.includes(":")).address)' "$T/$1.json")"
  [[ "${V4[$1]}" == */32 && "${V6[$1]}" == */128 ]]
}
for p in $PODS; do check "pod $p ADD on n$(node_of "$p") (berth-bridge + berth-ipam via its berthd)" add_pod "$p"; done
for p in $PODS; do V4[$p]="${V4[$p]%/*}"; V6[$p]="${V6[$p]%/*}"; done
echo "     pods: $(for p in $PODS; do echo -n "$p=${V4[$p]},${V6[$p]} "; done)"
check "every node's proto-190 routes match etcd's block map (within 5 s)" wait_for 5 all_agree 1 2 3
echo "     n1 routes: $(kernel_routes 1 | paste -sd ';')"
check "each node has routes to both other nodes' blocks, both families" \
  bash -c "[ \"\$(ip -n $(node_ns 1) -4 route show proto 190 | grep -c 'via 198.18.61.1[23]')\" -ge 2 ] &&
           [ \"\$(ip -n $(node_ns 1) -6 route show proto 190 | grep -c 'via fd00:ff:61::1[23]')\" -ge 2 ]"

# --- every pod pings every other pod, both families; TTL: 63 on a node, 62 across nodes ---------------------
ping_all() {
  local bad=0 n=0 a b dst want got
  for a in $PODS; do
    for b in $PODS; do
      [ "$a" = "$b" ] && continue
      want=63
      [ "$(node_of "$a")" = "$(node_of "$b")" ] || want=62
      for dst in "${V4[$b]}" "${V6[$b]}"; do
        n=$((n + 1))
        got="$(ip netns exec "$(pod_ns "$a")" ping -c 1 -w 5 "$dst" 2>&1 | sed -n 's/.*ttl=\([0-9]*\).*/\1/p' | head -1)"
        if [ "$got" != "$want" ]; then
          echo "$a -> $dst: ttl=${got:-none} (want $want)"
          bad=$((bad + 1))
        fi
      done
    done
  done
  echo "$n pings, $bad wrong"
  [ "$bad" = 0 ] && [ "$n" = 60 ]
}
check "60 pings (6 pods, both families): all answered, TTL 63 on a node, 62 across nodes" ping_all
grep -q ', 0 wrong' "$tmp/last.out" && echo "     $(tail -1 "$tmp/last.out")"

# The receiving pod sees the sender's pod address (no NAT inside the pool); leaving the pool, the node's.
source_seen() { # from-ns to-ns address
  local fam=udp4 out pid
  [[ "$3" == *:* ]] && fam=udp6
  out="$T/echo.$RANDOM"
  ip netns exec "$2" node "$ECHO" serve 40915 "$fam" >"$out" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do grep -q up "$out" && break; sleep 0.1; done
  ip netns exec "$1" node "$ECHO" ask "$3" 40915
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
seen="$(source_seen "$(pod_ns p10)" "$(pod_ns p20)" "${V4[p20]}")"
check "IPv4 across nodes, no NAT: p20 on n2 sees p10's address ($seen = ${V4[p10]})" [ "$seen" = "${V4[p10]}" ]
seen="$(source_seen "$(pod_ns p11)" "$(pod_ns p31)" "${V6[p31]}")"
check "IPv6 across nodes, no NAT: p31 on n3 sees p11's address ($seen = ${V6[p11]})" [ "$seen" = "${V6[p11]}" ]
seen="$(source_seen "$(pod_ns p10)" "$(node_ns 2)" 198.18.61.12)"
check "leaving the pool is masqueraded: n2's underlay sees n1's address ($seen)" [ "$seen" = 198.18.61.11 ]
# The daemons release empty reserve blocks at once here (--block-release-after 0), so a route can be on its way
# out while the command looks (berthd has seen the release, the kernel route goes a moment later): it must
# agree within a few seconds, not at one instant.
for i in 1 2 3; do check "berth cluster routes on n$i: the kernel agrees (exit 0, within 5 s)" wait_for 5 berth_on "$i" cluster routes; done

# --- n2 releases a block: its route goes on n1 and n3 -------------------------------------------------------
s="$(storm 2 "$T/extra2.json" 150 x2)"
check "n2: 150 more allocations (past two blocks) succeeded" [ "$(jsonf "$s" ok)" = 150 ]
check "n1 and n3 route n2's new blocks (within 5 s)" wait_for 5 all_agree 1 2 3
before2="$(blocks_of 2)"
echo "     n2 owns $(echo "$before2" | wc -l) blocks: $(echo "$before2" | sed 's|.*/||' | paste -sd ' ')"
r="$(release 2 "$T/extra2.json")"
check "n2: the 150 extra allocations released ($r)" [ "$(jsonf "$r" failed)" = 0 ]
released_any() { [ "$(blocks_of 2 | wc -l)" -lt "$(echo "$before2" | wc -l)" ]; }
check "n2 released empty blocks in etcd (within 10 s)" wait_for 10 released_any
t_rel="$(now_ms)"
after2="$(blocks_of 2)"
gone="$(comm -23 <(echo "$before2") <(echo "$after2") | sed 's|.*/||; s|-\([0-9]*\)$|/\1|')"
echo "     released: $(echo "$gone" | paste -sd ' '); n2 keeps $(echo "$after2" | wc -l)"
no_route_to_released() {
  for i in 1 3; do
    for b in $gone; do kernel_routes "$i" | grep -q "^$b via" && return 1; done
  done
  return 0
}
check "routes of the released blocks gone on n1 and n3 (within 5 s)" wait_for 5 no_route_to_released
echo "     gone after $(($(now_ms) - t_rel)) ms (from seeing the release in etcd)"
check "n1, n2, n3 routes match etcd after the release" wait_for 5 all_agree 1 2 3

# --- n1's berthd restarted: reconciled, none duplicated, none lost -----------------------------------------
before1="$(kernel_routes 1)"
claims1="$(block_claims)"
# Lost: a route from before whose block kept the same claim all along (same value in etcd before the kill and
# now). A block released in the moment between the reading above and the kill (a node's reserve releases and
# claims in the background) may have had its route rightly removed, and may be claimed again just after, so
# "still claimed" is not enough. The kernel is read before etcd: a claim unchanged at the later read was there
# throughout, and so was its route's due.
lost_on_n1() {
  LC_ALL=C comm -23 <(echo "$before1" | awk '{print $1}' | LC_ALL=C sort) <(kernel_routes 1 | awk '{print $1}' | LC_ALL=C sort) |
    while read -r b; do
      k="$PREFIX/nets/$NET/blocks/${b/\//-}"
      was="$(echo "$claims1" | awk -F '\t' -v k="$k" '$1 == k {print $2}')"
      [ -n "$was" ] || continue
      # A failed read proves nothing: the route counts as lost rather than hidden.
      now="$(etcd_ctl get "$k" --print-value-only)" || { echo "$b"; continue; }
      [ "$now" = "$was" ] && echo "$b"
    done
}
kill_daemon 1
s="$(storm 3 "$T/extra3.json" 150 x3)"
check "while n1's berthd is down, n3 allocates past its blocks (150 ok)" [ "$(jsonf "$s" ok)" = 150 ]
check "n2 routes n3's new blocks" wait_for 5 all_agree 2
refuse "n1's kernel misses them while its berthd is down" routes_agree 1
kept_while_down() { [ -z "$(lost_on_n1)" ]; }
check "n1's routes from before stay in the kernel while its berthd is down" kept_while_down
t_up="$(now_ms)"
check "berthd n1 restarted" start_daemon 1
check "after the restart n1's routes match etcd (within 5 s)" wait_for 5 routes_agree 1
echo "     reconciled $(($(now_ms) - t_up)) ms after the restart began; n1 has $(kernel_routes 1 | wc -l) routes"
duplicates() { # i → destinations with more than one proto-190 route
  { ip -n "$(node_ns "$1")" -4 route show proto 190; ip -n "$(node_ns "$1")" -6 route show proto 190; } |
    awk '{print $1}' | sort | uniq -d
}
check "no route duplicated on n1 ($(duplicates 1 | wc -l) destinations twice)" [ -z "$(duplicates 1)" ]
# A block released while n1 was down had its route rightly removed at the restart (see lost_on_n1).
lost="$(lost_on_n1)"
check "no route lost on n1 (every route from before whose block kept its claim is there)" [ -z "$lost" ]
for b in $lost; do
  echo "     lost: $b; now: $(kernel_routes 1 | grep -F "$b " || echo none); etcd: $(etcd_ctl get "$PREFIX/nets/$NET/blocks/${b/\//-}" --print-value-only)"
done
# What n1's berthd did to its routes since the restart, when one was lost: the why is in there.
[ -z "$lost" ] || tac "$T/n1.log" | sed '/ listening /q' | tac | grep 'routes:' | tail -n 12 | sed 's/^/     n1 log: /'
check "berth cluster routes on n1 after the restart: the kernel agrees (within 5 s)" wait_for 5 berth_on 1 cluster routes
check "p10 (n1) still reaches p31 (n3) after the restart" ip netns exec "$(pod_ns p10)" ping -c 1 -w 5 "${V4[p31]}"

# --- n3 forgotten: its routes removed everywhere -----------------------------------------------------------
kill_daemon 3
forget_n3() { berth_on 1 node forget n3; }
check "berth node forget n3 accepted once n3 is absent past its horizon (within 30 s)" wait_for 30 forget_n3
check "n3 owns no block in etcd" [ -z "$(blocks_of 3)" ]
no_route_to_n3() { for i in 1 2; do kernel_routes "$i" | grep -q 'via \(198.18.61.13\|fd00:ff:61::13\)$' && return 1; done; return 0; }
check "n3's routes removed on n1 and n2 (within 5 s)" wait_for 5 no_route_to_n3
check "n1 and n2 routes match etcd after the forget" wait_for 5 all_agree 1 2
check "n1 → n2 still works after the forget (IPv6)" ip netns exec "$(pod_ns p11)" ping -c 1 -w 5 "${V6[p21]}"

# --- teardown, and nothing left -----------------------------------------------------------------------------
dels=0
for p in $PODS; do pod_cmd DEL "$p" >/dev/null 2>&1 && dels=$((dels + 1)); done
check "DEL of the 6 pods ($dels ok)" [ "$dels" = 6 ]
# Before the namespaces go (they take everything with them): what the DELs had to remove on each node.
nodes_clean() {
  local i n left f
  for i in 1 2 3; do
    n="$(node_ns "$i")"
    [ -z "$(ip -n "$n" -o link show master cbr0 2>/dev/null)" ] || { echo "n$i: a port left on cbr0"; return 1; }
    # A pod's lease (its container id is its name); the storms' allocations on n3 stay, as n3 was killed.
    for f in $(ls "$T/n$i/data/$NET" 2>/dev/null | grep -E '^[0-9a-f.:]+$'); do
      left="$(head -n 1 "$T/n$i/data/$NET/$f" | tr -d '\r')"
      [[ " $PODS " != *" $left "* ]] || { echo "n$i: $left's lease $f left"; return 1; }
    done
    ! ip netns exec "$n" nft list table inet "$NFT_TABLE" 2>/dev/null | grep -qE 'elements|198\.19\.64\.' ||
      { echo "n$i: an nft element left"; return 1; }
  done
}
check "no port on cbr0, pod lease or nft element left on any node after the DELs" nodes_clean
teardown
rm -rf "$tmp"
trap - EXIT
tmp="$(mktemp -d "/tmp/$P-cn-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
check "no namespace left" bash -c "! ip netns list | grep -q '^$P-'"
check "no link left in the host namespace" bash -c "! ip -o link | grep -q '$P'"
check "no proto-190 route to the pool in the host namespace" bash -c "! ip route show proto 190 | grep -q '198\.19\.64\.' && ! ip -6 route show proto 190 | grep -q 'fd00:b15:64:'"
check "no nft table left in the host namespace" bash -c "! nft list tables | grep -q '$NFT_TABLE'"

echo "cluster-net-test: $((SECONDS - t0)) s"
echo "$((checks - fails)) passed, $fails failed"
[ "$fails" = 0 ]
