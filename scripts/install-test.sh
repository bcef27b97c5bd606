#!/usr/bin/env bash
# End-to-end test of the single executable as an operator installs it (root): builds it twice
# (scripts/package.js into temp dirs), installs it into a temp prefix with scripts/install.sh, and runs
# the installed berth-bridge/berth-ipam with node out of reach (env -i, PATH = a temp dir of symlinks to
# ip, nft, ping, sh and cnitool only; `command -v node` must fail there):
#   VERSION and --version; two pods ADDed through cnitool, pinging each other; a second install changes
#   nothing; an install of a new build while a plugin is blocked on stdin (from a fifo) replaces the
#   files and the blocked plugin still completes its ADD; the addons are extracted to a private dir and a
#   world-writable or foreign-owned dir is refused; DEL through cnitool, nothing left; --uninstall.
# One line per check (ok/FAIL); exits non-zero on any failure. Everything is named bt<pid>…, uses
# 198.19.200.0/24, and is removed on exit, also on failure.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CNITOOL="${CNITOOL:-/usr/local/bin/cnitool}"
# shellcheck source=lib/sea.sh
. "$repo/scripts/lib/sea.sh"

[ "$(id -u)" = 0 ] || { echo "install-test.sh: must run as root" >&2; exit 1; }
for tool in ip nft jq ping node "$CNITOOL"; do
  command -v "$tool" >/dev/null || { echo "install-test.sh: missing $tool (see scripts/ensure-deps.sh)" >&2; exit 1; }
done
require_sea_fuse install-test.sh

P="bt$$"
tmp="$(mktemp -d "/tmp/$P-install.XXXXXX")"
# berth-bridge's lock files and attachment registry under the run's temp dir, not /run/berth (passed on
# explicitly below: the plugins run under env -i). The nftables table stays the default `berth`.
export BERTH_RUN_DIR="$tmp/run"
berth_table_before="$(nft list tables 2>/dev/null | grep -cE '^table (inet|bridge) berth$')"
prefix="$tmp/opt/cni/bin"
net="$P-inst"
br="${P}br"
pods=("$P-a" "$P-b" "$P-c")
ipfwd4="$(sysctl -n net.ipv4.ip_forward)"
plugin_pid=""
daemon_pid=""

