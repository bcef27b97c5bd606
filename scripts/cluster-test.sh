#!/usr/bin/env bash
# Cluster IPAM end to end (root): inside a private network namespace, a 3-member etcd on loopback and three
# berthd (n1 n2 n3: own data dir, socket, node name), then the faults of issue 14's acceptance list. Every
# assertion reads the lease files, cluster.json and etcd themselves (scripts/lib/cluster-driver.js check).
# Small TTL (3 s) and horizon (10 s) keep it to a couple of minutes. Everything it starts is killed by PID,
# the namespace and temp dir removed, also on failure. Prints one line per check and `N passed, N failed`.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "SKIP cluster-test.sh: needs root (network namespace)"; exit 77; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "SKIP cluster-test.sh: etcd/etcdctl missing (scripts/ensure-deps.sh installs etcd-server etcd-client)"; exit 77; }
[ -f "$repo/dist/main.js" ] || { echo "cluster-test.sh: build first (npm run build)" >&2; exit 1; }

P="bt$$"
NS="$P-ct"
T="$(mktemp -d "/tmp/$P-ct.XXXXXX")"
DRV="$repo/scripts/lib/cluster-driver.js"
PREFIX=/berth/v1
export NET=ctnet POOL=198.18.0.0/16
passed=0
failed=0
declare -A DPID
# n3 reaches etcd through 127.0.0.3 only, so it alone can be cut off with one nft rule.
ETCD_NS="$NS" ETCD_DIR="$T" ETCD_TOKEN="$P" ETCD_CLIENT_HOST=127.0.0.3
source "$repo/scripts/lib/etcd.sh"
EP="$ETCD_ENDPOINTS"
EP3="$(etcd_endpoints_on 127.0.0.3)"

ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
inns() { ip netns exec "$NS" "$@"; }

