#!/usr/bin/env bash
# End-to-end test through the path kubelet uses (root): a private containerd (Debian's 1.6, its own root,
# state, socket and config, CRI plugin on, `restrict_oom_score_adj = true` for runc on this VM) whose CNI
# bin dir is a temp install of berth (scripts/package.js + scripts/install.sh) plus Debian's `loopback`
# (containerd always runs it) and, for comparison, Debian's `bridge` + `host-local`. Pause and busybox
# images are built here (static binaries, OCI tarballs, `ctr images import`: no registry is reachable).
# test/cri/cri-pods.js then acts as kubelet over CRI v1: Status until NetworkReady, RunPodSandbox,
# PodSandboxStatus for the IP, a container per pod that checks its eth0 address and pings the gateway and
# another pod, StopPodSandbox, RemovePodSandbox — pods one after another, then 10 at once, for each mode:
#   reference   Debian's bridge + host-local (the baseline for the timings)
#   standalone  berth-bridge + berth-ipam on the lease files (ipam.daemonSocket false)
#   berthd      berth-bridge + berth-ipam served by a berthd (`berth daemon`) on a temp socket
# After each mode: no netns, veth, lease, cache file, nft/iptables entry or process left. Ends with a
# table of RunPodSandbox times (the call in which the runtime runs CNI ADD) per mode.
#
#   scripts/cri-test.sh                    all three modes, with a fresh package build
#   CRI_TEST_MODES="standalone" scripts/cri-test.sh
#   scripts/cri-test.sh --bin-dir DIR --conflist FILE [--berthd-socket PATH [--run-dir DIR]]
#       one mode, "installed": CNI bin dir and network as something else installed them (the node image
#       test, scripts/node-image-test.sh); loopback is added to a copy of DIR, FILE is used as is. With
#       --run-dir (the plugins' BERTH_RUN_DIR, the berthd's own --run-dir), every berth-bridge ADD must be
#       served in-process by that berthd (the warm path).
# Everything it creates is named bt<pid>…, uses 198.19.240-242.0/24, and is removed on exit, also on failure.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "cri-test.sh: must run as root" >&2; exit 1; }

given_bin="" given_conflist="" given_socket="" given_run_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) given_bin="$2"; shift ;;
    --conflist) given_conflist="$2"; shift ;;
    --berthd-socket) given_socket="$2"; shift ;;
    --run-dir) given_run_dir="$2"; shift ;;
    *) echo "cri-test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

ref_dir=/usr/lib/cni
for tool in containerd containerd-shim-runc-v2 runc ctr jq node gcc ip nft curl; do
  command -v "$tool" >/dev/null || { echo "cri-test.sh: missing $tool (see scripts/ensure-deps.sh)" >&2; exit 1; }
done
for f in /bin/busybox "$ref_dir/loopback" "$ref_dir/bridge" "$ref_dir/host-local"; do
  [ -x "$f" ] || { echo "cri-test.sh: missing $f (busybox-static, containernetworking-plugins)" >&2; exit 1; }
done

# Unique beyond the pid: test.sh runs each script in a PID namespace of its own (pids repeat between runs),
# and this prefix names cgroups, which all runs on the machine share.
P="bt$$$(printf %04x $((RANDOM % 65536)))"
export CRI_TEST_CGROUP_PARENT="/$P"
tmp="$(mktemp -d "/tmp/$P-cri.XXXXXX")"
sock="$tmp/containerd.sock"
bin="$tmp/cni/bin"
netd="$tmp/cni/net.d"
ctrd_pid=""
berthd_pid=""
ipfwd4="$(sysctl -n net.ipv4.ip_forward)"
nets=()
bridges=()
declare -A run_ms
# shellcheck source=lib/sea.sh
. "$repo/scripts/lib/sea.sh"

# shellcheck source=lib/checks.sh
. "$repo/scripts/lib/checks.sh"
# shellcheck source=lib/oci-image.sh
. "$repo/scripts/lib/oci-image.sh"
# shellcheck source=lib/nft-leftovers.sh
. "$repo/scripts/lib/nft-leftovers.sh"
# shellcheck source=lib/stop.sh
. "$repo/scripts/lib/stop.sh"
nft_before="$(nft_tables_now)"