cleanup() {
  set +e
  [ -n "$plugin_pid" ] && kill "$plugin_pid" 2>/dev/null
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
  for pod in "${pods[@]}"; do
    if [ -x "$prefix/berth-bridge" ] && [ -e "/run/netns/$pod" ]; then
      pod_env DEL "$pod" "$prefix/berth-bridge" <"$tmp/conf.json" >/dev/null 2>&1
    fi
    ip netns del "$pod" 2>/dev/null
  done
  for l in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$l" 2>/dev/null
  done
  ip link del "$br" 2>/dev/null
  rm -f /var/lib/cni/results/"$net"-* 2>/dev/null
  sysctl -qw net.ipv4.ip_forward="$ipfwd4" >/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=lib/checks.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/checks.sh"

# The world the installed executables see: no node anywhere on PATH.
tools="$tmp/tools"
mkdir -p "$tools"
for t in ip nft ping sh; do ln -s "$(command -v "$t")" "$tools/$t"; done
ln -s "$CNITOOL" "$tools/cnitool"
native="$tmp/native" # BERTH_NATIVE_DIR: private to this run (the default is /var/lib/berth/native)
# No berthd at BERTH_SOCKET: the shims (berth-bridge, berth-ipam) fall back to the installed berth.
nosock="$tmp/no-berthd.sock"
bare() { env -i PATH="$tools" BERTH_NATIVE_DIR="$native" BERTH_RUN_DIR="$BERTH_RUN_DIR" BERTH_SOCKET="$nosock" "$@"; }
cni() { bare NETCONFPATH="$tmp/net.d" CNI_PATH="$prefix" cnitool "$@"; }
pod_env() { # command, pod, executable: run a plugin directly, as a runtime does
  bare CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$2" CNI_IFNAME=eth0 CNI_PATH="$prefix" "$3"
}

echo "# install-test: prefix=$prefix network=$net bridge=$br"

# --- build -------------------------------------------------------------------------------------------
if [ ! -f "$repo/dist/sea/entry.js" ] || [ ! -f "$repo/native/build/Release/berth_native.node" ]; then
  (cd "$repo" && npm run build >&2)
fi
# The commit the builds should name (others may commit to a shared tree meanwhile: either end is fine).
commit_before="$(git -C "$repo" rev-parse --short=12 HEAD)"
check "package build 1 (scripts/package.js)" node "$repo/scripts/package.js" --out "$tmp/build1"
check "package build 2" node "$repo/scripts/package.js" --out "$tmp/build2"
[ -x "$tmp/build1/berth" ] && [ -x "$tmp/build2/berth" ] || { echo "FAIL no executable built: stopping"; exit 1; }
check "the two builds differ (build time is baked in)" bash -c "! cmp -s '$tmp/build1/berth' '$tmp/build2/berth'"

# --- first install ------------------------------------------------------------------------------------
install_args=(--prefix "$prefix" --conf --conf-dir "$tmp/etc/cni/net.d" --with-systemd --systemd-dir "$tmp/etc/systemd/system")
"$repo/scripts/install.sh" --from "$tmp/build1" "${install_args[@]}" >"$tmp/install1.out" 2>&1
status=$?
cp "$tmp/install1.out" "$tmp/last.out"
report "install.sh into a fresh prefix" "$status"
sed 's/^/     : /' "$tmp/install1.out"
check "berth installed, byte for byte" cmp "$tmp/build1/berth" "$prefix/berth"
check "berth-bridge is berth-shim, byte for byte" cmp "$tmp/build1/berth-shim" "$prefix/berth-bridge"
check "berth-ipam is a hard link to berth-bridge" test "$prefix/berth-ipam" -ef "$prefix/berth-bridge"
check "the shim is linked statically or against libc only" bash -c "! ldd '$prefix/berth-bridge' 2>/dev/null | grep -v -E 'linux-vdso|libc\.so|ld-linux|not a dynamic' | grep -q ."

check "the example conflist is installed" cmp "$repo/conf/10-berth-ipv4.conflist" "$tmp/etc/cni/net.d/10-berth-ipv4.conflist"
for unit in berthd.service berthd.socket; do
  if [ -f "$repo/deploy/systemd/$unit" ]; then
    check "$unit installed" test -f "$tmp/etc/systemd/system/$unit"
    check "$unit installed with its /opt/cni/bin/ paths pointing into the prefix" \
      diff <(sed "s#/opt/cni/bin/#$prefix/#g" "$repo/deploy/systemd/$unit") "$tmp/etc/systemd/system/$unit"
  else
    check "$unit absent from deploy/systemd/: install.sh says it skipped it" grep -q "skipped.*$unit" "$tmp/install1.out"
  fi
done

# --- second install: nothing changes ------------------------------------------------------------------
snapshot() { find "$tmp/opt" "$tmp/etc" -printf '%p %i %s %m %T@\n' | sort; }
snapshot >"$tmp/before.txt"
"$repo/scripts/install.sh" --from "$tmp/build1" "${install_args[@]}" >"$tmp/install2.out" 2>&1
status=$?
cp "$tmp/install2.out" "$tmp/last.out"
report "install.sh again (same build)" "$status"
check "second install says nothing to do" grep -q "nothing to do" "$tmp/install2.out"
check "second install installed or linked nothing" bash -c "! grep -Eq 'installed |linked ' '$tmp/install2.out'"
snapshot >"$tmp/after.txt"
check "second install left every file as it was (inode, size, mode, mtime)" diff "$tmp/before.txt" "$tmp/after.txt"

# --- no node ------------------------------------------------------------------------------------------
refuse "node is not on the test PATH (command -v node fails)" env -i PATH="$tools" sh -c 'command -v node'
version="$(node -p "require('$repo/package.json').version")"
commit="$(git -C "$repo" rev-parse --short=12 HEAD)"
reports_build() {
  local out
  out="$(env -i PATH="$tools" "$prefix/berth" --version)" && echo "$out" &&
    grep -Eq "berth $version \(build ($commit_before|$commit)" <<<"$out" && grep -q 'single executable' <<<"$out" &&
    grep -q 'code cache accepted' <<<"$out"
}
check "berth --version reports version $version, build $commit, code cache accepted" reports_build
for exe in berth-bridge berth-ipam; do
  check "$exe answers VERSION without node" \
    bash -c "env -i PATH='$tools' BERTH_SOCKET='$nosock' CNI_COMMAND=VERSION '$prefix/$exe' </dev/null | jq -e '.supportedVersions | index(\"1.1.0\") and index(\"0.1.0\")'"
done

# --- end to end through cnitool ----------------------------------------------------------------------
mkdir -p "$tmp/net.d"
jq -n --arg n "$net" --arg b "$br" --arg d "$tmp/ipam" \
  '{cniVersion:"1.0.0", name:$n, type:"berth-bridge", bridge:$b, isGateway:true, ipMasq:true,
    ipam:{type:"berth-ipam", dataDir:$d, daemonSocket:false, ranges:[[{subnet:"198.19.200.0/24"}]]}}' >"$tmp/conf.json"
