#!/usr/bin/env bash
# Installs what `npm run package` built where runtimes look for CNI plugins: <prefix>/berth (the single
# executable) and the plugins berth-bridge and berth-ipam: berth-shim (out/berth-shim, hard links to each
# other), which forwards each call to berthd and runs <prefix>/berth under the plugin's name when there is
# no berthd; with --standalone, hard links to berth instead (every call starts Node). Needs no Node.js.
#
# Every file is written as a new file in its target directory and renamed over the old one, so a plugin
# that is executing keeps running its own (old) file, and a runtime starting one sees either the old or
# the new executable, never a half-written one. A file that already has the right content and mode is
# left alone: a second run changes nothing and says so.
#
#   scripts/install.sh [--prefix DIR] [--from DIR] [--conf[=FILE]] [--with-systemd] [--uninstall]
#     --prefix DIR       plugin directory (default /opt/cni/bin)
#     --from DIR         where berth and berth-shim were built (default: <repo>/out, or the
#                        directory holding this script when berth sits beside it, as in a release)
#     --conf[=FILE]      also install an example network (default conf/10-berth-ipv4.conflist) into
#                        --conf-dir (default /etc/cni/net.d) unless a file of that name is there
#     --with-systemd     also install deploy/systemd/berthd.service and berthd.socket (when present) into
#                        --systemd-dir (default /etc/systemd/system), then `systemctl daemon-reload`
#   Copied into one directory with berth and berth-shim (a host without the checkout), it takes the
#   conflist and the units from beside it too.
#     --standalone       plugins as hard links to berth (no shim, no warm path)
#     --uninstall        remove berth, berth-bridge and berth-ipam from --prefix (and, with
#                        --with-systemd, the units); leases, configs and /var/lib/berth stay
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

prefix=/opt/cni/bin
from=""
conf=""
conf_dir=/etc/cni/net.d
systemd=false
systemd_dir=/etc/systemd/system
uninstall=false
standalone=false
# A file shipped with install.sh: beside it when berth is too (copied to a host), else in the checkout.
beside_or_in_repo() { if [ -f "$here/berth" ] && [ -f "$here/$1" ]; then echo "$here/$1"; else echo "$repo/$2/$1"; fi; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift ;;
    --prefix=*) prefix="${1#*=}" ;;
    --from) from="${2:?--from needs a directory}"; shift ;;
    --from=*) from="${1#*=}" ;;
    --conf) conf="$(beside_or_in_repo 10-berth-ipv4.conflist conf)" ;;
    --conf=*) conf="${1#*=}" ;;
    --conf-dir) conf_dir="${2:?--conf-dir needs a directory}"; shift ;;
    --conf-dir=*) conf_dir="${1#*=}" ;;
    --with-systemd) systemd=true ;;
    --systemd-dir) systemd_dir="${2:?--systemd-dir needs a directory}"; shift ;;
    --systemd-dir=*) systemd_dir="${1#*=}" ;;
    --standalone) standalone=true ;;
    --uninstall) uninstall=true ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
  esac
  shift
done
# One spelling of the prefix in the units and messages: /opt/cni/bin/ is /opt/cni/bin.
while [ "${prefix%/}" != "$prefix" ] && [ "$prefix" != / ]; do prefix="${prefix%/}"; done

if [ -z "$from" ]; then
  if [ -f "$here/berth" ]; then from="$here"; else from="$repo/out"; fi
fi

changed=0
unchanged=0
say() { echo "install.sh: $*"; }
tmp_files=()
trap 'rm -f "${tmp_files[@]}"' EXIT

# install_file SRC DEST MODE: copy to a temp file beside DEST, then rename over DEST.
install_file() {
  local src="$1" dest="$2" mode="$3"
  if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest"; then
    if [ "$(stat -c %a "$dest")" = "$mode" ]; then
      say "unchanged  $dest"
      unchanged=$((unchanged + 1))
      return
    fi
  fi
  local tmp
  tmp="$(mktemp "$(dirname "$dest")/.$(basename "$dest").new.XXXXXX")"
  tmp_files+=("$tmp")
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  sync "$tmp" 2>/dev/null || true
  mv -fT "$tmp" "$dest"
  say "installed  $dest"
  changed=$((changed + 1))
}

# link_file TARGET LINK: LINK becomes a hard link to TARGET, through a temp link renamed over LINK.
link_file() {
  local target="$1" link="$2"
  if [ "$link" -ef "$target" ] && [ ! -L "$link" ]; then
    say "unchanged  $link (hard link to $(basename "$target"))"
    unchanged=$((unchanged + 1))
    return
  fi
  local tmp="$(dirname "$link")/.$(basename "$link").new.$$"
  tmp_files+=("$tmp")
  rm -f "$tmp"
  ln "$target" "$tmp"
  mv -fT "$tmp" "$link"
  say "linked     $link -> $(basename "$target") (hard link)"
  changed=$((changed + 1))
}

remove_file() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    rm -f "$1"
    say "removed    $1"
    changed=$((changed + 1))
  else
    say "absent     $1"
    unchanged=$((unchanged + 1))
  fi
}

