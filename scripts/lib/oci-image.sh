# Builds single-layer OCI image tarballs from a directory, offline (no registry is reachable here), for
# `ctr images import` and `podman load`. Sourced, not run. Needs jq, tar, sha256sum.
#
#   oci_image_tar ROOTFS_DIR IMAGE_REF CONFIG_JSON OUT_TAR
#     ROOTFS_DIR   the image's file system
#     IMAGE_REF    full name, e.g. berth.local/busybox:1 (recorded as the image's name in index.json)
#     CONFIG_JSON  the image config's "config" object, e.g. '{"Entrypoint":["/pause"]}'
oci_image_tar() {
  local rootfs="$1" ref="$2" config="$3" out="$4"
  local work
  work="$(mktemp -d "${out}.work.XXXXXX")" || return 1
  mkdir -p "$work/blobs/sha256"
  # Sorted, numeric owners, fixed mtime: the same tree gives the same layer digest.
  tar -C "$rootfs" --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$work/layer.tar" . || return 1
  _oci_blob() { local d; d="$(sha256sum "$1" | cut -c1-64)"; mv "$1" "$work/blobs/sha256/$d"; echo "$d"; }
  local layer_size layer config_file config_digest config_size manifest manifest_size
  layer_size="$(stat -c %s "$work/layer.tar")"
  layer="$(_oci_blob "$work/layer.tar")"
  config_file="$work/config.json"
  jq -n --arg d "sha256:$layer" --argjson c "$config" \
    '{architecture:"amd64", os:"linux", config:$c, rootfs:{type:"layers", diff_ids:[$d]},
      history:[{created_by:"berth scripts/lib/oci-image.sh"}]}' >"$config_file" || return 1
  config_size="$(stat -c %s "$config_file")"
  config_digest="$(_oci_blob "$config_file")"
  jq -n --arg c "sha256:$config_digest" --argjson cs "$config_size" --arg l "sha256:$layer" --argjson ls "$layer_size" \
    '{schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$c, size:$cs},
      layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar", digest:$l, size:$ls}]}' >"$work/manifest.json" || return 1
  manifest_size="$(stat -c %s "$work/manifest.json")"
  manifest="$(_oci_blob "$work/manifest.json")"
  jq -n --arg m "sha256:$manifest" --argjson ms "$manifest_size" --arg ref "$ref" --arg tag "${ref##*:}" \
    '{schemaVersion:2, manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json", digest:$m, size:$ms,
      platform:{architecture:"amd64", os:"linux"},
      annotations:{"io.containerd.image.name":$ref, "org.opencontainers.image.ref.name":$tag}}]}' >"$work/index.json" || return 1
  echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
  tar -C "$work" -cf "$out" oci-layout index.json blobs || return 1
  rm -rf "$work"
}

# A static pause program (what the sandbox container runs): sleeps until SIGTERM/SIGINT, reaps children.
# pause_binary OUT: compiles it with gcc -static.
pause_binary() {
  local src
  src="$(mktemp --suffix=.c)" || return 1
  cat >"$src" <<'EOF'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
  gcc -static -Os -o "$1" "$src"
  local rc=$?
  rm -f "$src"
  return $rc
}
