#!/usr/bin/env bash
# Makes a machine ready to build and test berth, then builds it. Idempotent; on a fresh Debian 12 run it
# as root (CI does). As another user it installs nothing system-wide and only says what is missing.
#
# Installs: the Debian packages below (only the missing ones), cnitool and the reference plugins through
# ../shared/tools/setup-cni-reference.sh when that file sits beside the repo, the npm dependencies
# (npm ci, skipped when node_modules already matches the lock file), then runs `npm run build`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "ensure-deps: $*" >&2; }

# containerd, runc, busybox-static: scripts/cri-test.sh (a private containerd with its CRI plugin).
# podman, python3-yaml: scripts/node-image-test.sh (builds and runs the node image, reads deploy/berth.yaml).
# procps: sysctl, pgrep and ps in the end-to-end scripts; git: install-test.sh's build id (not Essential).
# iptables: the reference bridge's ipMasq, and the tests that read and make its chains (reference-masquerade);
# named here, not left to containernetworking-plugins' Depends.
pkgs=(nftables iproute2 iputils-ping jq containernetworking-plugins build-essential python3 golang-go
  golang-github-appc-cni-dev curl etcd-server etcd-client containerd runc busybox-static podman python3-yaml
  procps git iptables)
# kubectl (node-image-test.sh parses the manifest with `kubectl kustomize`): Debian's kubernetes-client
# only when no kubectl is there, since another kubectl package owns the same /usr/bin/kubectl.
command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "$(id -u)" = 0 ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # Another apt run (a second CI job) holds dpkg's lock: wait for it rather than fail at once. And do not
    # start etcd or containerd while installing them (on a systemd host they would, and stay running): the
    # tests start their own, privately. policy-rc.d is Debian's switch for that; ours refuses only those two
    # and carries a marker, so one a killed run left behind is known as ours and replaced, then removed.
    policy=/usr/sbin/policy-rc.d
    marker='# berth ensure-deps'
    own_policy=false
    if [ ! -e "$policy" ] || grep -qxF "$marker" "$policy"; then
      printf '#!/bin/sh\n%s\ncase "$1" in etcd | etcd.service | containerd | containerd.service) exit 101 ;; esac\nexit 0\n' \
        "$marker" >"$policy" && chmod 755 "$policy" && own_policy=true
      trap '[ "$own_policy" = true ] && rm -f "$policy"' EXIT
    fi
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$own_policy" = true ]; then rm -f "$policy"; own_policy=false; fi
  fi
  setup="$repo/../shared/tools/setup-cni-reference.sh"
  if [ -f "$setup" ]; then
    bash "$setup" >&2
  else
    # A clone on its own (CI's fresh clone): cnitool from this repo's copy of the project's source
    # (scripts/cnitool/main.go, on Debian's libcni; the reference plugins come from containernetworking-plugins
    # above). The same build and up-to-date stamp as setup-cni-reference.sh, offline.
    cnitool=/usr/local/bin/cnitool
    sum="$(sha256sum "$repo/scripts/cnitool/main.go" | cut -c1-16)"
    if [ -x "$cnitool" ] && [ "$(cat "$cnitool.srcsum" 2>/dev/null || true)" = "$sum" ]; then
      log "cnitool up to date at $cnitool"
    else
      b="$(mktemp -d)"
      mkdir -p "$b/src/cnitool" && cp "$repo/scripts/cnitool/main.go" "$b/src/cnitool/main.go"
      (cd "$b/src/cnitool" && GO111MODULE=off GOPATH="$b:/usr/share/gocode" GOCACHE="$b/cache" GOFLAGS= \
        GOPROXY=off CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$cnitool" .)
      rm -rf "$b"
      echo "$sum" >"$cnitool.srcsum"
      log "cnitool built at $cnitool (scripts/cnitool/main.go)"
    fi
  fi
elif [ ${#missing[@]} -gt 0 ]; then
  log "not root: not installing ${missing[*]} (the unit tests do not need them)"
fi

command -v node >/dev/null || { log "node (>= 20) is required and not installed"; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || { log "node >= 20 is required, found $(node --version)"; exit 1; }

cd "$repo"
# `npm ls` fails when an installed package is missing or at another version than the lock file pins.
if [ -d node_modules ] && npm ls --all >/dev/null 2>&1; then
  log "node_modules up to date"
else
  log "npm ci"
  npm ci --no-audit --no-fund >&2
fi
log "npm run build"
npm run build >&2
