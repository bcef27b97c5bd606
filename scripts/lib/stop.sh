# Sourced by end-to-end scripts. stop_pid PID [grace-seconds]: SIGTERM to a daemon this script started
# (containerd, berthd), SIGKILL once the grace (default 10 s) has passed, then reap it. A daemon stuck on a
# hung child must not hang the run's cleanup; its pid is only ever one the script itself started.
stop_pid() {
  local pid="$1" grace="${2:-10}" i
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  for ((i = 0; i < grace * 10; i++)); do
    # Gone, or exited and waiting to be reaped (a zombie still answers kill -0).
    grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pid/status" || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

# remove_cgroups NAME: removes the empty cgroup NAME (a run's own, e.g. ctr's namespace or a pods' parent)
# and the empty cgroups right under it, in every hierarchy; fails when one is not empty.
remove_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/"$1"/* /sys/fs/cgroup/"$1"/*; do [ ! -d "$c" ] || rmdir "$c" || return 1; done
  for c in /sys/fs/cgroup/*/"$1" /sys/fs/cgroup/"$1"; do [ ! -d "$c" ] || rmdir "$c" || return 1; done
}
