#!/usr/bin/env bash
# Proof with a real runtime (root, by hand; not part of scripts/test.sh because it installs Debian's
# containerd, runc and busybox-static and writes /opt/cni/bin and /etc/cni/net.d, which `ctr run --cni`
# reads and no option moves): a private containerd (own root, state and socket, CRI plugin off) runs a
# busybox container with `ctr run --cni` on an installed berth (single executable, node off PATH), once
# per network: the container sees its berth address on eth0 and pings the gateway; on exit ctr's DEL
# leaves no lease. Everything it creates is named bt<pid>… and removed on exit; /opt/cni/bin and
# /etc/cni/net.d are removed again if they did not exist, else only berth's files in them are.
#   test/install/ctr-proof.sh   (after `npm run package`)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "ctr-proof.sh: must run as root" >&2; exit 1; }
[ -x "$repo/out/berth" ] || { echo "ctr-proof.sh: build out/berth first (npm run package)" >&2; exit 1; }
missing=()
for p in containerd runc busybox-static; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { echo "ctr-proof.sh: cannot install ${missing[*]}" >&2; exit 1; }
fi

P="bt$$"
tmp="$(mktemp -d "/tmp/$P-ctr.XXXXXX")"
net="$P-ctr"
br="${P}c"
conf="/etc/cni/net.d/00-$P.conflist"
made_bin=false made_conf=false
[ -d /opt/cni/bin ] || made_bin=true
[ -d /etc/cni/net.d ] || made_conf=true
sock="$tmp/containerd.sock"
ctrd_pid=""
ipfwd4="$(sysctl -n net.ipv4.ip_forward)"
fails=0

cleanup() {
  set +e
  ctr -a "$sock" task kill -s KILL "$P-c1" >/dev/null 2>&1
  ctr -a "$sock" container rm "$P-c1" >/dev/null 2>&1
  [ -n "$ctrd_pid" ] && kill "$ctrd_pid" && wait "$ctrd_pid" 2>/dev/null
  rm -f "$conf"
  if [ "$made_bin" = true ]; then rm -rf /opt/cni/bin; rmdir /opt/cni 2>/dev/null; else
    for f in berth berth-bridge berth-ipam; do rm -f "/opt/cni/bin/$f"; done
  fi
  if [ "$made_conf" = true ]; then rm -rf /etc/cni/net.d; rmdir /etc/cni 2>/dev/null; fi
  for l in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$l"; done
  ip link del "$br" 2>/dev/null
  sysctl -qw net.ipv4.ip_forward="$ipfwd4" >/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
check() { local name="$1"; shift; if "$@" >"$tmp/last.out" 2>&1; then echo "ok   $name"; else fails=$((fails + 1)); echo "FAIL $name"; sed 's/^/     | /' "$tmp/last.out" | head -20; fi; }

# A busybox image as an OCI layout tarball, made here (no registry is reachable).
img="$tmp/img"
mkdir -p "$img/rootfs/bin" "$img/blobs/sha256"
cp /bin/busybox "$img/rootfs/bin/busybox"
for a in sh ip ping cat sleep; do ln -s busybox "$img/rootfs/bin/$a"; done
tar -C "$img/rootfs" -cf "$tmp/layer.tar" .
blob() { local d; d="$(sha256sum "$1" | cut -c1-64)"; cp "$1" "$img/blobs/sha256/$d"; echo "$d"; }
layer="$(blob "$tmp/layer.tar")"
jq -n --arg d "sha256:$layer" '{architecture:"amd64", os:"linux", config:{Env:["PATH=/bin"], Cmd:["/bin/sh"]}, rootfs:{type:"layers", diff_ids:[$d]}}' >"$tmp/config.json"
config="$(blob "$tmp/config.json")"
jq -n --arg c "sha256:$config" --argjson cs "$(stat -c %s "$tmp/config.json")" --arg l "sha256:$layer" --argjson ls "$(stat -c %s "$tmp/layer.tar")" \
  '{schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
    config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$c, size:$cs},
    layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar", digest:$l, size:$ls}]}' >"$tmp/manifest.json"
manifest="$(blob "$tmp/manifest.json")"
jq -n --arg m "sha256:$manifest" --argjson ms "$(stat -c %s "$tmp/manifest.json")" \
  '{schemaVersion:2, manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json", digest:$m, size:$ms,
    annotations:{"io.containerd.image.name":"docker.io/library/berth-busybox:1", "org.opencontainers.image.ref.name":"1"}}]}' >"$img/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$img/oci-layout"
tar -C "$img" -cf "$tmp/image.tar" oci-layout index.json blobs

# berth where ctr looks, with node out of reach for the plugins: PATH for the runtime is a dir of symlinks.
"$repo/scripts/install.sh" --prefix /opt/cni/bin >"$tmp/install.out" || { cat "$tmp/install.out"; exit 1; }
mkdir -p /etc/cni/net.d
jq -n --arg n "$net" --arg b "$br" --arg d "$tmp/ipam" \
  '{cniVersion:"1.0.0", name:$n, plugins:[{type:"berth-bridge", bridge:$b, isGateway:true, ipMasq:true,
    ipam:{type:"berth-ipam", dataDir:$d, ranges:[[{subnet:"198.19.201.0/24", gateway:"198.19.201.1"}]]}}]}' >"$conf"
tools="$tmp/tools"
mkdir -p "$tools"
for t in containerd containerd-shim-runc-v2 runc ctr nft ip sh mount umount; do
  p="$(command -v "$t")" && ln -s "$p" "$tools/$t"
done
check "node is not on the runtime's PATH" bash -c "! env -i PATH='$tools' sh -c 'command -v node'"

cat >"$tmp/containerd.toml" <<EOF
version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
EOF
env -i PATH="$tools" BERTH_NATIVE_DIR="$tmp/native" containerd --config "$tmp/containerd.toml" --root "$tmp/root" \
  --state "$tmp/state" --address "$sock" >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 1 50); do ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
check "private containerd is up" ctr -a "$sock" version
check "image imported" ctr -a "$sock" images import --snapshotter native "$tmp/image.tar"

run_in_container() {
  env -i PATH="$tools" BERTH_NATIVE_DIR="$tmp/native" ctr -a "$sock" run --snapshotter native --cni --rm \
    docker.io/library/berth-busybox:1 "$P-c1" sh -c 'ip -4 -o addr show dev eth0; ping -c 1 -W 2 198.19.201.1' |
    tee "$tmp/run.out"
}
check "ctr run --cni: the container has a berth address on eth0 and pings the gateway" run_in_container
sed 's/^/     : /' "$tmp/run.out"
check "the address came from 198.19.201.0/24 (berth-ipam)" grep -q 'inet 198.19.201.' "$tmp/run.out"
# The network's lease dir exists (berth-ipam served the ADD) and holds no address file any more.
no_lease() { ls -la "$tmp/ipam/$net" && ! ls "$tmp/ipam/$net" | grep -q '^198\.19\.201\.'; }
check "ctr's DEL on exit released the lease" no_lease
check "no veth left on $br" bash -c "[ -z \"\$(ip -o link show master '$br' 2>/dev/null)\" ]"
echo "# ctr-proof: $fails failed"
[ "$fails" -eq 0 ]
