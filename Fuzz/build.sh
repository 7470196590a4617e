#!/usr/bin/env bash
# Builds the libFuzzer targets of Fuzz/Targets.swift into .build-fuzz/bin/fuzz-<name> (issue 26, item 7).
# The library modules they use are built by SwiftPM with AddressSanitizer and libFuzzer's coverage
# instrumentation; each target is then linked by swiftc with -sanitize=fuzzer,address (SwiftPM links
# executables with a main of their own, which libFuzzer's must replace).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=.build-fuzz
FLAGS=(-Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table)
for target in SnapshotFormat SyncConfig Dockerfile; do
    swift build --build-path "$BUILD" -c release --target "$target" "${FLAGS[@]}" >/dev/null
done
MODULES=(SyncSystem Chunking Wire SnapshotFormat ProjectScan Yams CYaml SyncConfig Dockerfile)
OBJECTS=()
for m in "${MODULES[@]}"; do
    while IFS= read -r o; do OBJECTS+=("$o"); done < <(find "$BUILD/release/$m.build" -name '*.o' | sort)
done
mkdir -p "$BUILD/bin"
TARGETS=${FUZZ_TARGETS:-"frames messages config compose ignore dockerfile sshconfig manifest index pack"}
for name in $TARGETS; do
    flag=FUZZ_$(echo "$name" | tr a-z A-Z)
    swiftc -parse-as-library -O -sanitize=fuzzer,address -D "$flag" -module-name Fuzz \
        -I "$BUILD/release/Modules" -I Sources/CXXHash -I Sources/CZlib -I Sources/CSystemShims \
        -I "$BUILD/checkouts/Yams/Sources/CYaml/include" \
        Fuzz/Targets.swift "${OBJECTS[@]}" -lxxhash -lz -o "$BUILD/bin/fuzz-$name" 2>&1 \
        | grep -v "Cannot export local symbol" || true
    [ -x "$BUILD/bin/fuzz-$name" ] || { echo "fuzz: building $name failed" >&2; exit 1; }
done
# The seed writer (Fuzz/corpus is committed; run .build-fuzz/bin/fuzz-seeds from the repository's root to write it anew).
swiftc -parse-as-library -O -sanitize=address -D FUZZ_SEEDS -module-name Fuzz \
    -I "$BUILD/release/Modules" -I Sources/CXXHash -I Sources/CZlib -I Sources/CSystemShims -I "$BUILD/checkouts/Yams/Sources/CYaml/include" \
    Fuzz/Targets.swift "${OBJECTS[@]}" -lxxhash -lz -o "$BUILD/bin/fuzz-seeds" 2>&1 | grep -v "Cannot export local symbol" || true
echo "fuzz: built $(echo $TARGETS | wc -w) targets in $BUILD/bin"
