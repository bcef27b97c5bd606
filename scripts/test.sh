#!/usr/bin/env bash
# The test command: dependencies and build (ensure-deps.sh), lint and the format check, the vitest
# projects this user can run (unit; root as well when run as root, and the bridge root tests once more on
# the warm path), then every end-to-end script scripts/*-test.sh (root only; each counts
# as one test). Ends with one plain line "N passed, N failed"; exits non-zero if anything failed or if
# no test ran at all.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if ! bash scripts/ensure-deps.sh; then
  echo "test.sh: scripts/ensure-deps.sh failed (dependencies or build)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

reports="$(mktemp -d "${TMPDIR:-/tmp}/berth-test.XXXXXX")"
trap 'rm -rf "$reports"' EXIT
passed=0
failed=0
skipped_tests=0
skipped=()

# Counts one vitest JSON report: failed tests, plus test files that failed without a failing test
# (a file that does not even load).
count_report() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const brokenFiles = r.testResults.filter(
      (f) => f.status === "failed" && !f.assertionResults.some((a) => a.status === "failed"));
    console.log(r.numPassedTests, r.numFailedTests + brokenFiles.length, r.numPendingTests + r.numTodoTests);' "$1"
}

# House rules first: lint (type-aware, with the room table) and the format check. Each counts as
# one test, so a submission that breaks either fails the run.
for check in lint format:check; do
  if npm run --silent "$check" >&2; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "test.sh: npm run $check failed" >&2
  fi
done

# Each run: a report name, then the vitest arguments. root-warm runs the bridge root tests again on the warm
# path (BERTH_TEST_MODE=warm: every plugin call forwarded to a real berthd per fixture, as the shim does).
runs=("unit --project unit")
if [ "$(id -u)" = 0 ]; then
  runs+=("root --project root" "root-warm --project root test/bridge")
else
  echo "test.sh: not root: skipping the root project" >&2
fi
# The root projects run in a private network namespace, and a private mount namespace so that /sys shows that
# namespace's links: whatever subnets and names they use, they cannot meet another run's on this shared
# machine or the host's own networking, and what a killed run leaves behind goes with the namespace.
# The cgroup tree under /sys is kept (moved aside and back over the new sysfs): runc and podman need it.
# Then every mount is made shared again, among this namespace's own peers only (nothing reaches the host's):
# as on a host, a container started with a slave mount of /run/netns sees the netns files made after it
# (node-image-test's agent, containerd's pods).
# And a PID namespace: its first process, this bash, runs the command and reaps orphans; when it exits (the
# command ended, or timed out and was killed), the kernel kills whatever is left in the namespace (a berthd,
# etcd, containerd or conmon that a killed script could not stop), and so does unshare's --kill-child when
# test.sh itself is killed. Pids repeat between runs now, and the names made from them (bt<pid>-…) with
# them: /run/netns (the netns files), /var/lib/cni (runtimes' result caches) and /run/berth (berth's default
# run dir and socket) get a tmpfs of the run's own, and TMPDIR a directory of its own, removed afterwards,
# so that neither another run nor the host sees them, and whatever a killed run left there goes too.
in_private_netns() {
  local run_tmp rc
  run_tmp="$(mktemp -d "${TMPDIR:-/tmp}/berth-test-run.XXXXXX")" || return 1
  chmod 1777 "$run_tmp" # as /tmp: tests that run something as nobody reach (or write) their files there
  TMPDIR="$run_tmp" unshare --net --mount --pid --fork --kill-child --propagation private -- bash -c '
    c="$(mktemp -d /tmp/berth-cgroup.XXXXXX)" || exit 1
    { mount --rbind /sys/fs/cgroup "$c" && mount -t sysfs sysfs /sys && mount --move "$c" /sys/fs/cgroup; } ||
      { umount -l "$c" 2>/dev/null; rmdir "$c"; exit 1; }
    rmdir "$c" && mount -t proc proc /proc && mkdir -p /run/netns /var/lib/cni &&
      mount -t tmpfs -o mode=755 berth-test-netns /run/netns &&
      mount -t tmpfs -o mode=755 berth-test-cni /var/lib/cni &&
      mkdir -p /run/berth && mount -t tmpfs -o mode=700 berth-test-run /run/berth &&
      mount --make-rshared / && ip link set lo up || exit 1
    "$@"
    exit $?' in_private_netns "$@"
  rc=$?
  rm -rf "$run_tmp"
  return "$rc"
}
for run in "${runs[@]}"; do
  read -r project args <<<"$run"
  report="$reports/$project.json"
  # shellcheck disable=SC2206 # args are words
  # vitest itself, not npx: npx does not pass the timeout's TERM on.
  vitest=(timeout --foreground -k 30 1800 node_modules/.bin/vitest run $args --reporter=default --reporter=json --outputFile="$report")
  case "$project" in
    unit) "${vitest[@]}" ;;
    root) in_private_netns "${vitest[@]}" ;;
    root-warm) in_private_netns env BERTH_TEST_MODE=warm "${vitest[@]}" ;;
  esac
  rc=$?
  if [ -s "$report" ]; then
    read -r p f sk < <(count_report "$report")
  else
    p=0 f=0 sk=0
  fi
  skipped_tests=$((skipped_tests + sk))
  # vitest failing without a failed test in its report (crash, no report) still counts as a failure.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "test.sh: vitest project $project exited $rc" >&2; fi
  passed=$((passed + p))
  failed=$((failed + f))
done

shopt -s nullglob
for script in scripts/*-test.sh; do
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: not root: skipping $script" >&2
    skipped+=("$script")
    continue
  fi
  echo "test.sh: running $script" >&2
  # Each script in a namespace of its own, as the vitest root projects: its bridges, routes, nft tables and
  # sysctls meet no other run's on this shared machine, whatever names and subnets it picks. The timeout
  # (TERM, the script's trap cleans up; KILL 30 s later) keeps one hang from eating CI's whole budget;
  # --foreground keeps it in our process group, so Ctrl-C or a cancelled job still reaches the script.
  in_private_netns timeout --foreground -k 30 900 bash "$script"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
  elif [ "$rc" -eq 77 ]; then # the script's own verdict: it cannot run here (it says why)
    skipped+=("$script")
  else
    failed=$((failed + 1))
    echo "test.sh: $script failed (exit $rc)" >&2
  fi
done

# Skips are not passes: say what did not run (vitest tests skipped here, scripts that exited 77).
echo "test.sh: skipped: $skipped_tests vitest test(s); ${#skipped[@]} script(s)${skipped[*]:+: ${skipped[*]}}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ $((passed + failed)) -gt 0 ]
