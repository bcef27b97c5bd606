#!/usr/bin/env bash
# The Debian package (root): builds berth_<old>_amd64.deb and berth_<version>_amd64.deb (scripts/build-deb.sh)
# and installs, upgrades and removes them with dpkg into a temp root (`dpkg --root`, its own admin dir,
# maintainer scripts run chrootless with DPKG_ROOT set) — never into this host's /opt/cni/bin, /usr/bin, /etc
# or dpkg database, which the test checks are unchanged:
#   - install: the plugins in /opt/cni/bin (berth, berth-bridge = berth-ipam = berth-shim, 0755, the build's
#     bytes), /usr/bin/berth -> /opt/cni/bin/berth, the systemd units when deploy/systemd has them, the
#     examples under /usr/share/doc/berth; the installed shim answers VERSION (running the berth beside it);
#   - upgrade over the older build while a berthd started from the old /opt/cni/bin/berth runs: every file
#     is a new inode (renamed over, never rewritten), the running daemon keeps its old inode and stays
#     healthy, no .dpkg-new/.dpkg-tmp left;
#   - remove: every packaged file gone, the admin's network config in /etc/cni/net.d kept; purge forgets it.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "deb-test.sh: must run as root" >&2; exit 1; }
for tool in dpkg dpkg-deb node curl jq; do
  command -v "$tool" >/dev/null || { echo "deb-test.sh: missing $tool" >&2; exit 1; }
done
# shellcheck source=lib/sea.sh
. "$repo/scripts/lib/sea.sh"
require_sea_fuse deb-test.sh

P="bt$$"
tmp="$(mktemp -d "/tmp/$P-deb.XXXXXX")"
root="$tmp/root"
daemon_pid=""
version="$(node -p "require('$repo/package.json').version")"
old_version="${version}~old1"
dpkg_=(dpkg --root="$root" --force-script-chrootless --force-depends --log="$tmp/dpkg.log")

# shellcheck source=lib/checks.sh
. "$repo/scripts/lib/checks.sh"
# shellcheck source=lib/stop.sh
. "$repo/scripts/lib/stop.sh"

