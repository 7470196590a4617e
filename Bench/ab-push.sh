#!/usr/bin/env bash
# First push of one project, a few syncd.yaml settings against each other and rsync -a, rounds interleaved, on a
# throwaway loopback sshd. Prints wall time and the whole machine's busy and idle CPU-seconds for every run (from
# /proc/stat), then the sorted walls per variant.
#
#   Bench/ab-push.sh RELEASE_DIR PROJECT_DIR ROUNDS 'SETTING' ['SETTING' ...]
#
# Each SETTING is a syncd.yaml line added to the run's config ('compress: never', 'streams: 2'; '' for none).
# The remote copies go to REMOTE_DIR (default: a fresh directory beside PROJECT_DIR, so on its file system; a
# tmpfs path takes the disk out). CLIENT_CPUS / SERVER_CPUS pin syncctl and rsync's ssh, and sshd with everything
# it starts, with taskset (e.g. CLIENT_CPUS=0 SERVER_CPUS=1 for a laptop/server split on two cores).
# PROFILE=1 runs each measured push under `perf record -a` (cpu-clock, a sample per CPU-millisecond) and prints
# the CPU-seconds of each process name (syncctl, sshd, syncd-agent; ssh, rsync), also per GB of the project;
# PROFILE_KEEP=DIR keeps each run's perf.data there (for `perf report --comm syncctl --sort sym`).
# READS=1 adds, after the rounds, one unmeasured push per setting under `strace -f -e pread64` and prints how many
# bytes syncctl read from files, against the project's size (1.0x: each byte read once).
#
#   Bench/ab-push.sh .build/release /tmp/p 5 'compress: auto' 'compress: never'
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,14p "$0"; exit 2; }
[ -z "${READS:-}" ] || command -v strace >/dev/null || { echo "READS=1 needs strace (apt-get install strace)" >&2; exit 1; }
release=$(cd "$1" && pwd); project=$(cd "$2" && pwd); rounds=$3; shift 3
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/sshd.sh"
work=$(mktemp -d /tmp/syncd-ab.XXXXXX)
remote=${REMOTE_DIR:-$(dirname "$project")/syncd-ab-remote.$$}
pin_client=(); [ -n "${CLIENT_CPUS:-}" ] && pin_client=(taskset -c "$CLIENT_CPUS")
pin_server=(); [ -n "${SERVER_CPUS:-}" ] && pin_server=(taskset -c "$SERVER_CPUS")
cleanup() { bench_sshd_stop; rm -rf "$work" "$remote"; [ -f "$work.yaml" ] && mv "$work.yaml" "$project/syncd.yaml"; true; }
trap cleanup EXIT
[ -f "$project/syncd.yaml" ] && cp "$project/syncd.yaml" "$work.yaml"
"${pin_server[@]}" true  # fails early if taskset or the CPU list is wrong
if [ -n "${SERVER_CPUS:-}" ]; then
    taskset -c "$SERVER_CPUS" bash -c "source '$here/lib/sshd.sh'; bench_sshd_start '$work/sshd'"
    BENCH_SSHD_DIR=$work/sshd
else
    bench_sshd_start "$work/sshd"
fi

# busy/idle CPU-seconds of the whole machine around a command, and its wall time
measure() {
    local u n s i w q sq u2 n2 s2 i2 w2 q2 sq2 t0 t1
    read -r _ u n s i w q sq _ < /proc/stat
    t0=$(date +%s.%N)
    "${profile[@]}" "$@" >/dev/null 2>"$work/stderr" || { echo "failed: $*" >&2; cat "$work/stderr" >&2; exit 1; }
    t1=$(date +%s.%N)
    read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < /proc/stat
    python3 -c "import sys; t0,t1,b,i=map(float,sys.argv[1:]); print(f'{t1-t0:.3f} {b/100:.2f} {i/100:.2f}')" \
        "$t0" "$t1" $(( (u2+n2+s2+q2+sq2) - (u+n+s+q+sq) )) $(( (i2+w2) - (i+w) ))
}

