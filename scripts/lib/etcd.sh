# A 3-member etcd 3.4 cluster on loopback inside a network namespace, for the end-to-end scripts (sourced,
# not run). Peers talk on 127.0.0.1; clients are also served on ETCD_CLIENT_HOST when set (an address the
# caller put in that namespace, e.g. an underlay bridge that other namespaces reach, or a second loopback
# address a rule can cut off). The caller sets before use:
#   ETCD_NS     the namespace (already created, lo up)
#   ETCD_DIR    a temp dir of the caller's (data dirs and logs go there; the caller removes it)
#   ETCD_TOKEN  a cluster token unique to the run (e.g. bt<pid>)
# and calls etcd_kill_all from its cleanup trap. PIDs are those of `ip netns exec`, which execs etcd, so
# kill -9 and the cleanup hit the real process.
ETCD_CLUSTER=m1=http://127.0.0.1:32180,m2=http://127.0.0.1:32280,m3=http://127.0.0.1:32380
ETCD_ENDPOINTS=http://127.0.0.1:32179,http://127.0.0.1:32279,http://127.0.0.1:32379
declare -gA ETCD_PID

# The client endpoints on another of the members' client hosts: etcd_endpoints_on 127.0.0.3
etcd_endpoints_on() { echo "http://$1:32179,http://$1:32279,http://$1:32379"; }

etcd_start_member() { # i new|existing
  local i=$1 c=$((32079 + $1 * 100)) p=$((32080 + $1 * 100))
  local clients="http://127.0.0.1:$c"
  [ -n "${ETCD_CLIENT_HOST:-}" ] && clients="$clients,http://$ETCD_CLIENT_HOST:$c"
  # `ip netns exec` itself, not a shell function: $! must be the PID etcd runs under.
  ip netns exec "$ETCD_NS" etcd --name "m$i" --data-dir "$ETCD_DIR/m$i" \
    --listen-client-urls "$clients" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token "$ETCD_TOKEN" --initial-cluster-state "$2" \
    --log-level error --logger zap >>"$ETCD_DIR/m$i.log" 2>&1 &
  ETCD_PID[$i]=$!
}

etcd_start_all() { for i in 1 2 3; do etcd_start_member "$i" "${1:-new}"; done; }

# etcdctl inside the namespace, against every member.
etcd_ctl() { ip netns exec "$ETCD_NS" env ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" "$@"; }

etcd_healthy() { # [timeout seconds]
  local end=$((SECONDS + ${1:-15}))
  until etcd_ctl --command-timeout=1s endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

# The member number (1–3) of the current leader.
etcd_leader() {
  etcd_ctl endpoint status -w json 2>/dev/null |
    node -e 'const a=JSON.parse(require("fs").readFileSync(0,"utf8")); const i=a.findIndex(s=>s.Status.header.member_id===s.Status.leader); console.log(i+1)'
}

etcd_kill_member() { # i
  local p="${ETCD_PID[$1]:-}"
  [ -n "$p" ] || return 0
  kill -9 "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  # Reaped: its pid may be anyone's now, and the cleanup must not kill it again.
  unset "ETCD_PID[$1]"
  return 0
}

etcd_kill_all() { for i in "${!ETCD_PID[@]}"; do etcd_kill_member "$i"; done; }
