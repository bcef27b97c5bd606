#!/usr/bin/env bash
# The node image and its DaemonSet, end to end (root): builds the image (scripts/build-image.sh, FROM
# scratch, offline) into a private podman storage, then runs it as kubelet would run deploy/berth.yaml's
# pod — the manifest's args, its ConfigMap's network config, its hostPath mounts, host network and PID
# namespace, privileged — except that every host path is a temp dir here, never the real /opt/cni/bin,
# /etc/cni/net.d, /run/berth or /var/lib/cni. Then:
#   - what the agent installed: berth, berth-bridge and berth-ipam (= berth-shim), executable, byte for byte
#     the build; the config last (the agent's log order); no temp file left behind;
#   - pods through containerd's CRI plugin on what it installed (scripts/cri-test.sh --bin-dir --conflist),
#     their addresses handed out by the agent's berthd (berthd_allocations_total), every berth-bridge ADD
#     run by it in-process (the warm path: containerd's /var/run/netns/… paths visible in the container);
#   - SIGTERM (podman stop): the agent exits 0, plugins and config stay, the shims still answer (standalone);
#     a second start changes no file (idempotent);
#   - the liveness/readiness route: berthd from the image with --metrics-address in a private network
#     namespace answers GET /v1/health over TCP, as the manifest's probes ask;
#   - the manifest parses (kubectl kustomize: every document has apiVersion, kind, name) and holds together:
#     mounts name volumes, probes hit the --metrics-address port, the ConfigMap's config is one the agent
#     accepts.
# Everything is named bt<pid>…, uses 198.19.243.0/24, and is removed on exit, also on failure.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "node-image-test.sh: must run as root" >&2; exit 1; }
for tool in podman jq curl python3 node ip; do
  command -v "$tool" >/dev/null || { echo "node-image-test.sh: missing $tool (see scripts/ensure-deps.sh)" >&2; exit 1; }
done
kubectl_bin="$(command -v kubectl || true)"
# shellcheck source=lib/sea.sh
. "$repo/scripts/lib/sea.sh"
require_sea_fuse node-image-test.sh

P="bt$$"
tmp="$(mktemp -d "/tmp/$P-img.XXXXXX")"
host="$tmp/host"
tag="berth.local/berth-node:$P"
probe_ns="$P-probe"
# Its own network config dir too: with the default, podman's CNI backend writes /etc/cni/net.d/cni.lock on the
# host (the agent runs on the host network, so no CNI network is ever used).
podman_=(podman --root "$tmp/storage" --runroot "$tmp/runroot" --storage-driver vfs --cgroup-manager cgroupfs
  --events-backend file --tmpdir "$tmp/podman-tmp" --network-config-dir "$tmp/podman-net.d")
net="$P-node"
# podman sets the open-files and process limits of a privileged container above ours, which runc cannot do
# where CAP_SYS_RESOURCE is missing (this VM): our own open-files limit, and a process limit below ours
# (root with CAP_SYS_ADMIN, as the agent is, is not held to it anyway).
limits=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
br="${P}nd"

# shellcheck source=lib/checks.sh
. "$repo/scripts/lib/checks.sh"