jq '{cniVersion, name, plugins:[del(.cniVersion, .name)]}' "$tmp/conf.json" >"$tmp/net.d/$net.conflist"

addr_of() { jq -r '.ips[0].address | split("/")[0]' "$tmp/$1.json"; }
pingable() { # pod, address
  local i
  for i in 1 2 3 4 5; do ip netns exec "$1" ping -n -c 1 -W 1 "$2" && return 0; sleep 0.5; done
  return 1
}
add_pod() { cni add "$net" "/run/netns/$1" >"$tmp/$1.json"; }
for pod in "$P-a" "$P-b"; do
  ip netns add "$pod"
  check "cnitool add $pod (installed berth-bridge + berth-ipam)" add_pod "$pod"
done
a="$(addr_of "$P-a")"
b="$(addr_of "$P-b")"
check "$P-a got $a in 198.19.200.0/24 on eth0" bash -c "[[ '$a' == 198.19.200.* ]] && ip -n '$P-a' -br addr show dev eth0 | grep -qw '$a'"
check "$P-b got $b on eth0" bash -c "[[ '$b' == 198.19.200.* ]] && ip -n '$P-b' -br addr show dev eth0 | grep -qw '$b'"
check "ping $P-a -> $P-b ($b)" pingable "$P-a" "$b"
check "ping $P-b -> $P-a ($a)" pingable "$P-b" "$a"
check "cnitool check $P-a" cni check "$net" "/run/netns/$P-a"
check "addons extracted into a 0700 dir" bash -c "[ \"\$(stat -c %a '$native')\" = 700 ]"
check "two content-addressed addons, mode 0500, nothing else" \
  bash -c "ls -A '$native' && [ \$(ls -A '$native' | wc -l) = 2 ] && for f in '$native'/*; do [[ \$(basename \"\$f\") =~ ^[0-9a-f]{64}\\.node\$ ]] && [ \"\$(stat -c %a \"\$f\")\" = 500 ] && [ \"\$(sha256sum <\"\$f\" | cut -c1-64).node\" = \"\$(basename \"\$f\")\" ] || exit 1; done"

# --- install a new build while a plugin is executing --------------------------------------------------
ip netns add "$P-c"
mkfifo "$tmp/stdin.fifo"
exec 3<>"$tmp/stdin.fifo" # a writer exists, so the plugin's open of the fifo does not block; its read does
# Started by env directly (not through a function, which would fork a subshell), so $! is the plugin;
# 3>&- keeps the fifo's writer out of the plugin, or it would never see the end of its stdin.
env -i PATH="$tools" BERTH_NATIVE_DIR="$native" BERTH_RUN_DIR="$BERTH_RUN_DIR" BERTH_SOCKET="$nosock" CNI_COMMAND=ADD CNI_CONTAINERID="$P-c" CNI_NETNS="/run/netns/$P-c" \
  CNI_IFNAME=eth0 CNI_PATH="$prefix" "$prefix/berth-bridge" <"$tmp/stdin.fifo" >"$tmp/$P-c.json" 2>"$tmp/$P-c.err" 3>&- &
