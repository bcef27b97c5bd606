#!/usr/bin/env bash
# Builds berth's node image (what deploy/berth.yaml runs) offline, FROM scratch: no registry, no base image.
# It holds what `npm run package` built (berth, the single executable, and berth-shim) under /usr/lib/berth,
# nft with the libraries it links (berthd runs `nft -j` for ipMasq once it serves plugin calls), the shared
# libraries berth itself links, and nothing else: no shell. The entrypoint is `berth node-agent` (src/cli/
# node-agent.ts): plugins into /host/opt/cni/bin, then the network config into /host/etc/cni/net.d, both by
# rename from a temp file in the same directory, then berthd in the foreground.
#
#   scripts/build-image.sh [--from DIR] [--tag NAME:TAG] [--save FILE]
#     --from DIR    where `npm run package` wrote berth and berth-shim (default <repo>/out)
#     --tag T       image name (default berth.local/berth-node:<package.json version>)
#     --save FILE   also write the image as an OCI archive (podman load -i FILE; ctr images import FILE)
#   PODMAN="podman --root DIR --runroot DIR" picks the storage (the tests use their own).
set -euo pipefail
# The image's directories are made with the builder's umask: under 002 (a user's rootless podman) /var and
# /var/lib would be group-writable, and berth refuses to extract its addon below them (no warm path).
umask 022
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
from="$repo/out"
version="$(node -p "require('$repo/package.json').version" 2>/dev/null || echo 0.0.0)"
tag="berth.local/berth-node:$version"
save=""
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="${2:?}"; shift ;;
    --tag) tag="${2:?}"; shift ;;
    --save) save="${2:?}"; shift ;;
    *) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
read -r -a podman <<<"${PODMAN:-podman}"
for f in "$from/berth" "$from/berth-shim"; do
  [ -x "$f" ] || { echo "build-image.sh: no $f (run npm run package first)" >&2; exit 1; }
done
nft="$(command -v nft)" || { echo "build-image.sh: nft is not installed (nftables)" >&2; exit 1; }

ctx="$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/lib/berth" "$root/usr/sbin" "$root/etc/berth/net" "$root/tmp" "$root/var/lib/berth" \
  "$root/run/berth" "$root/host/opt/cni/bin" "$root/host/etc/cni/net.d"
chmod 1777 "$root/tmp"
chmod 700 "$root/var/lib/berth" "$root/run/berth"
cp "$from/berth" "$from/berth-shim" "$root/usr/lib/berth/"
cp "$nft" "$root/usr/sbin/nft"

# copy_libs BINARY: every shared library ldd resolves for it (and the loader), at the same path.
copy_libs() {
  local lib
  for lib in $(ldd "$1" 2>/dev/null | grep -oE '/[^ ]+' || true); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
copy_libs "$from/berth"
copy_libs "$nft"
copy_libs "$from/berth-shim"
# nft reads these at start (protocol and service names in rules); tiny.
for f in /etc/protocols /etc/services; do [ -f "$f" ] && cp "$f" "$root/etc/"; done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

git_rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="berth node agent" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$git_rev" \\
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/lib/berth:/usr/sbin:/usr/bin
ENTRYPOINT ["/usr/lib/berth/berth", "node-agent"]
CMD ["--conflist", "/etc/berth/net/10-berth.conflist"]
EOF
"${podman[@]}" build --pull=never --network=none --layers=false -t "$tag" -f "$ctx/Containerfile" "$ctx" >&2
if [ -n "$save" ]; then
  rm -f "$save"
  "${podman[@]}" save --format oci-archive -o "$save" "$tag" >&2
fi
echo "$tag"
