#!/usr/bin/env bash
# Runs `swift test --skip-build` with a deadline. A test run that hangs must not eat CI's whole budget: at the
# deadline this prints what was still running (the process tree, and every thread's stack of the test process
# when gdb is here), then kills the run and fails.
set -uo pipefail
deadline=${SYNCD_TEST_DEADLINE:-1500}
swift=${SWIFT:-swift}
"$swift" test --skip-build "$@" &
runner=$!
for ((waited = 0; waited < deadline; waited++)); do
    if ! kill -0 "$runner" 2>/dev/null; then
        wait "$runner"
        exit $?
    fi
    sleep 1
done
echo "test-with-deadline: the tests did not finish in ${deadline} s; still running:" >&2
ps -eo pid,ppid,etime,args --forest >&2
for pid in $(pgrep -f 'PackageTests.xctest'); do
    if command -v gdb >/dev/null 2>&1; then
        echo "test-with-deadline: stacks of $pid" >&2
        timeout 120 gdb -p "$pid" -batch -ex 'thread apply all bt 25' 2>&1 | grep -E '^(#|Thread)' >&2
    fi
done
pkill -KILL -f 'PackageTests.xctest'
kill -KILL "$runner" 2>/dev/null
exit 124