plugin_pid=$!
blocked_on_stdin() {
  local i
  for i in $(seq 1 100); do
    [ "$(readlink "/proc/$plugin_pid/exe")" = "$prefix/berth-bridge" ] && [[ "$(cat "/proc/$plugin_pid/wchan" 2>/dev/null)" == *pipe_read ]] && return 0
    sleep 0.1
  done
  echo "exe=$(readlink "/proc/$plugin_pid/exe") wchan=$(cat "/proc/$plugin_pid/wchan" 2>/dev/null)"
  return 1
}
check "berth-bridge ADD started and blocked reading stdin" blocked_on_stdin
# A berthd from this prefix (not run by systemd: its units here are a test's): install.sh names it.
mkdir -p -m 700 "$tmp/berthd"
env -i PATH="$tools" BERTH_NATIVE_DIR="$native" "$prefix/berth" daemon --socket "$tmp/berthd/berthd.sock" \
  --data-dir "$tmp/berthd-leases" >"$tmp/berthd.log" 2>&1 &
daemon_pid=$!
berthd_up() { for _ in $(seq 1 100); do [ -S "$tmp/berthd/berthd.sock" ] && return 0; sleep 0.1; done; return 1; }
check "a berthd runs from the prefix's berth (pid $daemon_pid)" berthd_up
inode_before="$(stat -c %i "$prefix/berth")"
# Through a symlink to the prefix, with a trailing /: the running berthd is still recognised (the kernel
# names its executable by the resolved path).
ln -s "$prefix" "$tmp/cni-bin-link"
"$repo/scripts/install.sh" --from "$tmp/build2" --prefix "$tmp/cni-bin-link/" "${install_args[@]:2}" >"$tmp/install3.out" 2>&1
status=$?
cp "$tmp/install3.out" "$tmp/last.out"
report "install.sh of build 2 while the plugin runs" "$status"
sed 's/^/     : /' "$tmp/install3.out"
check "berth replaced (new inode), the shims stay (same bytes in both builds)" bash -c "[ \"\$(stat -c %i '$prefix/berth')\" != '$inode_before' ] && cmp '$tmp/build2/berth' '$prefix/berth' && cmp '$tmp/build2/berth-shim' '$prefix/berth-bridge' && [ '$prefix/berth-ipam' -ef '$prefix/berth-bridge' ]"
check "the blocked shim is still waiting for its stdin" bash -c "[ \"\$(readlink '/proc/$plugin_pid/exe')\" = '$prefix/berth-bridge' ]"
check "install.sh says berthd (pid $daemon_pid) still runs the berth it replaced" \
  grep -q "berthd (pid $daemon_pid) still runs the berth just replaced" "$tmp/install3.out"
kill "$daemon_pid" && wait "$daemon_pid" 2>/dev/null
daemon_pid=""
cat "$tmp/conf.json" >&3
exec 3>&-
wait "$plugin_pid"
status=$?
plugin_pid=""
cp "$tmp/$P-c.err" "$tmp/last.out"
cat "$tmp/$P-c.json" >>"$tmp/last.out"
report "the plugin blocked during the install completes its ADD (exit 0)" "$status"
c="$(jq -r '.ips[0].address // "" | split("/")[0]' "$tmp/$P-c.json" 2>/dev/null)"
check "$P-c got its address $c and reaches $P-a" bash -c "[[ '$c' == 198.19.200.* ]] && ip -n '$P-c' -br addr show dev eth0 | grep -qw '$c' && for i in 1 2 3 4 5; do ip netns exec '$P-c' ping -n -c 1 -W 1 '$a' && exit 0; sleep 0.5; done; exit 1"
check "--version now reports build 2" bash -c "[ \"\$(env -i PATH='$tools' '$prefix/berth' --version)\" = \"\$(env -i PATH='$tools' '$tmp/build2/berth' --version)\" ]"

# --- the extraction dir must be private ---------------------------------------------------------------
# berthd off for these (a daemon would take the ADD without berth-ipam loading its addon).
jq '.ipam.daemonSocket = false' "$tmp/conf.json" >"$tmp/conf-files.json"
ipam_add() { # native dir
  env -i PATH="$tools" BERTH_NATIVE_DIR="$1" BERTH_SOCKET="$nosock" CNI_COMMAND=ADD CNI_CONTAINERID="$P-x" CNI_NETNS=/run/netns/none \
    CNI_IFNAME=eth0 CNI_PATH="$prefix" "$prefix/berth-ipam" <"$tmp/conf-files.json"
}
mkdir -m 777 "$tmp/world"
refused_dir() { # dir, message pattern: ipam ADD fails with a CNI error naming the problem, dir stays empty
  if ipam_add "$1" >"$tmp/refused.json"; then echo "ADD succeeded"; return 1; fi
  cat "$tmp/refused.json"
  jq -e --arg re "$2" '.code and (.msg | test($re))' "$tmp/refused.json" && [ -z "$(ls -A "$1")" ]
}
check "a world-writable BERTH_NATIVE_DIR is refused (CNI error, nothing written)" refused_dir "$tmp/world" "writable by group or others"
mkdir -m 700 "$tmp/foreign"
chown 65534 "$tmp/foreign"
check "a BERTH_NATIVE_DIR owned by another user is refused" refused_dir "$tmp/foreign" "owned by uid 65534"