units=(berthd.service berthd.socket)

# The units systemd runs (not a test's --systemd-dir): they are stopped and disabled before their files go,
# else berthd.socket keeps listening, berthd runs on from deleted files and its wants-link dangles.
live_units() {
  [ -d /run/systemd/system ] || return 1
  case "$systemd_dir" in /etc/systemd/system | /lib/systemd/system | /usr/lib/systemd/system) return 0 ;; esac
  return 1
}

if [ "$uninstall" = true ]; then
  if [ "$systemd" = true ] && live_units; then
    systemctl disable --now berthd.socket berthd.service >/dev/null 2>&1 || true
    say "stopped    berthd.socket berthd.service (and disabled)"
  fi
  for name in berth-bridge berth-ipam berth; do remove_file "$prefix/$name"; done
  if [ "$systemd" = false ] && [ -f "$systemd_dir/berthd.service" ]; then
    say "note       $systemd_dir/berthd.{socket,service} stay and start a berth that is gone: add --with-systemd"
  fi
  if [ "$systemd" = true ]; then
    for unit in "${units[@]}"; do remove_file "$systemd_dir/$unit"; done
    if live_units; then systemctl daemon-reload || true; fi
  fi
  say "$changed removed, $unchanged already absent (leases, /etc/cni/net.d and /var/lib/berth are kept)"
  exit 0
fi

# Checked before anything is written, so a bad option leaves the host as it was.
if [ -n "$conf" ] && [ ! -f "$conf" ]; then echo "install.sh: --conf: $conf not found" >&2; exit 1; fi
exe="$from/berth"
[ -f "$exe" ] || { echo "install.sh: $exe not found: build it with \`npm run package\` (or pass --from DIR)" >&2; exit 1; }
version="$("$exe" --version)" || { echo "install.sh: $exe --version failed: not a working berth executable" >&2; exit 1; }
say "from $exe: $version"

mkdir -p "$prefix"
shim="$from/berth-shim"
if [ "$standalone" = false ] && [ ! -f "$shim" ]; then
  say "no $shim in this build: installing the plugins standalone (hard links to berth)"
  standalone=true
fi
# berth first: the shim falls back to it, so it must be in place before the shim is.
before_berth=$changed
install_file "$exe" "$prefix/berth" 755
berth_changed=$((changed - before_berth))
if [ "$standalone" = true ]; then
  link_file "$prefix/berth" "$prefix/berth-bridge"
else
  install_file "$shim" "$prefix/berth-bridge" 755
fi
link_file "$prefix/berth-bridge" "$prefix/berth-ipam"

if [ -n "$conf" ]; then
  dest="$conf_dir/$(basename "$conf")"
  if [ -e "$dest" ] && ! cmp -s "$conf" "$dest"; then
    say "kept       $dest (exists and differs from $conf: not overwritten)"
    unchanged=$((unchanged + 1))
  else
    mkdir -p "$conf_dir"
    install_file "$conf" "$dest" 644
  fi
fi

if [ "$systemd" = true ]; then
  units_changed=$changed
  for unit in "${units[@]}"; do
    src="$(beside_or_in_repo "$unit" deploy/systemd)"
    if [ ! -f "$src" ]; then
      say "skipped    $unit (no $src in this tree)"
      continue
    fi
    mkdir -p "$systemd_dir"
    # The units name /opt/cni/bin/berth; point them at the prefix actually used.
    rendered="$(mktemp)"
    tmp_files+=("$rendered")
    sed "s#/opt/cni/bin/#${prefix%/}/#g" "$src" >"$rendered"
    install_file "$rendered" "$systemd_dir/$unit" 644
  done
  # Only for units where systemd looks: a --systemd-dir elsewhere (a test's, a staging tree) is none of its business.
  if [ "$changed" -gt "$units_changed" ] && live_units && command -v systemctl >/dev/null; then
    systemctl daemon-reload || true
    say "ran        systemctl daemon-reload (enable with: systemctl enable --now berthd.socket)"
  fi
fi

# A new berth over a running berthd: warm calls would run the old code (from its deleted file) until it
# restarts. It drains (calls made meanwhile run standalone, the new code) and the socket starts the new one,
# as the .deb's upgrade does. Only berthd run by systemd from this prefix's units; any other is named.
if [ "$berth_changed" -gt 0 ]; then
  # The kernel names the executable by its resolved path: a symlinked prefix (or one ending in /) must be too.
  real_prefix="$(cd "$prefix" && pwd -P)"
  for pid in $(pgrep -x berth 2>/dev/null || true); do
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$real_prefix/berth (deleted)" ] || continue
    if [ "$systemd" = true ] && live_units && systemctl is-active --quiet berthd.service 2>/dev/null; then
      systemctl try-restart berthd.service || true
      say "restarted  berthd.service (it ran the berth just replaced)"
      break
    fi
    say "note       berthd (pid $pid) still runs the berth just replaced: restart it to run the new one"
  done
fi

if [ "$changed" -eq 0 ]; then
  say "nothing to do: all $unchanged already up to date"
else
  say "$changed changed, $unchanged unchanged"
fi
