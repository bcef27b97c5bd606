#!/usr/bin/env bash
# End-to-end test of berth's main job (root): pods are network namespaces attached to one bridge per
# network, half through `berth exec` and half through cnitool, exactly as a runtime would run the plugins.
# Checks traffic (pod<->pod, pod<->gateway; IPv4 and dual stack), CHECK, DEL twice, DEL after the netns is
# gone, GC of a forgotten pod, and that nothing is left (veths, nftables entries, leases, cache files);
# with berth's plugins also STATUS and GC of spec 1.1 (runtime DEL phase and the plugins' own GC).
# One line per check (ok/FAIL); exits non-zero on any failure.
#
#   env: BRIDGE_TYPE (default berth-bridge), IPAM_TYPE (default berth-ipam) — BRIDGE_TYPE=bridge
#        IPAM_TYPE=host-local runs the same test on Debian's reference plugins (/usr/lib/cni), and any mix
#        works (berth-bridge with host-local, bridge with berth-ipam);
#        IPMASQ (default true for berth-bridge, false for the reference bridge, which leaks its masquerade
#        rules when the netns is gone: containernetworking/plugins#810); CNI_VERSION (default 1.0.0: the
#        cnitool here is built on Debian's libcni 1.1.2, which cannot read 1.1.0 results);
#        CNITOOL (default /usr/local/bin/cnitool); PLUGIN_DIR (default bin/: where berth's plugins are);
#        BERTHD=private: the warm path. A berthd of this run's own (socket, run dir and state under the run's
#        temp dir, killed by PID on exit) serves every berth-bridge and berth-ipam call: the plugins are the
#        shims (PLUGIN_DIR defaults to native/shim/build/bin) and BERTH_SOCKET names that berthd's socket.
#        At the end the run checks, from berthd's /metrics, that it served the calls and sent none back.
# Everything it creates is named bt<pid>-… (bridges bt<pid>a/b/c) and removed on exit, also on failure.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BRIDGE_TYPE="${BRIDGE_TYPE:-berth-bridge}"
IPAM_TYPE="${IPAM_TYPE:-berth-ipam}"
CNI_VERSION="${CNI_VERSION:-1.0.0}"
CNITOOL="${CNITOOL:-/usr/local/bin/cnitool}"
if [ -z "${IPMASQ:-}" ]; then
  if [ "$BRIDGE_TYPE" = bridge ]; then IPMASQ=false; else IPMASQ=true; fi
fi

[ "$(id -u)" = 0 ] || { echo "netns-test.sh: must run as root" >&2; exit 1; }
for tool in ip nft jq ping; do
  command -v "$tool" >/dev/null || { echo "netns-test.sh: missing $tool (see scripts/ensure-deps.sh)" >&2; exit 1; }
done
# cnitool is built from ../shared/tools by scripts/ensure-deps.sh when that directory exists. Without it
# the test still runs, all pods through berth exec, and says so on a line of its own.
CNITOOL_TOOL=cnitool
if ! command -v "$CNITOOL" >/dev/null; then
  echo "SKIP cnitool not found at $CNITOOL: its half of the pods (and the cross-tool CHECK/DEL) go through berth exec"
  CNITOOL_TOOL=berth
fi
[ -f "$repo/dist/main.js" ] || { echo "netns-test.sh: build first (npm run build)" >&2; exit 1; }

P="bt$$"
tmp="$(mktemp -d "/tmp/$P-e2e.XXXXXX")"
# berth-bridge's lock files and attachment registry go under the run's temp dir, not /run/berth (the
# plugins get it through berth exec and cnitool, which both pass their environment on). The nftables table
# stays the default one: this run checks the real thing, and that the last DEL leaves no `berth` table.
# (Table setup/teardown lock under the run dir: do not run this beside other users of the `berth` table.)
export BERTH_RUN_DIR="$tmp/run"
berth_table_before="$(nft list tables 2>/dev/null | grep -cE '^table (inet|bridge) berth$')"
# One /24 of 198.19.0.0/16 and one /64 of fd00:e2e::/32 per run, so parallel runs never share a route.
X=$(( $$ % 250 + 1 ))
V4A="198.19.$X.0/26"
V4C="198.19.$X.64/26"
V4B="198.19.$X.128/25"
V6B="fd00:e2e:0:$X::/64"
ipfwd4="$(sysctl -n net.ipv4.ip_forward)"
ipfwd6="$(sysctl -n net.ipv6.conf.all.forwarding)"

