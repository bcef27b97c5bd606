#!/usr/bin/env bash
# Two more runtimes run a container on berth through the shim while berthd runs (root):
#   containerd  `ctr run --cni` (a private containerd; ctr reads only /opt/cni/bin and /etc/cni/net.d, so it
#               runs in a private mount namespace with tmpfs over those two paths — the host's stay untouched)
#   podman      the CNI backend with its own --cni-config-dir and plugin dir (CONTAINERS_CONF), own storage
# Each container checks its eth0 address and pings the gateway; berthd must have served the berth-bridge ADD
# and DEL in-process (berthd_plugin_calls_total), and nothing (lease, veth) is left. Names bt<pid>…,
# 198.19.244.0/24 (ctr) and 198.19.245.0/24 (podman); everything removed on exit.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "runtimes-test.sh: must run as root" >&2; exit 1; }
for tool in containerd ctr podman jq curl node unshare gcc; do
  command -v "$tool" >/dev/null || { echo "runtimes-test.sh: missing $tool" >&2; exit 1; }
done
# shellcheck source=lib/sea.sh
. "$repo/scripts/lib/sea.sh"
require_sea_fuse runtimes-test.sh

# Unique beyond the pid: test.sh runs each script in a PID namespace of its own (pids repeat between runs),
# and this prefix names cgroups, which all runs on the machine share.
P="bt$$$(printf %04x $((RANDOM % 65536)))"
tmp="$(mktemp -d "/tmp/$P-rt.XXXXXX")"
sock="$tmp/containerd.sock"
bsock="$tmp/berthd/berthd.sock"
ctrd_pid="" berthd_pid=""
# The directories of /opt/cni/bin and /etc/cni/net.d this run had to make for ctr (a host without them):
# removed in cleanup, deepest first.
made_dirs=()
podman_=(podman --root "$tmp/storage" --runroot "$tmp/runroot" --storage-driver vfs --cgroup-manager cgroupfs
  --events-backend file --tmpdir "$tmp/podman-tmp")
# Every podman command of this run, the cleanup's too: with the defaults, podman's CNI backend makes
# /etc/cni/net.d/cni.lock on the host.
pm() { CONTAINERS_CONF="$tmp/containers.conf" "${podman_[@]}" --network-backend cni --cni-config-dir "$tmp/net.d" "$@"; }
limits=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
# shellcheck source=lib/checks.sh
. "$repo/scripts/lib/checks.sh"
# shellcheck source=lib/stop.sh
. "$repo/scripts/lib/stop.sh"
# shellcheck source=lib/oci-image.sh
. "$repo/scripts/lib/oci-image.sh"