# podman's part of the cleanup, also run before the last check (it must touch nothing outside the run).
podman_gone() {
  local p
  # If podman could not remove the agent: it (privileged, host PID) and its conmon must not outlive the run.
  # Only then, and only a pid that is still a conmon or a berth (a pid of one that exited may be anyone's).
  if ! "${podman_[@]}" rm -f -t 5 "$P-agent" >/dev/null 2>&1; then
    for p in $("${podman_[@]}" inspect -f '{{.State.Pid}} {{.State.ConmonPid}}' "$P-agent" 2>/dev/null); do
      [ "$p" -gt 1 ] 2>/dev/null && grep -qxE 'conmon|berth' "/proc/$p/comm" 2>/dev/null && kill -9 "$p" 2>/dev/null
    done
  fi
  "${podman_[@]}" rm -f -t 5 "$P-probe" >/dev/null 2>&1
  "${podman_[@]}" rmi -f "$tag" >/dev/null 2>&1
}
cleanup() {
  set +e
  podman_gone
  ip netns del "$probe_ns" 2>/dev/null
  for l in $(ip -o link show master "$br" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$l"; done
  ip link del "$br" 2>/dev/null
  rm -f /var/lib/cni/results/"$net"-* 2>/dev/null
  findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "# node-image-test: $(podman --version), dir $tmp"
etc_before="$(ls -A /etc/cni/net.d 2>/dev/null)"

# --- the manifest --------------------------------------------------------------------------------------
manifest="$repo/deploy/berth.yaml"
# One JSON object with what the test needs of the manifest; fails on anything that does not hold together.
read_manifest() {
  python3 - "$manifest" >"$tmp/manifest.json" <<'EOF'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {d["kind"]: d for d in docs}
for d in docs:
    assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
ds, cm = by_kind["DaemonSet"], by_kind["ConfigMap"]
spec = ds["spec"]["template"]["spec"]
assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
assert spec["hostNetwork"] is True, "hostNetwork"
# Not the cluster's DNS: CoreDNS needs the pod network this pod brings up (a cold start would deadlock).
assert spec.get("dnsPolicy", "ClusterFirst") in ("Default", "ClusterFirst"), "dnsPolicy"
assert any(t.get("operator") == "Exists" and "key" not in t for t in spec["tolerations"]), "tolerate all taints"
c = spec["containers"][0]
assert c["securityContext"]["privileged"] is True
assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], "requests"
vols = {v["name"]: v for v in spec["volumes"]}
mounts = []
for m in c["volumeMounts"]:
    v = vols[m["name"]]  # every mount names a volume
    mounts.append({"mountPath": m["mountPath"], "hostPath": v.get("hostPath", {}).get("path"),
                   "configMap": v.get("configMap", {}).get("name"), "readOnly": m.get("readOnly", False),
                   "propagation": m.get("mountPropagation")})
args = c["args"]
metrics = [a.split("=", 1)[1] for a in args if a.startswith("--metrics-address=")]
assert len(metrics) == 1, "--metrics-address"
mport = int(metrics[0].rsplit(":", 1)[1])
for p in ("readinessProbe", "livenessProbe"):
    g = c[p]["httpGet"]
    assert g["path"] == "/v1/health" and g["port"] == mport and g["host"] == "127.0.0.1", p
conflist_arg = [a.split("=", 1)[1] for a in args if a.startswith("--conflist=")][0]
cm_mount = [m for m in mounts if m["configMap"] == cm["metadata"]["name"]][0]
name = conflist_arg[len(cm_mount["mountPath"]) + 1:]
assert conflist_arg.startswith(cm_mount["mountPath"] + "/") and name in cm["data"], "conflist from the ConfigMap"
print(json.dumps({"args": args, "mounts": mounts, "conflistName": name, "conflist": json.loads(cm["data"][name]),
                  "image": c["image"], "metricsPort": mport}))
EOF
}
check "deploy/berth.yaml holds together (mounts name volumes, probes on /v1/health at --metrics-address, config from the ConfigMap)" read_manifest
kustomize_parse() {
  [ -n "$kubectl_bin" ] || { echo "no kubectl"; return 1; }
  mkdir -p "$tmp/kz"
  cp "$manifest" "$tmp/kz/berth.yaml"
  printf 'resources:\n- berth.yaml\n' >"$tmp/kz/kustomization.yaml"
  kubectl kustomize "$tmp/kz" >"$tmp/kz/out.yaml" &&
    [ "$(grep -c '^kind:' "$tmp/kz/out.yaml")" = "$(grep -c '^kind:' "$manifest")" ]
}
check "kubectl kustomize parses every document of deploy/berth.yaml" kustomize_parse
[ "$fails" = 0 ] || exit 1

# --- build -----------------------------------------------------------------------------------------------
if [ ! -f "$repo/dist/sea/entry.js" ] || [ ! -f "$repo/native/build/Release/berth_native.node" ]; then
  (cd "$repo" && npm run build >&2)
fi
check "berth built (scripts/package.js)" node "$repo/scripts/package.js" --out "$tmp/build"
mkdir -p "$tmp/podman-tmp" "$tmp/podman-net.d"
build_image() { PODMAN="${podman_[*]}" bash "$repo/scripts/build-image.sh" --from "$tmp/build" --tag "$tag"; }
check "image built offline from scratch (scripts/build-image.sh)" build_image
[ "$fails" = 0 ] || exit 1
image_files() {
  local ids
  ids="$("${podman_[@]}" image inspect "$tag" --format '{{.Size}} {{json .Config.Entrypoint}}')" || return 1
  echo "$ids"
  grep -q '"/usr/lib/berth/berth","node-agent"' <<<"$ids"
}
check "image entrypoint is berth node-agent" image_files

# --- run it as kubelet would: the manifest's args and mounts, host paths relocated into $host --------------
# The config the ConfigMap holds, with this run's names, subnet, lease dir and socket (the plugins run on the
# host and reach berthd through the socket in the mounted /run/berth).
mkdir -p "$host/configmap" "$host/opt/cni/bin" "$host/etc/cni/net.d" "$host/run/berth" "$host/var/lib/cni" \
  "$host/var/lib/berth"
chmod 700 "$host/run/berth" "$host/var/lib/berth"
jq --arg n "$net" --arg b "$br" --arg d "$host/var/lib/cni/networks" --arg s "$host/run/berth/berthd.sock" '
  .conflist | .name = $n | .plugins[0].bridge = $b
  | .plugins[0].ipam.ranges = [[{subnet: "198.19.243.0/24", gateway: "198.19.243.1"}]]
  | .plugins[0].ipam.dataDir = $d | .plugins[0].ipam.daemonSocket = $s' "$tmp/manifest.json" \
  >"$host/configmap/$(jq -r .conflistName "$tmp/manifest.json")"
volumes=()
while read -r m; do
  mp="$(jq -r .mountPath <<<"$m")" hp="$(jq -r '.hostPath // empty' <<<"$m")" ro="$(jq -r .readOnly <<<"$m")"
  prop="$(jq -r '.propagation // empty' <<<"$m")"
  if [ "$(jq -r '.configMap // empty' <<<"$m")" != "" ]; then src="$host/configmap"
  elif { [ "$hp" = /run/netns ] || [ "$hp" = /lib/modules ]; } && [ -d "$hp" ]; then
    src="$hp" ro=true # read only here, never written
  else src="$host$hp"; mkdir -p "$src"; fi
  # HostToContainer is a slave mount: the namespaces runtimes mount on the host later appear inside.
  opts=()
  [ "$ro" = true ] && opts+=(ro)
  [ "$prop" = HostToContainer ] && opts+=(rslave)
  volumes+=(-v "$src:$mp$([ ${#opts[@]} -gt 0 ] && (IFS=,; echo ":${opts[*]}"))")
done < <(jq -c '.mounts[]' "$tmp/manifest.json")
# The lease dir also at its host path: the config names it, and berthd opens it inside the container.
volumes+=(-v "$host/var/lib/cni:$host/var/lib/cni")
# The run dir likewise: berthd serves only plugin calls whose BERTH_RUN_DIR is its own --run-dir, and the
# plugins here use this run's (on a node both are /run/berth, the manifest's mount).
volumes+=(-v "$host/run/berth:$host/run/berth")
# The manifest's args, but no TCP listener on the host's loopback (checked below in a namespace of ours).
mapfile -t args < <(jq -r '.args[] | select(startswith("--metrics-address=") | not)' "$tmp/manifest.json")
args+=("--run-dir=$host/run/berth")
agent_log="$tmp/agent.log"
start_agent() {
  "${podman_[@]}" run -d "${limits[@]}" --name "$P-agent" --network host --pid host --privileged "${volumes[@]}" "$tag" \
    "${args[@]}" >/dev/null
}
healthy() {
  for _ in $(seq 1 150); do
    curl -sf --unix-socket "$host/run/berth/berthd.sock" http://berthd/v1/health && return 0
    sleep 0.2
  done
  "${podman_[@]}" logs "$P-agent"
  return 1
}
check "agent started (podman run: host network and PID, privileged, the manifest's mounts and args)" start_agent
check "berthd in the agent answers /v1/health on the host's socket dir" healthy
"${podman_[@]}" logs "$P-agent" >"$agent_log" 2>&1
[ "$fails" = 0 ] || exit 1

installed_ok() {
  local f
  cmp "$tmp/build/berth" "$host/opt/cni/bin/berth" || return 1
  for f in berth-bridge berth-ipam; do cmp "$tmp/build/berth-shim" "$host/opt/cni/bin/$f" || return 1; done
  for f in berth berth-bridge berth-ipam; do [ "$(stat -c %a "$host/opt/cni/bin/$f")" = 755 ] || return 1; done
  ls -la "$host/opt/cni/bin" "$host/etc/cni/net.d"
  [ "$(ls -A "$host/opt/cni/bin" | sort | tr '\n' ' ')" = "berth berth-bridge berth-ipam " ] &&
    [ "$(ls -A "$host/etc/cni/net.d")" = "$(jq -r .conflistName "$tmp/manifest.json")" ]
}
check "installed into the host's bin dir: berth, berth-bridge, berth-ipam (0755, the build's bytes), no temp file" installed_ok
conflist_ok() { cmp "$host/configmap/"* "$host/etc/cni/net.d/"*; }
check "the ConfigMap's network config installed as is into the host's conf dir" conflist_ok
config_last() {
  cat "$agent_log"
  # The DaemonSet's --log-format=json: the agent's lines are JSON lines, with its component.
  grep '"msg":"installed ' "$agent_log" | grep -F '"component":"node-agent"' | tail -n 1 |
    grep -q '/host/etc/cni/net.d/' &&
    [ "$(grep -c '"msg":"installed /host/opt/cni/bin/' "$agent_log")" = 3 ]
}
check "the config was written after the three plugins (agent log order)" config_last

# --- pods through containerd on what the agent installed -----------------------------------------------------
conf="$host/etc/cni/net.d/$(jq -r .conflistName "$tmp/manifest.json")"
seq_pods="${CRI_TEST_SEQ_PODS:-2}" par_pods="${CRI_TEST_PAR_PODS:-4}"
pods() {
  CRI_TEST_SEQ_PODS=$seq_pods CRI_TEST_PAR_PODS=$par_pods bash "$repo/scripts/cri-test.sh" \
    --bin-dir "$host/opt/cni/bin" --conflist "$conf" --berthd-socket "$host/run/berth/berthd.sock" \
    --run-dir "$host/run/berth"
}
check "pods through containerd's CRI plugin on the installed plugins and config (cri-test.sh installed mode)" pods
cp "$tmp/last.out" "$tmp/cri.out"
grep -E '^#|FAIL' "$tmp/cri.out" | sed 's/^/     /'
served() {
  curl -sf --unix-socket "$host/run/berth/berthd.sock" http://berthd/metrics |
    grep "berthd_allocations_total{network=\"$net\"}" | awk -v want=$((seq_pods + par_pods)) '{print; if ($2 != want) exit 1}' | grep -q .
}
check "the agent's berthd handed out the $((seq_pods + par_pods)) pod addresses (berthd_allocations_total)" served

# --- SIGTERM: plugins stay ---------------------------------------------------------------------------------
stop_agent() {
  "${podman_[@]}" stop -t 20 "$P-agent" >/dev/null || return 1
  local code
  code="$("${podman_[@]}" inspect "$P-agent" --format '{{.State.ExitCode}}')"
  echo "exit code $code"
  [ "$code" = 0 ]
}
check "SIGTERM (podman stop): the agent exits 0" stop_agent
check "after the stop the plugins and the config are still installed" installed_ok
still_answers() {
  local out
  out="$(CNI_COMMAND=VERSION BERTH_SOCKET="$host/run/berth/berthd.sock" BERTH_RUN_DIR="$tmp/run" \
    BERTH_NATIVE_DIR="$tmp/native" "$host/opt/cni/bin/berth-bridge" </dev/null)" || return 1
  echo "$out"
  jq -e '.supportedVersions | index("1.0.0")' <<<"$out"
}
check "the installed berth-bridge still answers with no berthd (the shim runs berth standalone)" still_answers
restart_unchanged() {
  "${podman_[@]}" rm "$P-agent" >/dev/null && start_agent && healthy >/dev/null || return 1
  "${podman_[@]}" logs "$P-agent" 2>&1 | grep -F '"component":"node-agent"'
  [ "$("${podman_[@]}" logs "$P-agent" 2>&1 | grep -F '"component":"node-agent"' | grep -c '"msg":"unchanged ')" = 4 ]
}
check "a second start finds every file in place and changes none" restart_unchanged
"${podman_[@]}" stop -t 20 "$P-agent" >/dev/null 2>&1

# --- the probes' route over TCP, in a network namespace of ours ---------------------------------------------
mkdir -p "$tmp/probe/run"
chmod 700 "$tmp/probe/run"
probe_route() {
  ip netns add "$probe_ns" && ip -n "$probe_ns" link set lo up || return 1
  local port
  port="$(jq -r .metricsPort "$tmp/manifest.json")"
  "${podman_[@]}" run -d "${limits[@]}" --name "$P-probe" --network "ns:/run/netns/$probe_ns" --privileged \
    -v "$tmp/probe/run:/run/berth" -v "$host/var/lib/berth:/var/lib/berth" "$tag" \
    --cni-bin-dir /tmp --socket /run/berth/berthd.sock --metrics-address "127.0.0.1:$port" >/dev/null || return 1
  for _ in $(seq 1 150); do
    if ip netns exec "$probe_ns" curl -sf "http://127.0.0.1:$port/v1/health" >"$tmp/health.json"; then
      cat "$tmp/health.json"
      jq -e '.ok == true' "$tmp/health.json"
      return
    fi
    sleep 0.2
  done
  "${podman_[@]}" logs "$P-probe"
  return 1
}
check "GET /v1/health over TCP at the manifest's --metrics-address port answers ok (liveness/readiness)" probe_route
podman_gone
etc_untouched() { local now; now="$(ls -A /etc/cni/net.d 2>/dev/null)"; [ "$now" = "$etc_before" ] || { echo "was: $etc_before now: $now"; return 1; }; }
check "the host's /etc/cni/net.d as before (podman had its own network config dir)" etc_untouched

echo "# node-image-test: $checks checks, $fails failed"
[ "$fails" -eq 0 ]