export NETCONFPATH="$tmp/net.d"
berthd_pid=""
if [ "${BERTHD:-}" = private ]; then
  PLUGIN_DIR="${PLUGIN_DIR:-$repo/native/shim/build/bin}"
  [ -x "$PLUGIN_DIR/berth-bridge" ] || { echo "netns-test.sh: no shim in $PLUGIN_DIR (npm run build)" >&2; exit 1; }
  mkdir -m 0700 "$tmp/berthd"
  export BERTH_SOCKET="$tmp/berthd/berthd.sock"
  # Started directly (no subshell), so $! is berthd itself: cleanup kills exactly it.
  # Its own --data-dir: berthd reads it at start, and the host's /var/lib/cni/networks is not the test's.
  node "$repo/bin/berth" daemon --socket "$BERTH_SOCKET" --run-dir "$BERTH_RUN_DIR" \
    --data-dir "$tmp/berthd/leases" 2>"$tmp/berthd.log" &
  berthd_pid=$!
  for _ in $(seq 100); do
    curl -sf --unix-socket "$BERTH_SOCKET" http://berthd/v1/health >/dev/null 2>&1 && break
    kill -0 "$berthd_pid" 2>/dev/null || break
    sleep 0.1
  done
  curl -sf --unix-socket "$BERTH_SOCKET" http://berthd/v1/health >/dev/null 2>&1 ||
    { echo "netns-test.sh: berthd did not start:" >&2; cat "$tmp/berthd.log" >&2; kill "$berthd_pid" 2>/dev/null; rm -rf "$tmp"; exit 1; }
  echo "# warm path: berthd pid $berthd_pid on $BERTH_SOCKET serves the plugins (shims in $PLUGIN_DIR)"
fi
# PLUGIN_DIR: where berth-bridge and berth-ipam are found (default bin/, the Node launchers).
# scripts/shim-netns-test.sh passes native/shim/build/bin: the shims, falling back without a berthd.
export CNI_PATH="${PLUGIN_DIR:-$repo/bin}:/usr/lib/cni:/opt/cni/bin"
unset CNI_IFNAME CNI_ARGS CAP_ARGS BERTH_CACHE_DIR  # both tools must use the shared default cache
BERTH=(node "$repo/bin/berth" exec)
mkdir -p "$NETCONFPATH" "$tmp/ipam"

pods=()
nets=()