spid=""
cleanup() {
  # A storm still running (the script stopped in its middle): its driver is the subshell's child.
  if [ -n "$spid" ]; then
    # shellcheck disable=SC2046 # one pid per word
    kill -9 $(cat /proc/"$spid"/task/*/children 2>/dev/null) "$spid" 2>/dev/null
  fi
  for p in "${DPID[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  for p in "${DPID[@]}"; do wait "$p" 2>/dev/null; done
  etcd_kill_all
  ip netns del "$NS" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

ip netns add "$NS"
inns ip link set lo up
inns ip addr add 127.0.0.3/8 dev lo 2>/dev/null

start_daemon() { # n endpoints
  local n=$1
  mkdir -p "$T/$n/data"
  ip netns exec "$NS" node "$repo/bin/berth" daemon --socket "$T/$n.sock" --data-dir "$T/$n/data" \
    --etcd-endpoints "$2" --node-name "$n" --node-id-file "$T/$n/node-id" \
    --node-lease-ttl 3s --ownership-horizon 10s --claim-timeout 3s --block-release-after 0 --forget-margin 1s --reserve-window 5s \
    --log-level warn >>"$T/$n.log" 2>&1 &
  DPID[$n]=$!
  local end=$((SECONDS + 15))
  until inns curl -sf --unix-socket "$T/$n.sock" http://b/v1/health >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}
TARGETS="$T/n1.sock:$T/n1/data,$T/n2.sock:$T/n2/data,$T/n3.sock:$T/n3/data"
NODES="n1:$T/n1/data,n2:$T/n2/data,n3:$T/n3/data"
storm() { inns node "$DRV" storm "$@" "$TARGETS"; }
verify() { inns node "$DRV" check "$EP" "$PREFIX" "$NODES" "$@"; }
jsonf() { node -e "const o=JSON.parse(process.argv[1]); console.log(eval('o.'+process.argv[2]))" "$1" "$2"; }
metric() { # n name → sum over labels
  inns curl -s --unix-socket "$T/$1.sock" http://b/metrics | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$2} END {print s+0}'
}
blocks_of() { etcd_ctl get --prefix "$PREFIX/nets/$NET/blocks/" | paste - - | grep "\"node\":\"$1\"" | awk '{print $1}' | sort; }
berth() { local n=$1; shift; inns node "$repo/bin/berth" "$@" --socket "$T/$n.sock"; }

# 1. etcd and daemons
t0=$SECONDS
etcd_start_all new
check "3-member etcd healthy ($((SECONDS - t0)) s)" etcd_healthy 20
check "berthd n1 up" start_daemon n1 "$EP"
check "berthd n2 up" start_daemon n2 "$EP"
check "berthd n3 up (etcd via 127.0.0.3)" start_daemon n3 "$EP3"

# 2. storm: 10,000 ADDs at 200-way over 3 daemons + 100 real berth-ipam executions
s1="$(storm "$T/s1.json" 10000 200 s1)"
echo "     storm: $s1"
check "storm: 10000 ADDs succeeded" [ "$(jsonf "$s1" ok)" = 10000 ]
cni_ok=0
run_plugin() { # i
  local n=$((($1 % 3) + 1))
  local conf
  conf="$(node -e "console.log(JSON.stringify({cniVersion:'1.1.0',name:'$NET',type:'berth-ipam',ipam:{type:'berth-ipam',dataDir:'$T/n$n/data',daemonSocket:'$T/n$n.sock',ranges:[[{subnet:'$POOL'}]],cluster:{blockSize:26}}}))")"
  echo "$conf" | inns env CNI_COMMAND=ADD CNI_CONTAINERID="cni-$1" CNI_NETNS=/x CNI_IFNAME=eth0 CNI_PATH="$repo/bin" \
    "$repo/bin/berth-ipam" >"$T/cni-$1.out" 2>&1
}
export -f run_plugin inns
export T NS NET POOL repo
seq 0 99 | xargs -P 4 -I{} bash -c 'run_plugin {}' && cni_ok=$(grep -l '"ips"' "$T"/cni-*.out | wc -l)
check "100 berth-ipam executions succeeded ($cni_ok)" [ "$cni_ok" = 100 ]
v1="$(verify "$T/s1.json")"
echo "     files vs etcd: $v1"
check "10,100 lease files, disjoint, each in a block etcd gives its node, cluster.json = etcd" \
  [ "$(jsonf "$v1" files)" = 10100 -a "$(jsonf "$v1" problemCount)" = 0 ]
blocks=$(jsonf "$v1" blocks)
claims=$(( $(metric n1 berthd_cluster_block_claims_total) + $(metric n2 berthd_cluster_block_claims_total) + $(metric n3 berthd_cluster_block_claims_total) ))
waited=$(( $(metric n1 berthd_cluster_adds_waited_total) + $(metric n2 berthd_cluster_adds_waited_total) + $(metric n3 berthd_cluster_adds_waited_total) ))
rts=$(( $(metric n1 berthd_cluster_etcd_round_trips_total) + $(metric n2 berthd_cluster_etcd_round_trips_total) + $(metric n3 berthd_cluster_etcd_round_trips_total) ))
echo "     blocks $blocks (10100/63 = 161), claim results $claims, ADDs that waited $waited, etcd round trips $rts ($(node -e "console.log(($rts/10100).toFixed(4))") per ADD)"
check "claims ≈ allocations / block size (blocks $blocks ≤ 161 + 3 reserves of ≤ 16)" [ "$blocks" -le 209 ]
check "ADDs that waited for a claim are reported (berthd_cluster_adds_waited_total = $waited)" [ "$waited" -gt 0 ]

# 3. kill -9 n2 a third of the way into a storm, restart 2 s later; clients retry until it answers
before_n2="$(blocks_of n2)"
( RETRY_MS=15000 storm "$T/s2.json" 3000 200 s2 >"$T/s2.out" ) &
spid=$!
sleep 1.2
kill -9 "${DPID[n2]}"; wait "${DPID[n2]}" 2>/dev/null; unset "DPID[n2]"
sleep 2
check "berthd n2 restarted" start_daemon n2 "$EP"
wait $spid
spid=""
echo "     storm with n2 killed: $(cat "$T/s2.out")"
check "every ADD of the kill storm acknowledged" [ "$(jsonf "$(cat "$T/s2.out")" ok)" = 3000 ]
v2="$(verify "$T/s1.json" "$T/s2.json")"
echo "     files vs etcd: $v2"
check "after kill -9 of n2: no duplicate, no acknowledged lease lost" [ "$(jsonf "$v2" problemCount)" = 0 ]
after_n2="$(blocks_of n2)"
# A restarted daemon keeps the blocks its leases are in. An empty one may go at its first check
# (--block-release-after 0; the restarted daemon's reserve counts only the bursts it has seen itself), so
# only blocks that still hold n2's lease files must still be n2's. (Checked for all blocks, this failed once
# while the files-vs-etcd check just before it found every lease in a block of its node: a block released empty.)
with_leases_of_n2() { # block keys → those holding a lease file of n2
  node -e '
    const fs = require("fs");
    const [dir, ...keys] = process.argv.slice(1);
    const ip = (s) => s.split(".").reduce((n, o) => n * 256 + Number(o), 0);
    const leases = fs.readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).map(ip);
    for (const k of keys) {
      const [net, len] = k.slice(k.lastIndexOf("/") + 1).split("-");
      const base = ip(net);
      if (leases.some((a) => a >= base && a < base + 2 ** (32 - Number(len)))) console.log(k);
    }' "$T/n2/data/$NET" "$@"
}
gone_n2="$(comm -23 <(echo "$before_n2") <(echo "$after_n2"))"
echo "     n2 blocks before the kill $(echo "$before_n2" | grep -c .), not n2's after it $(echo "$gone_n2" | grep -c .)"
# shellcheck disable=SC2086 # one block key per word
check "n2's blocks from before the kill that hold its leases are still n2's" [ -z "$(with_leases_of_n2 $gone_n2)" ]

# 4. kill -9 the etcd leader during a storm, restart it 4 s later: 0 failed ADDs
leader=$(etcd_leader)
leader_pid="${ETCD_PID[$leader]:-}"
check "an etcd leader to kill (m$leader)" [ -n "$leader_pid" ]
( storm "$T/s3.json" 4000 200 s3 >"$T/s3.out" ) &
spid=$!
sleep 0.3
etcd_kill_member "$leader"
sleep 4
etcd_start_member "$leader" existing
wait $spid
spid=""
echo "     storm with leader m$leader killed: $(cat "$T/s3.out")"
check "etcd leader kill -9: the storm ran ($(jsonf "$(cat "$T/s3.out")" ok) ADDs)" [ "$(jsonf "$(cat "$T/s3.out")" ok)" -gt 0 ]
check "etcd leader kill -9: 0 failed ADDs" [ "$(jsonf "$(cat "$T/s3.out")" failed)" = 0 ]
check "etcd healthy again" etcd_healthy 20

# 5. all of etcd stopped for 10 s during a storm
etcd_kill_all
down_at=$SECONDS
check "all etcd members stopped" bash -c "! ip netns exec $NS env ETCDCTL_API=3 etcdctl --endpoints=$EP --command-timeout=1s endpoint health >/dev/null 2>&1"
( storm "$T/s4.json" 6000 100 s4 >"$T/s4.out" ) &
spid=$!
wait $spid
spid=""
s4="$(cat "$T/s4.out")"
echo "     storm with etcd down: $s4"
check "etcd down: ADDs inside owned blocks succeed ($(jsonf "$s4" ok))" [ "$(jsonf "$s4" ok)" -gt 0 ]
check "etcd down: the others fail with code 11 only" [ "$(jsonf "$s4" 'failed')" = "$(jsonf "$s4" 'codes["11"] ?? 0')" ]
check "etcd down: code 11 within the claim timeout (slowest failure $(jsonf "$s4" maxFailMs) ms ≤ 4000)" [ "$(jsonf "$s4" maxFailMs)" -le 4000 ]
msg="$(jsonf "$s4" sample)"
echo "     $msg"
check "etcd down: the message says why and since when" bash -c "grep -q 'etcd is unreachable (last contact [0-9]* s ago' <<<'$msg'"
dels="$(inns node "$DRV" del "$T/s4.json" "$TARGETS")"
check "etcd down: DELs succeed ($dels)" [ "$(jsonf "$dels" failed)" = 0 ]
sleep $((10 - (SECONDS - down_at) > 0 ? 10 - (SECONDS - down_at) : 0))
etcd_start_all existing
etcd_healthy 20
up_at=$SECONDS
s5="$(storm "$T/s5.json" 2000 100 s5)"
until [ "$(jsonf "$s5" failed)" = 0 ] || [ $((SECONDS - up_at)) -gt 10 ]; do
  inns node "$DRV" del "$T/s5.json" "$TARGETS" >/dev/null
  sleep 0.5
  s5="$(storm "$T/s5.json" 2000 100 s5)"
done
echo "     after restart: $s5 ($((SECONDS - up_at)) s after healthy)"
check "claims resume after the restart (all 2000 ADDs needing blocks succeed)" [ "$(jsonf "$s5" failed)" = 0 ]
v3="$(verify "$T/s1.json" "$T/s2.json" "$T/s3.json" "$T/s5.json")"
echo "     files vs etcd: $v3"
check "after the etcd outage: no duplicate, nothing acknowledged lost" [ "$(jsonf "$v3" problemCount)" = 0 ]

# 6. n3 cut off from etcd (nft drop of 127.0.0.3 inside the namespace)
inns nft add table ip "$P"
inns nft add chain ip "$P" out '{ type filter hook output priority 0; }'
inns nft add rule ip "$P" out ip daddr 127.0.0.3 tcp dport '{ 32179, 32279, 32379 }' drop
cut_at=$SECONDS
sleep 1
before_n3="$(blocks_of n3)"
sleep 6
r3="$(inns node "$DRV" storm "$T/s6.json" 20 1 s6 "$T/n3.sock:$T/n3/data")"
check "n3 cut off for 7 s (> 2 TTL) keeps serving from its blocks" [ "$(jsonf "$r3" ok)" = 20 ]
st="$(berth n1 cluster status --json)"
check "n1 reports n3 absent" bash -c "node -e 'const s=JSON.parse(process.argv[1]); process.exit(s.nodes.find(n=>n.node===\"n3\").alive?1:0)' '$st'"
out="$(berth n1 node forget n3 2>&1)"
echo "     $out"
check "forget n3 refused before its horizon" bash -c "grep -q 'forget is accepted after' <<<'$out'"
check "nobody reclaimed n3's blocks" [ "$before_n3" = "$(blocks_of n3)" ]
sleep $((12 - (SECONDS - cut_at) > 0 ? 12 - (SECONDS - cut_at) : 0))
f3="$(inns node "$DRV" storm "$T/s7.json" 1 1 s7 "$T/n3.sock:$T/n3/data")"
echo "     n3 past its horizon: $(jsonf "$f3" sample)"
check "n3 past its horizon fences itself: ADD code 11" [ "$(jsonf "$f3" 'codes["11"]')" = 1 ]
stc="$(inns curl -s --unix-socket "$T/n3.sock" -X POST http://b/v1/status -d "{\"env\":{\"CNI_CONTAINERID\":\"x\",\"CNI_NETNS\":\"/x\",\"CNI_IFNAME\":\"eth0\"},\"config\":{\"cniVersion\":\"1.1.0\",\"name\":\"$NET\",\"type\":\"berth-ipam\",\"ipam\":{\"type\":\"berth-ipam\",\"dataDir\":\"$T/n3/data\",\"ranges\":[[{\"subnet\":\"$POOL\"}]],\"cluster\":{}}}}")"
check "n3 fenced: STATUS 50" [ "$(jsonf "$stc" code)" = 50 ]
forgot=""
for _ in $(seq 1 20); do
  forgot="$(berth n1 node forget n3 2>&1)" && break
  sleep 1
done
echo "     $forgot"
check "forget n3 accepted after its horizon" grep -q 'forgotten' <<<"$forgot"
check "n3's blocks are free in etcd" [ -z "$(blocks_of n3)" ]
inns nft delete table ip "$P"

# 7. drain: DEL everything; empty blocks released (each node keeps one); berth cluster check clean
for f in s1 s2 s3 s5; do inns node "$DRV" del "$T/$f.json" "$TARGETS" >/dev/null; done
inns node "$DRV" del "$T/s6.json" "$T/n3.sock:$T/n3/data" >/dev/null
cni_del() { # i
  local n=$((($1 % 3) + 1))
  echo "{\"cniVersion\":\"1.1.0\",\"name\":\"$NET\",\"type\":\"berth-ipam\",\"ipam\":{\"type\":\"berth-ipam\",\"dataDir\":\"$T/n$n/data\",\"daemonSocket\":\"$T/n$n.sock\",\"ranges\":[[{\"subnet\":\"$POOL\"}]],\"cluster\":{}}}" |
    inns env CNI_COMMAND=DEL CNI_CONTAINERID="cni-$1" CNI_NETNS=/x CNI_IFNAME=eth0 CNI_PATH="$repo/bin" "$repo/bin/berth-ipam" >/dev/null 2>&1
}
export -f cni_del
# (xargs, not `wait`: a bare wait would also wait for the etcd members and daemons.)
seq 0 99 | xargs -P 4 -I{} bash -c 'cni_del {}'
sleep 4
check "drain: both nodes' network directories are there" test -d "$T/n1/data/$NET" -a -d "$T/n2/data/$NET"
left="$(ls "$T"/n1/data/$NET "$T"/n2/data/$NET | grep -c '^198\.')"
check "drain: no lease file left on n1/n2 ($left)" [ "$left" = 0 ]
check "drain: empty blocks released, n1 keeps 1 ($(blocks_of n1 | wc -l))" [ "$(blocks_of n1 | wc -l)" = 1 ]
check "drain: n2 keeps 1 ($(blocks_of n2 | wc -l))" [ "$(blocks_of n2 | wc -l)" = 1 ]
chk="$(berth n1 cluster check)"
echo "     $chk"
check "berth cluster check clean" grep -q ': clean' <<<"$chk"

echo "cluster-test: $((SECONDS - t0)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