ctr_() { ctr -a "$sock" -n k8s.io "$@"; }
our_pids() { # processes started for this run's containerd (shims name its socket), containerd itself aside
  local p
  for p in $(pgrep -f -- "$sock" 2>/dev/null); do [ "$p" != "$ctrd_pid" ] && [ "$p" != "$$" ] && echo "$p"; done
}

cleanup() {
  set +e
  # Whatever a failed run left: sandboxes through the runtime first (so CNI DEL runs), then by force.
  if [ -n "$ctrd_pid" ] && kill -0 "$ctrd_pid" 2>/dev/null; then
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      node "$repo/test/cri/cri-pods.js" --socket "$sock" --stop-only "$id" >/dev/null 2>&1
    done
    # What the runtime did not stop: killed through containerd, since killing a shim below would leave its
    # container's processes running (reparented), holding their namespaces.
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1; done
    stop_pid "$ctrd_pid"
  fi
  for p in $(our_pids); do kill -9 "$p" 2>/dev/null; done
  stop_pid "$berthd_pid"
  remove_cgroups "$P" # the pods' cgroups are /$P/<id> (cri-pods.js sets cgroup_parent)
  findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | while read -r m; do umount -l "$m"; done
  for f in "$tmp"/report-*.json; do
    [ -f "$f" ] || continue
    for ns in $(jq -r '.pods[].netns' "$f" 2>/dev/null); do
      [ -e "$ns" ] && { umount "$ns" 2>/dev/null; rm -f "$ns"; }
    done
  done
  for br in "${bridges[@]}"; do
    for l in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$l"; done
    ip link del "$br" 2>/dev/null
  done
  for net in "${nets[@]}"; do rm -f /var/lib/cni/results/"$net"-* 2>/dev/null; done
  sysctl -qw net.ipv4.ip_forward="$ipfwd4" >/dev/null
  remove_new_empty_nft_tables "$nft_before"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "# cri-test: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), dir $tmp"

# --- images: pause (static C) and busybox (busybox-static) ---------------------------------------------
mkdir -p "$tmp/pause/rootfs" "$tmp/busybox/rootfs/bin"
check "pause built (gcc -static)" pause_binary "$tmp/pause/rootfs/pause"
cp /bin/busybox "$tmp/busybox/rootfs/bin/busybox"
for a in sh ip ping cat sleep grep echo ls; do ln -s busybox "$tmp/busybox/rootfs/bin/$a"; done
check "pause image tarball" oci_image_tar "$tmp/pause/rootfs" berth.local/pause:1 '{"Entrypoint":["/pause"]}' "$tmp/pause.tar"
check "busybox image tarball" oci_image_tar "$tmp/busybox/rootfs" berth.local/busybox:1 \
  '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}' "$tmp/busybox.tar"

# --- the CNI bin dir --------------------------------------------------------------------------------
mkdir -p "$bin" "$netd"
if [ -n "$given_bin" ]; then
  cp -a "$given_bin"/. "$bin"/
else
  require_sea_fuse cri-test.sh
  if [ ! -f "$repo/dist/sea/entry.js" ] || [ ! -f "$repo/native/build/Release/berth_native.node" ]; then
    (cd "$repo" && npm run build >&2)
  fi
  check "berth built (scripts/package.js)" node "$repo/scripts/package.js" --out "$tmp/build"
  check "berth installed into the CNI bin dir (scripts/install.sh)" "$repo/scripts/install.sh" --from "$tmp/build" --prefix "$bin"
  cp "$ref_dir/bridge" "$ref_dir/host-local" "$bin/"
fi
cp "$ref_dir/loopback" "$bin/"

# --- containerd ----------------------------------------------------------------------------------------
cat >"$tmp/containerd.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "berth.local/pause:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # runc on this VM cannot lower oom_score_adj below the parent's: keep it at least containerd's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # runc's state in this run's dir, not under the host's /run/containerd/runc/k8s.io (shared with any
      # containerd of the host, and left behind by a killed run).
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$tmp/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$bin"
    conf_dir = "$netd"
    max_conf_num = 1
EOF
# The plugins inherit containerd's environment: berth's lock files and addon extraction go to this run,
# and the shims (berth-bridge, berth-ipam) ask this run's berthd socket, never the host's /run/berth (in
# the modes without berthd nobody listens there and they run berth standalone).
# A session of its own: a Ctrl-C to this script's process group leaves containerd up, so the cleanup can
# stop the pods through it (a killed containerd leaves them running, reparented).
BERTH_RUN_DIR="${given_run_dir:-$tmp/run}" BERTH_NATIVE_DIR="$tmp/native" BERTH_SOCKET="${given_socket:-$tmp/berthd/berthd.sock}" setsid containerd --config "$tmp/containerd.toml" \
  >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
up() { for _ in $(seq 1 100); do ctr -a "$sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
check "private containerd is up (pid $ctrd_pid, $sock)" up
[ "$fails" = 0 ] || { tail -n 30 "$tmp/containerd.log"; exit 1; }
check "pause image imported" ctr_ images import "$tmp/pause.tar"
check "busybox image imported" ctr_ images import "$tmp/busybox.tar"

# --- one mode: network config, pods, leftover checks --------------------------------------------------
# write_conf NAME CONFLIST_JSON: the only network in the conf dir. Written in place: containerd 1.6 reloads
# on the file's write event (a file renamed into the dir is not picked up); cri-pods.js waits until Status
# shows the network loaded.
write_conf() {
  rm -f "$netd"/*
  printf '%s\n' "$2" >"$netd/10-$1.conflist"
}

gone_checks() { # mode, network, bridge, lease dir, report files…
  local mode="$1" net="$2" br="$3" leases="$4"
  shift 4
  local ips=() netns=() veths=() f
  for f in "$@"; do
    mapfile -t -O "${#ips[@]}" ips < <(jq -r '.pods[].ip | select(. != "")' "$f")
    mapfile -t -O "${#netns[@]}" netns < <(jq -r '.pods[].netns | select(. != "")' "$f")
    mapfile -t -O "${#veths[@]}" veths < <(jq -r '.pods[].hostVeths[]' "$f")
  done
  no_netns() { local n; for n in "${netns[@]}"; do [ ! -e "$n" ] || { echo "still there: $n"; return 1; }
      ! ip netns list | grep -qw -- "${n##*/}" || { echo "still listed: ${n##*/}"; return 1; }; done; }
  no_veth() { local v; for v in "${veths[@]}"; do ! ip link show dev "$v" >/dev/null 2>&1 || { echo "still there: $v"; return 1; }; done
    [ -z "$(ip -o link show master "$br" 2>/dev/null)" ]; }
  no_lease() { ls -la "$leases" 2>&1; ! ls "$leases" 2>/dev/null | grep -E '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$'; }
  no_cache() { ! ls /var/lib/cni/results/"$net"-* 2>/dev/null; }
  no_fw() { local r x; r="$(nft list ruleset 2>/dev/null; iptables-save 2>/dev/null)"
    for x in "${ips[@]}"; do if grep -qw -- "$x" <<<"$r"; then echo "still in the firewall: $x"; return 1; fi; done; }
  no_procs() { local p; p="$(our_pids)"; [ -z "$p" ] || { ps -o pid,args -p "$(echo $p | tr ' ' ,)"; return 1; }
    ! pgrep -f -- "$bin/berth-" ; }
  check "[$mode] no pod netns left (${#netns[@]} checked)" no_netns
  check "[$mode] no host veth left (${#veths[@]} checked, none on $br)" no_veth
  check "[$mode] no lease file left in $leases" no_lease
  check "[$mode] no CNI cache file left (/var/lib/cni/results/$net-*)" no_cache
  check "[$mode] no nftables/iptables entry left for the ${#ips[@]} pod addresses" no_fw
  check "[$mode] no shim or plugin process left" no_procs
}

run_mode() { # mode, subnet third octet, kind (reference|standalone|berthd|installed)
  local mode="$1" octet="$2" kind="$3"
  local net="$P-$mode" br="${P}${mode:0:2}" subnet="198.19.$octet.0/24" gw="198.19.$octet.1"
  local leases="$tmp/leases-$mode" conflist socket=""
  nets+=("$net")
  bridges+=("$br")
  case "$kind" in
    reference)
      conflist="$(jq -n --arg n "$net" --arg b "$br" --arg d "$leases" --arg s "$subnet" --arg g "$gw" \
        '{cniVersion:"1.0.0", name:$n, plugins:[{type:"bridge", bridge:$b, isGateway:true, ipMasq:true,
          ipam:{type:"host-local", dataDir:$d, ranges:[[{subnet:$s, gateway:$g}]]}}]}')" ;;
    standalone | berthd)
      if [ "$kind" = berthd ]; then
        socket="$tmp/berthd/berthd.sock"
        mkdir -p -m 700 "$tmp/berthd"
        # --run-dir as the plugins' BERTH_RUN_DIR: berthd serves only calls for its own run dir (else 421,
        # and the shim runs berth standalone).
        BERTH_NATIVE_DIR="$tmp/native" "$bin/berth" daemon --socket "$socket" --data-dir "$leases" \
          --run-dir "$tmp/run" >"$tmp/berthd.log" 2>&1 &
        berthd_pid=$!
        healthy() { for _ in $(seq 1 100); do curl -sf --unix-socket "$socket" http://berthd/v1/health && return 0; sleep 0.1; done; return 1; }
        check "[$mode] berthd is up (pid $berthd_pid) and healthy on $socket" healthy
      fi
      conflist="$(jq -n --arg n "$net" --arg b "$br" --arg d "$leases" --arg s "$subnet" --arg g "$gw" \
        --argjson sock "$([ -n "$socket" ] && jq -n --arg s "$socket" '$s' || echo false)" \
        '{cniVersion:"1.0.0", name:$n, plugins:[{type:"berth-bridge", bridge:$b, isGateway:true, ipMasq:true,
          ipam:{type:"berth-ipam", dataDir:$d, daemonSocket:$sock, ranges:[[{subnet:$s, gateway:$g}]]}}]}')" ;;
    installed)
      net="$(jq -r .name "$given_conflist")"
      br="$(jq -r '.plugins[0].bridge' "$given_conflist")"
      gw="$(jq -r '.plugins[0].ipam.ranges[0][0].gateway' "$given_conflist")"
      subnet="$(jq -r '.plugins[0].ipam.ranges[0][0].subnet' "$given_conflist")"
      leases="$(jq -r '.plugins[0].ipam.dataDir' "$given_conflist")/$net"
      nets[-1]="$net"
      bridges[-1]="$br"
      conflist="$(cat "$given_conflist")" ;;
  esac
  [ "$kind" = installed ] || leases="$leases/$net"
  write_conf "$mode" "$conflist"
  echo "# [$mode] network $net on $br, $subnet"
  local reports=()
  local how
  for how in seq par; do
    local n=$seq_pods flag=()
    [ "$how" = par ] && { n=$par_pods; flag=(--parallel); }
    local r="$tmp/report-$mode-$how.json"
    node "$repo/test/cri/cri-pods.js" --socket "$sock" --network "$net" --gateway "$gw" --bridge "$br" \
      --image berth.local/busybox:1 --pods "$n" "${flag[@]}" --label "$mode-$how" --log-dir "$tmp/logs" \
      --report "$r" | tee "$tmp/cri-$mode-$how.out"
    local rc=${PIPESTATUS[0]}
    checks=$((checks + $(grep -cE '^(ok  |FAIL)' "$tmp/cri-$mode-$how.out")))
    fails=$((fails + $(grep -c '^FAIL' "$tmp/cri-$mode-$how.out")))
    [ "$rc" = 0 ] || [ "$(grep -c '^FAIL' "$tmp/cri-$mode-$how.out")" -gt 0 ] || report "[$mode] cri-pods.js exited $rc" 1
    [ -f "$r" ] && reports+=("$r") && run_ms["$mode-$how"]="$(jq -r '[.pods[].runMs] | sort | (if length == 0 then "-" else
      "\(.[(length / 2 | floor)] | round) \(add / length | round) \(max | round)" end)' "$r")"
  done
  # The berthd at socket $1 ran every pod's berth-bridge ADD in-process: its counter says exactly that many.
  ran_in_process() { local m; m="$(curl -sf --unix-socket "$1" http://berthd/metrics)" || return 1
    grep -E '^berthd_plugin_(calls|fallbacks)_total' <<<"$m"
    grep -F 'berthd_plugin_calls_total{plugin="berth-bridge",command="ADD"}' <<<"$m" |
      awk -v want=$((seq_pods + par_pods)) '{ print; if ($2 != want) exit 1 }' | grep -q . ; }
  if [ "$kind" = installed ] && [ -n "$given_socket" ] && [ -n "$given_run_dir" ]; then
    check "[$mode] the installed berthd ran the $((seq_pods + par_pods)) berth-bridge ADDs in-process (warm path)" \
      ran_in_process "$given_socket"
  fi
  if [ "$kind" = berthd ]; then
    served() { local m; m="$(curl -sf --unix-socket "$socket" http://berthd/metrics)" || return 1
      grep "berthd_allocations_total{network=\"$net\"}" <<<"$m" | awk -v want=$((seq_pods + par_pods)) '{print; if ($2 != want) exit 1}' | grep -q . ; }
    check "[$mode] berthd handed out the $((seq_pods + par_pods)) addresses (berthd_allocations_total)" served
    check "[$mode] berthd ran the $((seq_pods + par_pods)) berth-bridge ADDs in-process (warm path, berthd_plugin_calls_total)" \
      ran_in_process "$socket"
  fi
  gone_checks "$mode" "$net" "$br" "$leases" "${reports[@]}"
  if [ "$kind" = berthd ]; then
    stop_pid "$berthd_pid"
    berthd_pid=""
  fi
  rm -f "$netd"/*
}

seq_pods="${CRI_TEST_SEQ_PODS:-4}"
par_pods="${CRI_TEST_PAR_PODS:-10}"
if [ -n "$given_bin" ]; then
  modes=(installed)
else
  read -r -a modes <<<"${CRI_TEST_MODES:-reference standalone berthd}"
fi
octet=240
for mode in "${modes[@]}"; do
  case "$mode" in
    reference | standalone | berthd | installed) run_mode "$mode" "$octet" "$mode" ;;
    *) report "unknown mode $mode" 1 ;;
  esac
  octet=$((octet + 1))
done

check "containerd still running" kill -0 "$ctrd_pid"
stop_pid "$ctrd_pid"
ctrd_pid=""
no_procs_at_all() { local p; p="$(our_pids)"; [ -z "$p" ] || { ps -o pid,args -p "$(echo $p | tr ' ' ,)"; return 1; }; }
check "no process of this run left after containerd stopped" no_procs_at_all
check "the pods' cgroups (under /$P) empty and removed" remove_cgroups "$P"
# The reference's iptables leaves an empty `nat` table (removed here); berth's own tables must go with their
# last element, so they are not removed before the check.
remove_new_empty_nft_tables "$nft_before" nat
no_new_table() { local now; now="$(nft_tables_now)"; [ "$now" = "$nft_before" ] || { echo "before: $nft_before"; echo "now: $now"; return 1; }; }
check "no nftables table left that this run created" no_new_table

echo "# RunPodSandbox time per pod (ms: median mean max; includes the pause container; CNI ADD runs inside it)"
printf '#   %-12s %-22s %-22s\n' mode "one after another (${seq_pods})" "at once (${par_pods})"
for mode in "${modes[@]}"; do
  printf '#   %-12s %-22s %-22s\n' "$mode" "${run_ms[$mode-seq]:--}" "${run_ms[$mode-par]:--}"
done
[ "$fails" -eq 0 ] || grep -E 'level=(error|fatal)' "$tmp/containerd.log" | tail -n 8 | sed 's/^/# containerd: /'
echo "# cri-test: $checks checks, $fails failed"
[ "$fails" -eq 0 ]
