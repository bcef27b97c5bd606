#!/usr/bin/env bash
# Builds berth_<version>_amd64.deb with dpkg-deb from what `npm run package` built (`npm run deb` does both):
#   /opt/cni/bin/berth                     the single executable (needs no Node.js)
#   /opt/cni/bin/berth-bridge, berth-ipam  berth-shim (forwards to berthd, else runs the berth beside it)
#   /usr/bin/berth                         -> /opt/cni/bin/berth (the admin CLI on the PATH)
#   /lib/systemd/system/berthd.socket, berthd.service   from deploy/systemd/ (socket activation)
#   /usr/share/doc/berth/                  README.md, copyright, examples/ (conf/*.conflist + conf/README.md)
# No network config is installed: a config in /etc/cni/net.d makes a runtime use the network at once, so
# that stays the admin's step (copy one from /usr/share/doc/berth/examples). dpkg writes every file as
# <name>.dpkg-new and renames it over the old one, so a runtime never executes half a plugin.
#
#   scripts/build-deb.sh [--from DIR] [--out DIR] [--version V]
#     --from DIR     where `npm run package` wrote berth and berth-shim (default <repo>/out)
#     --out DIR      where the .deb goes (default <repo>/out)
#     --version V    package version (default package.json's)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
from="$repo/out"
out="$repo/out"
version="$(node -p "require('$repo/package.json').version")"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="${2:?}"; shift ;;
    --out) out="${2:?}"; shift ;;
    --version) version="${2:?}"; shift ;;
    *) echo "build-deb.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for f in "$from/berth" "$from/berth-shim"; do
  [ -x "$f" ] || { echo "build-deb.sh: no $f (run npm run package first)" >&2; exit 1; }
done
arch="$(dpkg --print-architecture)"

stage="$(mktemp -d "${TMPDIR:-/tmp}/berth-deb.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
install -d -m 755 "$stage/DEBIAN" "$stage/opt/cni/bin" "$stage/usr/bin" "$stage/usr/share/doc/berth/examples"
install -m 755 "$from/berth" "$stage/opt/cni/bin/berth"
install -m 755 "$from/berth-shim" "$stage/opt/cni/bin/berth-bridge"
ln "$stage/opt/cni/bin/berth-bridge" "$stage/opt/cni/bin/berth-ipam"
ln -s /opt/cni/bin/berth "$stage/usr/bin/berth"
install -m 644 "$repo/README.md" "$stage/usr/share/doc/berth/README.md"
install -m 644 "$repo"/conf/*.conflist "$repo/conf/README.md" "$stage/usr/share/doc/berth/examples/"
printf 'berth\nLicense: Apache-2.0 (see /usr/share/common-licenses/Apache-2.0)\n' \
  >"$stage/usr/share/doc/berth/copyright"

units=()
for u in berthd.socket berthd.service; do
  [ -f "$repo/deploy/systemd/$u" ] && units+=("$repo/deploy/systemd/$u")
done
if [ ${#units[@]} -gt 0 ]; then
  install -d -m 755 "$stage/lib/systemd/system"
  install -m 644 "${units[@]}" "$stage/lib/systemd/system/"
else
  echo "build-deb.sh: no deploy/systemd/berthd.{socket,service}: the package has no systemd units" >&2
fi

# Maintainer scripts: only when dpkg works on the real root (DPKG_ROOT is set by `dpkg --root …
# --force-script-chrootless`, as the tests do: nothing outside that root is touched); systemd's running
# state only when it runs the system. Enabling is a symlink: also done in an image build (chroot, container)
# where no systemd runs, so the node boots with the warm path on.
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
running() { [ -d /run/systemd/system ]; }
if [ "$1" = configure ] && [ -z "${DPKG_ROOT:-}" ] && [ -f /lib/systemd/system/berthd.socket ] &&
  command -v systemctl >/dev/null; then
  if running; then systemctl daemon-reload || true; fi
  if [ -z "$2" ] || [ -e /var/lib/berth/.deb-socket-was-enabled ]; then
    # First install, or again after a remove that found the socket enabled (prerm left the mark): on.
    rm -f /var/lib/berth/.deb-socket-was-enabled
    systemctl enable berthd.socket || true
    if running; then systemctl start berthd.socket || true; fi
  elif running; then
    # Upgrade: as the admin left it (switching to standalone disables the units; an upgrade must not undo
    # that). The running berthd finishes what it has in flight, the socket starts the new one.
    systemctl try-restart berthd.service || true
    if systemctl is-enabled --quiet berthd.socket; then systemctl start berthd.socket || true; fi
  fi
fi
exit 0
EOF
cat >"$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  # Removed (not purged), the package comes back as an upgrade of its old version: remember whether the
  # warm path was on, so that postinst turns it on again then.
  if systemctl is-enabled --quiet berthd.socket; then
    mkdir -p /var/lib/berth && touch /var/lib/berth/.deb-socket-was-enabled
  fi
  systemctl stop berthd.socket berthd.service || true
  # Both: berthd.service can be enabled on its own (its [Install]); a link left would name a removed unit.
  systemctl disable berthd.socket berthd.service || true
fi
if [ "$1" = remove ]; then
  # The admin's network configs stay, and a runtime still running berth-bridge from them fails every pod's
  # ADD and DEL once the plugins are gone: say which.
  left="$(grep -ls '"type"[[:space:]]*:[[:space:]]*"berth-' "${DPKG_ROOT:-}"/etc/cni/net.d/* 2>/dev/null || true)"
  if [ -n "$left" ]; then
    echo "berth: these network configs still name berth's plugins, which are being removed; pods on them" >&2
    echo "berth: will fail to start and to stop until they are changed or removed:" >&2
    echo "$left" | sed 's/^/berth:   /' >&2
  fi
fi
exit 0
EOF
cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
  # What the package itself made: the unpacked native addons and the warm path's mark. The leases
  # (/var/lib/cni) and the node's cluster identity (/var/lib/berth/node-id) are the operator's: kept.
  root="${DPKG_ROOT:-}"
  rm -rf "$root/var/lib/berth/native"
  rm -f "$root/var/lib/berth/.deb-socket-was-enabled"
  rmdir "$root/var/lib/berth" 2>/dev/null || true
fi
exit 0
EOF
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

size_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<EOF
Package: berth
Version: $version
Architecture: $arch
Maintainer: berth developers <berth@localhost>
Installed-Size: $size_kb
Depends: libc6 (>= 2.28), libstdc++6, libgcc-s1, nftables
Recommends: containernetworking-plugins
Section: net
Priority: optional
Homepage: https://example.invalid/berth
Description: CNI bridge and IPAM plugins with an IPAM daemon (berthd)
 berth-bridge (Linux bridge + veth per pod) and berth-ipam (host-local
 compatible leases, or berthd when it runs) for containerd, CRI-O, podman
 and any CNI runtime, plus the berth admin command and berthd, started by
 systemd socket activation. One self-contained executable: no Node.js needed.
 containerd also needs the loopback plugin (containernetworking-plugins).
EOF

mkdir -p "$out"
deb="$out/berth_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >&2
echo "$deb"
