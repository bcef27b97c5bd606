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

# Counts one vitest JSON report: failed tests, plus test files that failed without a failing test
# (a file that does not even load).
count_report() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const brokenFiles = r.testResults.filter(
      (f) => f.status === "failed" && !f.assertionResults.some((a) => a.status === "failed"));
    console.log(r.numPassedTests, r.numFailedTests + brokenFiles.length);' "$1"
}

# House rules first: lint (type-aware, with DESIGN.md's room table) and the format check. Each counts as
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
in_private_netns() {
  unshare --net --mount --propagation private -- \
    bash -c 'mount -t sysfs sysfs /sys && ip link set lo up && exec "$@"' in_private_netns "$@"
}
for run in "${runs[@]}"; do
  read -r project args <<<"$run"
  report="$reports/$project.json"
  # shellcheck disable=SC2086
  case "$project" in
    unit) npx vitest run $args --reporter=default --reporter=json --outputFile="$report" ;;
    root) in_private_netns npx vitest run $args --reporter=default --reporter=json --outputFile="$report" ;;
    root-warm)
      in_private_netns env BERTH_TEST_MODE=warm \
        npx vitest run $args --reporter=default --reporter=json --outputFile="$report"
      ;;
  esac
  rc=$?
  if [ -s "$report" ]; then
    read -r p f < <(count_report "$report")
  else
    p=0 f=0
  fi
  # vitest failing without a failed test in its report (crash, no report) still counts as a failure.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "test.sh: vitest project $project exited $rc" >&2; fi
  passed=$((passed + p))
  failed=$((failed + f))
done

shopt -s nullglob
for script in scripts/*-test.sh; do
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: not root: skipping $script" >&2
    continue
  fi
  echo "test.sh: running $script" >&2
  if bash "$script"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "test.sh: $script failed" >&2
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ $((passed + failed)) -gt 0 ]
