#!/usr/bin/env bash
# Runs each fuzz target (built by Fuzz/build.sh) for FUZZ_SECONDS (default 60) from its seed corpus, and prints
# a table: executions, corpus size, and what was found. A crash, a hang (-timeout) or a runaway allocation
# (-rss_limit_mb) is written under .build-fuzz/artifacts/<name>/ and fails the run; copy it to
# Fuzz/regressions/<name>/ and add a test that replays it (Tests/UnitTests/FuzzRegressionTests.swift).
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"frames messages config compose ignore dockerfile sshconfig manifest index pack"}
failed=0
printf "| target | seconds | executions | exec/s | corpus | found |\n|---|---|---|---|---|---|\n"
for name in $TARGETS; do
    work=.build-fuzz/corpus/$name
    artifacts=.build-fuzz/artifacts/$name
    mkdir -p "$work" "$artifacts"
    log=.build-fuzz/$name.log
    timeout $((SECONDS_EACH + 60)) .build-fuzz/bin/fuzz-"$name" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" Fuzz/corpus/"$name" >"$log" 2>&1
    status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(ls "$work" | wc -l)
    found=$(ls "$artifacts" | tr '\n' ' ')
    if [ "$status" -ne 0 ] || [ -n "$found" ]; then failed=1; fi
    printf "| %s | %s | %s | %s | %s | %s |\n" "$name" "$SECONDS_EACH" "${runs:-?}" "${rate:-?}" "$corpus" "${found:-nothing}"
done
exit $failed