profile=()
[ -n "${PROFILE:-}" ] && profile=(perf record -q -a -c 1000000 -e cpu-clock -o "$work/perf.data" --)
project_gb=$(du -sb "$project" | python3 -c "import sys; print(int(sys.stdin.read().split()[0]) / 1e9)")
# CPU-seconds per process name in the last profiled run (a cpu-clock sample per CPU-millisecond)
per_process() {
    [ -n "${PROFILE:-}" ] || return 0
    [ -n "${PROFILE_KEEP:-}" ] && mkdir -p "$PROFILE_KEEP" && cp "$work/perf.data" "$PROFILE_KEEP/$1.data"
    perf report -q -i "$work/perf.data" --sort comm --stdio -F overhead,sample,comm 2>/dev/null | python3 -c '
import sys
gb = float(sys.argv[1]); rows = []
for line in sys.stdin:
    parts = line.split()
    if len(parts) >= 3 and parts[0].endswith("%"):
        rows.append((int(parts[1]) / 1000, " ".join(parts[2:])))
rows.sort(reverse=True)
print("    cpu-s (per GB): " + ", ".join(f"{name} {s:.2f} ({s / gb:.2f})" for s, name in rows if s >= 0.05 and name != "swapper"))
' "$project_gb"
}

results=$work/results
: >"$results"
for round in $(seq 1 "$rounds"); do
    for index in $(seq 0 $(( $# - 1 ))); do
        args=("$@"); setting=${args[$index]}
        printf 'name: ab\nremote: bench\nremote_root: %s\nssh_config: %s\nagent_path: %s\n%s\n' \
            "$remote/syncd" "$work/sshd/ssh_config" "$release/syncd-agent" "$setting" >"$project/syncd.yaml"
        rm -rf "$remote/syncd" "$work/state"; mkdir -p "$remote/syncd"; sync
        # The first run installs the agent on the "remote"; it is not counted.
        [ "$round" = 1 ] && [ "$index" = 0 ] && "${pin_client[@]}" "$release/syncctl" push "$project" --state-dir "$work/state" >/dev/null 2>&1 \
            && rm -rf "$remote/syncd" "$work/state" && mkdir -p "$remote/syncd" && sync
        line=$(measure "${pin_client[@]}" "$release/syncctl" push "$project" --state-dir "$work/state")
        echo "round $round  syncd ${setting:-(defaults)}: wall ${line% * *} s  busy $(echo "$line" | cut -d' ' -f2) cpu-s  idle ${line##* } cpu-s"
        per_process "round$round-syncd$index"
        echo "syncd ${setting:-(defaults)}|${line%% *}" >>"$results"
    done
    rm -rf "$remote/rsync"; mkdir -p "$remote/rsync"; sync
    line=$(measure "${pin_client[@]}" rsync -a --exclude=/syncd.yaml -e "ssh -F $work/sshd/ssh_config" "$project/" "bench:$remote/rsync/")
    echo "round $round  rsync -a: wall ${line% * *} s  busy $(echo "$line" | cut -d' ' -f2) cpu-s  idle ${line##* } cpu-s"
    per_process "round$round-rsync"
    echo "rsync -a|${line%% *}" >>"$results"
done
if [ -n "${READS:-}" ]; then
    for setting in "$@"; do
        printf 'name: ab\nremote: bench\nremote_root: %s\nssh_config: %s\nagent_path: %s\n%s\n' \
            "$remote/syncd" "$work/sshd/ssh_config" "$release/syncd-agent" "$setting" >"$project/syncd.yaml"
        rm -rf "$remote/syncd" "$work/state"; mkdir -p "$remote/syncd"
        strace -f -qq -y -e trace=pread64 -e signal=none -o "$work/reads" "$release/syncctl" push "$project" --state-dir "$work/state" >/dev/null
        python3 - "$work/reads" "$project_gb" "${setting:-(defaults)}" "$project/" <<'PY'
import re, sys
# Only reads of the project's files (`-y` names each descriptor's file), not of the state database or the agent.
total = sum(int(m.group(1)) for line in open(sys.argv[1])
            if "<" + sys.argv[4] in line and (m := re.search(r"= (\d+)$", line.rstrip())))
print(f"reads  syncd {sys.argv[3]}: {total / 1e6:.1f} MB read from files, {total / 1e9 / float(sys.argv[2]):.2f}x the project")
PY
    done
fi
echo
echo "| variant | walls, sorted (s) | median |"
echo "|---|---|---|"
python3 - "$results" <<'PY'
import sys, statistics
runs = {}
for line in open(sys.argv[1]):
    name, wall = line.rstrip("\n").rsplit("|", 1)
    runs.setdefault(name, []).append(float(wall))
for name, walls in runs.items():
    walls.sort()
    print(f"| {name} | {', '.join(f'{w:.2f}' for w in walls)} | {statistics.median(walls):.2f} |")
PY