# --- DEL, nothing left ---------------------------------------------------------------------------------
for pod in "$P-a" "$P-b"; do
  check "cnitool del $pod" cni del "$net" "/run/netns/$pod"
done
del_direct() { pod_env DEL "$1" "$prefix/berth-bridge" <"$tmp/conf.json"; }
check "DEL $P-c (runtime-style, new binary)" del_direct "$P-c"
for pod in "${pods[@]}"; do ip netns del "$pod" 2>/dev/null; done
check "no veth left on $br" bash -c "[ -z \"\$(ip -o link show master '$br' 2>/dev/null)\" ]"
addrs=()
for x in "$a" "$b" "$c"; do [[ "$x" == 198.19.200.* ]] && addrs+=("$x"); done
no_lease_left() {
  ls -la "$tmp/ipam/$net"
  ! grep -rlE "$P-|cnitool-" "$tmp/ipam/$net" 2>/dev/null || return 1
  local x
  for x in "${addrs[@]}"; do [ ! -e "$tmp/ipam/$net/$x" ] || return 1; done
}
no_nft_left() {
  local rules x
  rules="$(nft list ruleset)" || return 1
  for x in "${addrs[@]}"; do if grep -qw -- "$x" <<<"$rules"; then echo "still in nftables: $x"; return 1; fi; done
}
check "no lease file left for ${addrs[*]}" no_lease_left
check "no nftables entry left for ${addrs[*]}" no_nft_left
check "no cnitool cache file left" bash -c "! ls /var/lib/cni/results/'$net'-* 2>/dev/null"
no_berth_table() { local t; t="$(nft list tables)" || return 1; echo "$t"; ! grep -qE '^table (inet|bridge) berth$' <<<"$t"; }
if [ "$berth_table_before" = 0 ]; then
  check "no berth nftables table left after the last DEL (nft list tables)" no_berth_table
else
  echo "SKIP a berth nftables table existed before this run (someone else's): not checking that none is left"
fi
check "no attachment registry left under BERTH_RUN_DIR" bash -c "[ -d '$BERTH_RUN_DIR/bridge' ] && ! find '$BERTH_RUN_DIR' -name '*.attachments' | grep -q ."

# --- a copy on a host without the checkout: install.sh with berth, the shim, the conflist and units ----
rel="$tmp/release"
mkdir -p "$rel"
cp "$tmp/build2/berth" "$tmp/build2/berth-shim" "$repo/scripts/install.sh" "$repo/conf/10-berth-ipv4.conflist" "$rel/"
for unit in berthd.service berthd.socket; do [ ! -f "$repo/deploy/systemd/$unit" ] || cp "$repo/deploy/systemd/$unit" "$rel/"; done
rel_args=(--prefix "$tmp/rel-bin" --conf --conf-dir "$tmp/rel-etc/net.d" --with-systemd --systemd-dir "$tmp/rel-etc/systemd")
check "a copied install.sh installs what is beside it" "$rel/install.sh" "${rel_args[@]}"
check "… the conflist beside it" cmp "$rel/10-berth-ipv4.conflist" "$tmp/rel-etc/net.d/10-berth-ipv4.conflist"
check "… the units beside it" bash -c "for u in '$rel'/berthd.*; do test -f '$tmp/rel-etc/systemd/'\$(basename \$u) || exit 1; done"
check "… and removes it again" "$rel/install.sh" --uninstall "${rel_args[@]}"

# --- uninstall -----------------------------------------------------------------------------------------
check "install.sh --uninstall" "$repo/scripts/install.sh" --uninstall "${install_args[@]}"
check "the prefix holds no berth file any more" bash -c "[ -z \"\$(ls -A '$prefix')\" ]"

echo "# install-test: $checks checks, $fails failed"
[ "$fails" -eq 0 ]
