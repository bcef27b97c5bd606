# Check bookkeeping shared by the end-to-end scripts (sourced, not run): each check prints one "ok" or
# "FAIL" line, a failure shows the head of what the command printed. Needs $tmp set by the caller.
checks=0
fails=0

report() { # name, status
  checks=$((checks + 1))
  if [ "$2" = 0 ]; then
    echo "ok   $1"
  else
    fails=$((fails + 1))
    echo "FAIL $1"
    sed 's/^/     | /' "$tmp/last.out" | head -n 20
  fi
}
# check NAME CMD…: CMD must succeed.
check() { local name="$1"; shift; "$@" >"$tmp/last.out" 2>&1; report "$name" $?; }
# refuse NAME CMD…: CMD must fail.
refuse() { local name="$1"; shift; if "$@" >"$tmp/last.out" 2>&1; then report "$name" 1; else report "$name" 0; fi; }