cleanup() {
  set +e
  # A DEL first: it releases leases and masquerade entries the kernel cleanup below cannot see.
  for pod in "${pods[@]}"; do
    local net="${pod%-*}"
    "${BERTH[@]}" del "$net" "/run/netns/$pod" >/dev/null 2>&1
    ip netns del "$pod" 2>/dev/null
  done
  for net in "${nets[@]}"; do
    rm -f /var/lib/cni/results/"$net"-* 2>/dev/null
  done
  for br in "${P}a" "${P}b" "${P}c"; do
    for l in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$l" 2>/dev/null
    done
    ip link del "$br" 2>/dev/null
  done
  sysctl -qw net.ipv4.ip_forward="$ipfwd4" net.ipv6.conf.all.forwarding="$ipfwd6" >/dev/null
  if [ -n "$berthd_pid" ]; then
    kill "$berthd_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$berthd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$berthd_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=lib/checks.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"

# Retried: an IPv6 gateway address may still be finishing DAD on the host side.
pingable() { # pod, address
  local i
  for i in 1 2 3 4 5; do
    ip netns exec "$1" ping -n -c 1 -W 1 "$2" && return 0
    sleep 0.5
  done
  return 1
}

write_conf() { # net, bridge, ranges-json[, cniVersion]
  local ipam
  ipam="$(jq -nc --arg t "$IPAM_TYPE" --arg d "$tmp/ipam" --argjson r "$3" '{type:$t, dataDir:$d, ranges:$r}')"
  # berth-ipam's daemon is this run's berthd, or none: never the host's /run/berth/berthd.sock (the default).
  if [ "$IPAM_TYPE" = berth-ipam ]; then
    ipam="$(jq -c --argjson s "$(if [ -n "$berthd_pid" ]; then jq -n --arg s "$BERTH_SOCKET" '$s'; else echo false; fi)" \
      '.daemonSocket = $s' <<<"$ipam")"
  fi
  jq -n --arg v "${4:-$CNI_VERSION}" --arg n "$1" --arg t "$BRIDGE_TYPE" --arg b "$2" --argjson m "$IPMASQ" --argjson ipam "$ipam" \
    '{cniVersion:$v, name:$n, plugins:[{type:$t, bridge:$b, isGateway:true, ipMasq:$m, ipam:$ipam}]}' \
    >"$NETCONFPATH/$1.conflist"
}

add_pod() { # tool, net, pod
  pods+=("$3")
  ip netns add "$3" || return 1
  if [ "$1" = berth ]; then
    "${BERTH[@]}" add "$2" "/run/netns/$3" >"$tmp/$3.json"
  else
    "$CNITOOL" add "$2" "/run/netns/$3" >"$tmp/$3.json"
  fi
}
exec_tool() { # tool, verb, net, pod
  if [ "$1" = berth ]; then "${BERTH[@]}" "$2" "$3" "/run/netns/$4"; else "$CNITOOL" "$2" "$3" "/run/netns/$4"; fi
}
other() { if [ "$1" = berth ]; then echo "$CNITOOL_TOOL"; else echo berth; fi; }
addr_of() { # pod, family (4|6): address without prefix
  local sel='contains(":") | not'
  [ "$2" = 6 ] && sel='contains(":")'
  jq -r ".ips[] | .address | select($sel) | split(\"/\")[0]" "$tmp/$1.json" | head -n 1
}
cidr_of() { jq -r ".ips[] | .address | select(startswith(\"$(addr_of "$1" "$2")/\"))" "$tmp/$1.json"; }
gw_of() {
  local sel='contains(":") | not'
  [ "$2" = 6 ] && sel='contains(":")'
  jq -r ".ips[] | select(.address | $sel) | .gateway // empty" "$tmp/$1.json" | head -n 1
}
host_veth_of() { # the result's host-side interface: no sandbox and not the bridge
  jq -r --arg br "$2" '.interfaces[] | select((.sandbox // "") == "" and .name != $br) | .name' "$tmp/$1.json" | head -n 1
}
addr_in_netns() { ip -n "$1" -j addr show dev eth0 | jq -e --arg a "$2" '[.[].addr_info[].local] | index($a) != null' >/dev/null; }
cache_file() { echo "/var/lib/cni/results/$1-$(id_of "$2")-eth0"; }
no_veth_on() { [ -z "$(ip -o link show master "$1" 2>/dev/null)" ] || { ip -o link show master "$1"; return 1; }; }
no_lease_files() { # net, addresses…: no file named after a released address
  local net="$1" a f; shift
  for a in "$@"; do
    f="$(find "$tmp/ipam/$net" -name "$a*" 2>/dev/null)"
    [ -z "$f" ] || { echo "left: $f"; return 1; }
  done
}
id_of() { echo "cnitool-$(printf %s "/run/netns/$1" | sha512sum | cut -c1-20)"; }
no_records_of() { # net, pods…: no file in the IPAM dir names or holds their container ids
  local net="$1" pod id hits; shift
  for pod in "$@"; do
    id="$(id_of "$pod")"
    hits="$(find "$tmp/ipam/$net" -name "*$id*" 2>/dev/null; grep -rlF -- "$id" "$tmp/ipam/$net" 2>/dev/null)"
    # berthd (BERTHD=private) keeps a released lease's inode as a spare under .berth/spare, stamped "no
    # lease" by a `{` as its first byte (src/ipam/daemon/spare-files.ts): the rest of the old bytes stay, but
    # it is no record. Every other file still counts.
    if [ -n "$berthd_pid" ] && [ -n "$hits" ]; then
      hits="$(while read -r f; do
        case "$f" in */.berth/spare/*) [ "$(head -c 1 "$f")" = "{" ] && continue ;; esac
        echo "$f"
      done <<<"$hits")"
    fi
    [ -z "$hits" ] || { echo "records of $pod ($id): $hits"; return 1; }
  done
}
# The positive twins of the two checks above, so "nothing left" cannot pass by looking in the wrong place.
lease_file_for() { [ -n "$(find "$tmp/ipam" -name "$1" 2>/dev/null)" ]; }
# Captured first: grep -q closing the pipe early would kill nft with SIGPIPE, a failure under pipefail.
in_nft() { local rules; rules="$(nft list ruleset)" && grep -qw -- "$1" <<<"$rules"; }
nft_clean() { # addresses…: none of them appears in the ruleset
  local rules a
  rules="$(nft list ruleset)" || { echo "nft list ruleset failed"; return 1; }
  for a in "$@"; do
    if grep -qw -- "$a" <<<"$rules"; then echo "still in nftables: $a"; return 1; fi
  done
}

echo "# netns-test: bridge=$BRIDGE_TYPE ipam=$IPAM_TYPE ipMasq=$IPMASQ cniVersion=$CNI_VERSION prefix=$P"

run_network() { # label, bridge, ranges-json, families
  local label="$1" br="$2" ranges="$3" families="$4"
  local net="$P-$label" tools=(berth berth "$CNITOOL_TOOL" "$CNITOOL_TOOL") i pod fam
  nets+=("$net")
  write_conf "$net" "$br" "$ranges"
  local ps=("$net-1" "$net-2" "$net-3" "$net-4")

  for i in 0 1 2 3; do
    check "[$label] ADD ${ps[$i]} via ${tools[$i]}" add_pod "${tools[$i]}" "$net" "${ps[$i]}"
  done
  local addrs=()
  for i in 0 1 2 3; do
    for fam in $families; do
      local a; a="$(addr_of "${ps[$i]}" "$fam")"
      addrs+=("$a")
      check "[$label] ${ps[$i]} has its IPv$fam address $a in its netns" addr_in_netns "${ps[$i]}" "$a"
      check "[$label] ${ps[$i]}'s IPv$fam lease is on disk" lease_file_for "$a"
      if [ "$IPMASQ" = true ]; then check "[$label] ${ps[$i]}'s IPv$fam address is in the masquerade set" in_nft "$a"; fi
      local gw; gw="$(gw_of "${ps[$i]}" "$fam")"
      check "[$label] ${ps[$i]} -> gateway $gw (IPv$fam)" pingable "${ps[$i]}" "$gw"
      local j=$(( (i + 1) % 4 ))
      local b; b="$(addr_of "${ps[$j]}" "$fam")"
      check "[$label] ${ps[$i]} (${tools[$i]}) -> ${ps[$j]} (${tools[$j]}) $b (IPv$fam)" pingable "${ps[$i]}" "$b"
    done
  done
  check "[$label] gateway -> ${ps[0]} (host to pod)" ping -n -c 1 -W 2 "$(addr_of "${ps[0]}" 4)"

  # CHECK through the tool that did not add the pod: the cache is shared.
  for i in 0 1 2 3; do
    check "[$label] CHECK ${ps[$i]} via $(other "${tools[$i]}")" exec_tool "$(other "${tools[$i]}")" check "$net" "${ps[$i]}"
  done
  check "[$label] remove ${ps[0]}'s container address" ip -n "${ps[0]}" addr del "$(cidr_of "${ps[0]}" 4)" dev eth0
  refuse "[$label] CHECK ${ps[0]} fails without its address" exec_tool berth check "$net" "${ps[0]}"
  local veth; veth="$(host_veth_of "${ps[1]}" "$br")"
  check "[$label] remove ${ps[1]}'s host veth $veth" ip link del "$veth"
  refuse "[$label] CHECK ${ps[1]} fails without its host veth" exec_tool "$CNITOOL_TOOL" check "$net" "${ps[1]}"

  check "[$label] delete ${ps[2]}'s netns before its DEL" ip netns del "${ps[2]}"
  for i in 0 1 2 3; do
    check "[$label] DEL ${ps[$i]} via ${tools[$i]}" exec_tool "${tools[$i]}" del "$net" "${ps[$i]}"
    check "[$label] DEL ${ps[$i]} again via $(other "${tools[$i]}")" exec_tool "$(other "${tools[$i]}")" del "$net" "${ps[$i]}"
    check "[$label] ${ps[$i]}'s cache file is gone" test ! -e "$(cache_file "$net" "${ps[$i]}")"
  done

  # A pod the runtime forgot: `berth exec gc` with no valid list DELs every cached attachment of the network,
  # with the netns recorded in the cache (added by berth exec: Debian's cnitool writes no netns there).
  local lost="$net-5"
  check "[$label] ADD $lost via berth" add_pod berth "$net" "$lost"
  addrs+=("$(addr_of "$lost" 4)")
  check "[$label] GC via berth exec DELs the forgotten $lost" "${BERTH[@]}" gc "$net" /run/netns/unused
  check "[$label] $lost's cache file is gone after GC" test ! -e "$(cache_file "$net" "$lost")"

  check "[$label] no veth left on $br" no_veth_on "$br"
  check "[$label] no lease left" no_lease_files "$net" "${addrs[@]}"
  check "[$label] no IPAM record of any pod left" no_records_of "$net" "${ps[@]}" "$lost"
  check "[$label] no nftables entry left for any pod address" nft_clean "${addrs[@]}"
  for pod in "${ps[@]}" "$lost"; do ip netns del "$pod" 2>/dev/null; done
}

# Spec 1.1 only (Debian's reference plugins stop at 1.0.0, and cnitool cannot read 1.1.0 results): STATUS,
# and GC both ways — phase 1 DELs a pod the runtime still has in its cache, phase 2 (the plugins' own GC)
# must clean up a pod whose cache entry is lost, and keep the pod listed as valid.
run_gc_network() {
  local label=gc br="${P}c" net="$P-gc" i
  nets+=("$net")
  write_conf "$net" "$br" "[[{\"subnet\":\"$V4C\"}]]" 1.1.0
  local ps=("$net-1" "$net-2" "$net-3")
  check "[$label] STATUS via berth exec" "${BERTH[@]}" status "$net" /run/netns/unused
  local addrs=()
  for i in 0 1 2; do
    check "[$label] ADD ${ps[$i]} via berth" add_pod berth "$net" "${ps[$i]}"
    addrs+=("$(addr_of "${ps[$i]}" 4)")
  done
  check "[$label] ${ps[2]}'s cache entry is lost" rm "$(cache_file "$net" "${ps[2]}")"
  local keep; keep="$(id_of "${ps[0]}")"
  check "[$label] GC with only ${ps[0]} valid" "${BERTH[@]}" gc "$net" /run/netns/unused --valid "$keep/eth0"
  check "[$label] ${ps[1]} (cached) was DELed: cache file gone" test ! -e "$(cache_file "$net" "${ps[1]}")"
  check "[$label] only ${ps[0]}'s veth is left on $br" test "$(ip -o link show master "$br" | wc -l)" = 1
  check "[$label] ${ps[1]} and ${ps[2]} (lost cache) have no lease left" no_lease_files "$net" "${addrs[1]}" "${addrs[2]}"
  check "[$label] ${ps[1]} and ${ps[2]} have no IPAM record left" no_records_of "$net" "${ps[1]}" "${ps[2]}"
  check "[$label] ${ps[1]} and ${ps[2]} have no nftables entry left" nft_clean "${addrs[1]}" "${addrs[2]}"
  check "[$label] ${ps[0]} kept its lease" lease_file_for "${addrs[0]}"
  if [ "$IPMASQ" = true ]; then check "[$label] ${ps[0]} kept its masquerade entry" in_nft "${addrs[0]}"; fi
  check "[$label] CHECK ${ps[0]} still passes" "${BERTH[@]}" check "$net" "/run/netns/${ps[0]}"
  check "[$label] ${ps[0]} -> gateway $(gw_of "${ps[0]}" 4)" pingable "${ps[0]}" "$(gw_of "${ps[0]}" 4)"
  check "[$label] GC again changes nothing" "${BERTH[@]}" gc "$net" /run/netns/unused --valid "$keep/eth0"
  check "[$label] ${ps[0]} still attached after the second GC" "${BERTH[@]}" check "$net" "/run/netns/${ps[0]}"
  check "[$label] DEL ${ps[0]}" "${BERTH[@]}" del "$net" "/run/netns/${ps[0]}"
  check "[$label] no veth left on $br" no_veth_on "$br"
  check "[$label] no lease left" no_lease_files "$net" "${addrs[@]}"
  check "[$label] no IPAM record left" no_records_of "$net" "${ps[@]}"
  check "[$label] no nftables entry left" nft_clean "${addrs[@]}"
  for i in 0 1 2; do ip netns del "${ps[$i]}" 2>/dev/null; done
}

run_network v4 "${P}a" "[[{\"subnet\":\"$V4A\"}]]" "4"
run_network ds "${P}b" "[[{\"subnet\":\"$V4B\"}],[{\"subnet\":\"$V6B\"}]]" "4 6"
if [ "$BRIDGE_TYPE" = berth-bridge ] && [ "$IPAM_TYPE" = berth-ipam ]; then
  run_gc_network
else
  echo "SKIP [gc] STATUS/GC need spec 1.1.0 plugins (berth-bridge + berth-ipam)"
fi

# After the last DEL of every network: nothing of berth-bridge's on the host.
no_berth_table() { local t; t="$(nft list tables)" || return 1; echo "$t"; ! grep -qE '^table (inet|bridge) berth$' <<<"$t"; }
no_registry_left() { ls -A "$BERTH_RUN_DIR/bridge" && [ -z "$(find "$BERTH_RUN_DIR" -name '*.attachments' 2>/dev/null)" ]; }
if [ "$BRIDGE_TYPE" = berth-bridge ]; then
  if [ "$berth_table_before" = 0 ]; then
    check "no berth nftables table left after the last DEL (nft list tables)" no_berth_table
  else
    echo "SKIP a berth nftables table existed before this run (someone else's): not checking that none is left"
  fi
  check "no attachment registry left under BERTH_RUN_DIR" no_registry_left
fi

if [ -n "$berthd_pid" ]; then
  # The warm path really carried the calls: berthd ran them (its counters), and sent none back (421).
  berthd_metrics() { curl -sf --unix-socket "$BERTH_SOCKET" http://berthd/metrics; }
  served() { # plugin, command
    berthd_metrics | awk -v l="berthd_plugin_calls_total{plugin=\"$1\",command=\"$2\"}" '$1 == l { n = $2 } END { print n + 0 }'
  }
  warm_served() { local n; n="$(served "$1" "$2")"; echo "$1 $2 served by berthd: $n"; [ "$n" -gt 0 ]; }
  check "berthd served the berth-bridge ADDs" warm_served berth-bridge ADD
  check "berthd served the berth-bridge DELs" warm_served berth-bridge DEL
  check "berthd served the berth-bridge CHECKs" warm_served berth-bridge CHECK
  check "berthd served the berth-bridge GCs" warm_served berth-bridge GC
  check "berthd served the berth-bridge STATUS calls" warm_served berth-bridge STATUS
  no_fallbacks() { ! berthd_metrics | grep -E '^berthd_plugin_fallbacks_total'; }
  check "berthd sent no call back to run standalone (no 421)" no_fallbacks
  check "berthd is still running" kill -0 "$berthd_pid"
fi

echo "# $((checks - fails))/$checks checks passed"
[ "$fails" = 0 ]