# podman's part of the cleanup, also run before the last check (it must touch nothing outside the run).
podman_gone() {
  pm rm -f -t 2 "$P-pod" >/dev/null 2>&1
  pm rmi -f berth.local/busybox:1 >/dev/null 2>&1
}
cleanup() {
  set +e
  podman_gone
  stop_pid "$ctrd_pid"
  stop_pid "$berthd_pid"
  # ctr's namespace $P is a cgroup of that name in every hierarchy: its container's goes, it stays.
  remove_cgroups "$P"
  for br in "${P}ct" "${P}pm"; do
    for l in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$l"; done
    ip link del "$br" 2>/dev/null
  done
  findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -f /var/lib/cni/results/"$P"-* 2>/dev/null
  for d in "${made_dirs[@]}"; do rmdir "$d"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$tmp/bin" "$tmp/net.d" "$tmp/busybox/rootfs/bin" "$tmp/podman-tmp" "$tmp/run" "$tmp/leases"
mkdir -p -m 700 "$tmp/berthd"

check "berth built (scripts/package.js)" node "$repo/scripts/package.js" --out "$tmp/build"
check "installed into a temp plugin dir (scripts/install.sh: berth + the shims)" \
  "$repo/scripts/install.sh" --from "$tmp/build" --prefix "$tmp/bin"
cp /usr/lib/cni/loopback "$tmp/bin/"
cp /bin/busybox "$tmp/busybox/rootfs/bin/busybox"
for a in sh ip ping grep sleep; do ln -s busybox "$tmp/busybox/rootfs/bin/$a"; done
check "busybox image tarball" oci_image_tar "$tmp/busybox/rootfs" berth.local/busybox:1 \
  '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}' "$tmp/busybox.tar"
export BERTH_SOCKET="$bsock" BERTH_RUN_DIR="$tmp/run" BERTH_NATIVE_DIR="$tmp/native"
"$tmp/bin/berth" daemon --socket "$bsock" --data-dir "$tmp/leases" --run-dir "$tmp/run" >"$tmp/berthd.log" 2>&1 &
berthd_pid=$!
healthy() { for _ in $(seq 1 100); do curl -sf --unix-socket "$bsock" http://b/v1/health && return 0; sleep 0.1; done; return 1; }
check "berthd is up (pid $berthd_pid)" healthy
conflist() { # name bridge octet
  jq -n --arg n "$1" --arg b "$2" --arg s "198.19.$3.0/24" --arg g "198.19.$3.1" --arg d "$tmp/leases" \
    --arg sock "$bsock" '{cniVersion:"1.0.0", name:$n, plugins:[{type:"berth-bridge", bridge:$b, isGateway:true,
    ipMasq:true, ipam:{type:"berth-ipam", dataDir:$d, daemonSocket:$sock, ranges:[[{subnet:$s, gateway:$g}]]}}]}'
}
calls() { curl -sf --unix-socket "$bsock" http://b/metrics | grep -F "berthd_plugin_calls_total{plugin=\"berth-bridge\",command=\"$1\"}" | awk '{print $2}'; }
in_pod='ip -4 -o addr show dev eth0 | grep -q "inet $0" && ping -c 1 -W 5 $1 >/dev/null && echo reached'
leases_gone() { ! ls "$tmp/leases/$1" 2>/dev/null | grep -E '^[0-9.]+$'; }

# --- containerd: ctr run --cni --------------------------------------------------------------------------
cat >"$tmp/containerd.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
EOF
containerd --config "$tmp/containerd.toml" >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
up() { for _ in $(seq 1 100); do ctr -a "$sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
check "private containerd is up (pid $ctrd_pid)" up
check "busybox imported" ctr -a "$sock" -n "$P" images import "$tmp/busybox.tar"
conflist "$P-ctr" "${P}ct" 244 >"$tmp/ctr.conflist"
adds0="$(calls ADD)" dels0="$(calls DEL)"
# ctr reads /opt/cni/bin and /etc/cni/net.d and nothing else; tmpfs goes over /opt (or deeper) and over
# /etc/cni/net.d below, so those must exist. A host without them gets them for the run only.
for d in /opt /etc/cni /etc/cni/net.d; do [ -d "$d" ] || { mkdir "$d" && made_dirs=("$d" "${made_dirs[@]}"); }; done
etc_before="$(ls -A /etc/cni/net.d)"
ctr_run() {
  unshare -m --propagation private bash -c '
    set -e
    # tmpfs on the deepest of /opt/cni/bin, /opt/cni, /opt that exists (nothing else is made on the host)
    for d in /opt/cni/bin /opt/cni /opt; do [ -d "$d" ] && { mount -t tmpfs tmpfs "$d"; break; }; done
    mkdir -p /opt/cni/bin /etc/cni/net.d && mount -t tmpfs tmpfs /etc/cni/net.d
    cp -a "$1"/. /opt/cni/bin/ && cp "$2" /etc/cni/net.d/10-berth.conflist
    ctr -a "$3" -n "$4" run --rm --cni --runc-root "$6" berth.local/busybox:1 "$4-c" sh -c "$5" 198.19.244.2 198.19.244.1
  ' _ "$tmp/bin" "$tmp/ctr.conflist" "$sock" "$P" "$in_pod" "$tmp/runc"
}
check "ctr run --cni: the container has 198.19.244.2 on eth0 and pings the gateway" ctr_run
served() { local a d; a="$(calls ADD)" d="$(calls DEL)"; echo "ADD ${adds0:-0}->$a DEL ${dels0:-0}->$d"
  [ "${a:-0}" -gt "${adds0:-0}" ] && [ "${d:-0}" -gt "${dels0:-0}" ]; }
check "berthd ran ctr's berth-bridge ADD and DEL in-process (warm path)" served
check "ctr's DEL released the lease" leases_gone "$P-ctr"
stop_pid "$ctrd_pid"; ctrd_pid=""

# --- podman, CNI backend ------------------------------------------------------------------------------------
conflist "$P-pm" "${P}pm" 245 >"$tmp/net.d/10-berth.conflist"
# conmon_env_vars: when the container exits, conmon starts `podman container cleanup` on its own, with conmon's
# environment rather than the caller's; that cleanup may win the race to run the CNI DEL, so it must find
# the same berthd (without these it would look for /run/berth/berthd.sock and run the plugin standalone).
cat >"$tmp/containers.conf" <<EOF
[engine]
conmon_env_vars = ["PATH=$PATH", "BERTH_SOCKET=$bsock", "BERTH_RUN_DIR=$tmp/run", "BERTH_NATIVE_DIR=$tmp/native"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$tmp/bin"]
network_config_dir = "$tmp/net.d"
EOF
check "busybox loaded into podman" pm load -i "$tmp/busybox.tar"
adds0="$(calls ADD)" dels0="$(calls DEL)"
# Started detached and then killed: the DEL is run by the cleanup that conmon starts when the container
# exits (as for any container that ends by itself), with conmon_env_vars as its environment.
podman_run() {
  pm run -d "${limits[@]}" --name "$P-pod" --network "$P-pm" berth.local/busybox:1 sleep 600 >/dev/null &&
    pm exec "$P-pod" sh -c "$in_pod" 198.19.245.2 198.19.245.1 &&
    pm kill "$P-pod" >/dev/null
}
released_by_cleanup() { for _ in $(seq 1 100); do leases_gone "$P-pm" >/dev/null && return 0; sleep 0.1; done; return 1; }
check "podman run --network (CNI backend): the container has 198.19.245.2 on eth0 and pings the gateway" podman_run
check "the container's exit released its lease (conmon's cleanup ran the DEL)" released_by_cleanup
check "berthd ran podman's berth-bridge ADD and DEL in-process (warm path)" served
check "podman rm after the cleanup" pm rm -f -t 0 "$P-pod"

nothing_left() {
  local br
  for br in "${P}ct" "${P}pm"; do [ -z "$(ip -o link show master "$br" 2>/dev/null)" ] || { echo "veth left on $br"; return 1; }; done
  ! ls /var/lib/cni/results/"$P"-* 2>/dev/null
}
check "no veth left on either bridge, no result cache file of these networks" nothing_left
podman_gone
etc_untouched() { local now; now="$(ls -A /etc/cni/net.d)"; [ "$now" = "$etc_before" ] || { echo "was: $etc_before now: $now"; return 1; }; }
check "the host's /etc/cni/net.d as before (ctr and podman had their own)" etc_untouched
stop_pid "$ctrd_pid"
check "ctr's cgroups of namespace $P removed once containerd is gone (empty)" remove_cgroups "$P"
echo "# runtimes-test: $checks checks, $fails failed"
[ "$fails" -eq 0 ]