host_view() { # what of the host this test must not change
  ls -lid /opt/cni/bin/* /usr/bin/berth /etc/cni/net.d/* /lib/systemd/system/berthd.* 2>/dev/null
  dpkg-query -W -f='${Package} ${Version} ${Status}\n' berth 2>/dev/null
  stat -c '%i %s %Y' /var/lib/dpkg/status
}
cleanup() {
  set +e
  stop_pid "$daemon_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
host_view >"$tmp/host.before"

echo "# deb-test: $(dpkg --version | head -n 1), dir $tmp"
if [ ! -f "$repo/dist/sea/entry.js" ] || [ ! -f "$repo/native/build/Release/berth_native.node" ]; then
  (cd "$repo" && npm run build >&2)
fi
check "berth built (scripts/package.js)" node "$repo/scripts/package.js" --out "$tmp/build"
build_debs() {
  bash "$repo/scripts/build-deb.sh" --from "$tmp/build" --out "$tmp/debs" --version "$old_version" &&
    bash "$repo/scripts/build-deb.sh" --from "$tmp/build" --out "$tmp/debs" --version "$version"
}
check "berth_${old_version}_*.deb and berth_${version}_*.deb built (scripts/build-deb.sh)" build_debs
old_deb="$(ls "$tmp"/debs/berth_"${old_version}"_*.deb 2>/dev/null)"
new_deb="$(ls "$tmp"/debs/berth_"${version}"_*.deb 2>/dev/null)"
[ "$fails" = 0 ] || exit 1
# The units the package must carry: those of deploy/systemd that build-deb.sh packs (not a count of the
# package's own).
units=0
for u in berthd.socket berthd.service; do [ -f "$repo/deploy/systemd/$u" ] && units=$((units + 1)); done
contents_ok() {
  dpkg-deb -I "$new_deb" && dpkg-deb -c "$new_deb" >"$tmp/contents" && cat "$tmp/contents" &&
    grep -q ' ./opt/cni/bin/berth-ipam' "$tmp/contents" &&
    grep -q ' ./usr/bin/berth -> /opt/cni/bin/berth$' "$tmp/contents" &&
    grep -q ' ./usr/share/doc/berth/examples/10-berth-ipv4.conflist$' "$tmp/contents" &&
    [ "$(grep -c 'lib/systemd/system/berthd\.' "$tmp/contents")" = "$units" ]
}
check "package holds the plugins, /usr/bin/berth, the examples ($units systemd units)" contents_ok

mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"

# --- install -------------------------------------------------------------------------------------------
# The postinst's systemd calls (dpkg skips them in a temp root): run it in a private mount namespace where
# /run/systemd/system and the unit exist and `systemctl` only logs, for a first install and for upgrades
# with the socket enabled and disabled (the README's switch to standalone must survive an upgrade).
postinst_calls() { # script (postinst/prerm), its argument, $2 (old version or ""), is-enabled answer (0/1),
  # "mark" to start with prerm's mark of an enabled socket, "image" for an image build (no systemd running:
  # no /run/systemd/system); prints systemctl's calls, then "mark" if left
  local d="$tmp/maint-$RANDOM"
  mkdir -p "$d/bin" "$d/units" "$d/varlib" && dpkg-deb --ctrl-tarfile "$new_deb" | tar -x -C "$d" "./$1"
  printf '#!/bin/sh\necho "$*" >>%s/calls\n[ "$1 $2" = "is-enabled --quiet" ] && exit %s\nexit 0\n' "$d" "$4" >"$d/bin/systemctl"
  chmod +x "$d/bin/systemctl" && touch "$d/units/berthd.socket" "$d/calls"
  if [ "${5:-}" = mark ]; then mkdir -p "$d/varlib/berth" && touch "$d/varlib/berth/.deb-socket-was-enabled"; fi
  unshare --mount --propagation private sh -c '
    mount -t tmpfs none /run/systemd 2>/dev/null || { mkdir -p /run/systemd && mount -t tmpfs none /run/systemd; }
    { [ "$5" = image ] || mkdir -p /run/systemd/system; } &&
    mount --bind "$1/units" /lib/systemd/system && mount --bind "$1/varlib" /var/lib &&
    PATH="$1/bin:$PATH" sh "$1/$2" "$3" "$4"' maint "$d" "$1" "$2" "$3" "${5:-}" >/dev/null 2>&1
  tr '\n' ';' <"$d/calls"
  [ -e "$d/varlib/berth/.deb-socket-was-enabled" ] && echo mark
}
postinst_ok() {
  local first image up_on up_off back rm_on
  first="$(postinst_calls postinst configure "" 0)"
  image="$(postinst_calls postinst configure "" 0 image)"
  up_on="$(postinst_calls postinst configure "$old_version" 0)"
  up_off="$(postinst_calls postinst configure "$old_version" 1)"
  back="$(postinst_calls postinst configure "$old_version" 1 mark)"
  rm_on="$(postinst_calls prerm remove "" 0)"
  echo "first install: $first | in an image build: $image | upgrade, enabled: $up_on | upgrade, disabled: $up_off | after a remove that found it enabled: $back | prerm remove, enabled: $rm_on"
  [ "$first" = "daemon-reload;enable berthd.socket;start berthd.socket;" ] &&
    [ "$image" = "enable berthd.socket;" ] &&
    [ "$up_on" = "daemon-reload;try-restart berthd.service;is-enabled --quiet berthd.socket;start berthd.socket;" ] &&
    [ "$up_off" = "daemon-reload;try-restart berthd.service;is-enabled --quiet berthd.socket;" ] &&
    [ "$back" = "daemon-reload;enable berthd.socket;start berthd.socket;" ] &&
    [ "$rm_on" = "is-enabled --quiet berthd.socket;stop berthd.socket berthd.service;disable berthd.socket berthd.service;mark" ]
}
check "maintainer scripts: the socket on at a first install (also in an image build), and again after a remove that found it on; an upgrade leaves a disabled one off" postinst_ok
check "dpkg -i berth_${old_version} into the temp root" "${dpkg_[@]}" -i "$old_deb"
status_is() { "${dpkg_[@]}" -s berth | tee /dev/stderr | grep -q "^Status: $1" && "${dpkg_[@]}" -s berth | grep -q "^Version: $2\$"; }
check "dpkg says berth $old_version is installed" status_is "install ok installed" "$old_version"
installed_ok() {
  local f
  cmp "$tmp/build/berth" "$root/opt/cni/bin/berth" || return 1
  for f in berth-bridge berth-ipam; do cmp "$tmp/build/berth-shim" "$root/opt/cni/bin/$f" || return 1; done
  for f in berth berth-bridge berth-ipam; do [ "$(stat -c %a "$root/opt/cni/bin/$f")" = 755 ] || return 1; done
  [ "$(readlink "$root/usr/bin/berth")" = /opt/cni/bin/berth ] || return 1
  [ -f "$root/usr/share/doc/berth/examples/10-berth-ipv4.conflist" ] || return 1
  [ "$(ls "$root"/lib/systemd/system/berthd.* 2>/dev/null | wc -l)" = "$units" ] || return 1
  ls -la "$root/opt/cni/bin"
}
check "installed: plugins 0755 with the build's bytes, /usr/bin/berth -> /opt/cni/bin/berth, examples, units" installed_ok
answers() {
  local out
  out="$(CNI_COMMAND=VERSION BERTH_SOCKET="$tmp/nobody.sock" BERTH_NATIVE_DIR="$tmp/native" \
    "$root/opt/cni/bin/berth-ipam" </dev/null)" || return 1
  echo "$out"
  jq -e '.supportedVersions | index("1.1.0")' <<<"$out"
}
check "the installed berth-ipam (shim) answers VERSION through the berth beside it" answers
# The admin's own network config, as the package's doc says (copied from the examples).
mkdir -p "$root/etc/cni/net.d"
cp "$root/usr/share/doc/berth/examples/10-berth-ipv4.conflist" "$root/etc/cni/net.d/"

# --- upgrade while the old berth runs ----------------------------------------------------------------
inodes() { stat -c '%n %i' "$root"/opt/cni/bin/berth "$root"/opt/cni/bin/berth-bridge "$root"/opt/cni/bin/berth-ipam; }
inodes >"$tmp/inodes.old"
mkdir -p -m 700 "$tmp/berthd"
BERTH_NATIVE_DIR="$tmp/native" "$root/opt/cni/bin/berth" daemon --socket "$tmp/berthd/berthd.sock" \
  --data-dir "$tmp/leases" >"$tmp/berthd.log" 2>&1 &
daemon_pid=$!
healthy() { for _ in $(seq 1 100); do curl -sf --unix-socket "$tmp/berthd/berthd.sock" http://b/v1/health && return 0; sleep 0.1; done; return 1; }
check "berthd runs from the installed $old_version /opt/cni/bin/berth (pid $daemon_pid)" healthy
old_exe_inode="$(stat -L -c %i "/proc/$daemon_pid/exe")"
check "dpkg -i berth_${version} over it (upgrade)" "${dpkg_[@]}" -i "$new_deb"
check "dpkg says berth $version is installed" status_is "install ok installed" "$version"
check "upgraded files are the build's again" installed_ok
replaced() {
  inodes >"$tmp/inodes.new"
  paste "$tmp/inodes.old" "$tmp/inodes.new"
  awk '{ if ($2 == $4) exit 1 }' < <(paste -d' ' "$tmp/inodes.old" "$tmp/inodes.new")
}
check "every plugin file is a new inode (renamed over, not rewritten in place)" replaced
old_kept() {
  ls -l "/proc/$daemon_pid/exe"
  [ "$(stat -L -c %i "/proc/$daemon_pid/exe")" = "$old_exe_inode" ] && readlink "/proc/$daemon_pid/exe" | grep -q '(deleted)'
}
check "the running berthd still executes its old (now unlinked) file" old_kept
check "the running berthd is still healthy after the upgrade" healthy
no_leftovers() { ! find "$root" -name '*.dpkg-*' | grep .; }
check "no .dpkg-new/.dpkg-tmp left in the root" no_leftovers
stop_pid "$daemon_pid"
daemon_pid=""

# --- remove, purge -------------------------------------------------------------------------------------
check "dpkg -r berth" "${dpkg_[@]}" -r berth
removed() {
  local f
  for f in opt/cni/bin/berth opt/cni/bin/berth-bridge opt/cni/bin/berth-ipam usr/bin/berth \
    lib/systemd/system/berthd.socket lib/systemd/system/berthd.service usr/share/doc/berth; do
    if [ -e "$root/$f" ] || [ -L "$root/$f" ]; then echo "still there: /$f"; return 1; fi
  done
}
check "every packaged file is gone" removed
check "the admin's /etc/cni/net.d/10-berth-ipv4.conflist is kept" \
  cmp "$repo/conf/10-berth-ipv4.conflist" "$root/etc/cni/net.d/10-berth-ipv4.conflist"
forgotten() { ! "${dpkg_[@]}" -s berth 2>/dev/null | grep -q '^Status: install'; }
check "dpkg no longer lists berth as installed" forgotten
# What berth made at run time: its unpacked addons (the package's to remove) and a cluster node's identity
# (the operator's, kept).
mkdir -p "$root/var/lib/berth/native" && touch "$root/var/lib/berth/native/berth_native-x.node"
echo "test-node-uid" >"$root/var/lib/berth/node-id"
check "dpkg --purge berth" "${dpkg_[@]}" --purge berth
purged() { [ ! -e "$root/var/lib/berth/native" ] && [ -f "$root/var/lib/berth/node-id" ]; }
check "purge removes /var/lib/berth/native and keeps /var/lib/berth/node-id" purged
check "the admin's config is still kept after purge (not the package's file)" \
  test -f "$root/etc/cni/net.d/10-berth-ipv4.conflist"

host_same() { host_view >"$tmp/host.after"; diff "$tmp/host.before" "$tmp/host.after"; }
check "this host's /opt/cni/bin, /usr/bin/berth, /etc/cni/net.d, units and dpkg database are unchanged" host_same
echo "# deb-test: $checks checks, $fails failed"
[ "$fails" -eq 0 ]
