#!/usr/bin/env bash
# Pulls of a checkpoint written on the "remote", one or more syncd builds side by side against rsync -a, rounds
# interleaved, on a throwaway loopback sshd. Each round writes a new random checkpoint (SIZE_MB), pulls it with
# every build and with rsync -a, then a copy with 10% rewritten in ten places (the fine-tuned checkpoint), pulled
# the same way. Before each round last round's files go and clean caches are dropped, so every round starts from
# the same memory state. Prints each run's wall time and the client's user+sys CPU (GNU time), then a summary.
#
#   Bench/ab-pull.sh SIZE_MB ROUNDS RELEASE_DIR [RELEASE_DIR ...]
#
# Each RELEASE_DIR holds syncctl and syncd-agent (a copy of .build/release at some commit). WORK_DIR (default
# /tmp) is where the projects and "remote" copies go: a mount point there puts them on that file system.
#
#   Bench/ab-pull.sh 200 5 /tmp/before .build/release
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,13p "$0"; exit 2; }
size=$1; rounds=$2; shift 2
releases=()
for r in "$@"; do releases+=("$(cd "$r" && pwd)"); done
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib/sshd.sh"
[ "$(id -u)" = 0 ] || { echo "ab-pull: run as root (it drops the page cache between rounds)" >&2; exit 2; }
work=$(mktemp -d "${WORK_DIR:-/tmp}/syncd-abpull.XXXXXX")
cleanup() { bench_sshd_stop; rm -rf "$work"; }
trap cleanup EXIT
bench_sshd_start "$work/sshd" >/dev/null

# One project per build, pushed once so the agent is installed and the remote project exists.
for i in "${!releases[@]}"; do
    mkdir -p "$work/$i/proj/src" "$work/$i/remote"
    echo "x = 1" >"$work/$i/proj/src/main.py"
    printf 'name: p\nremote: bench\nremote_root: %s\nssh_config: %s\nagent_path: %s\n' \
        "$work/$i/remote" "$work/sshd/ssh_config" "${releases[$i]}/syncd-agent" >"$work/$i/proj/syncd.yaml"
    "${releases[$i]}/syncctl" push "$work/$i/proj" --state-dir "$work/$i/state" >/dev/null 2>&1
done
mkdir -p "$work/rsync/local" "$work/rsync/remote"

results=$work/results
: >"$results"
# timed NAME KIND COMMAND...: wall seconds and the command's user+sys CPU seconds
timed() {
    local name=$1 kind=$2 t0 t1 cpu
    shift 2
    sync
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$work/cpu" "$@" >/dev/null 2>"$work/stderr" || { echo "failed: $*" >&2; cat "$work/stderr" >&2; exit 1; }
    t1=$(date +%s.%N)
    cpu=$(awk '{printf "%.2f", $1 + $2}' "$work/cpu")
    python3 -c "import sys; print(f'{sys.argv[1]:<10} {sys.argv[2]:<34} wall {float(sys.argv[4]) - float(sys.argv[3]):.3f} s  client CPU {sys.argv[5]} s')" \
        "$kind" "$name" "$t0" "$t1" "$cpu"
    echo "$kind|$name|$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$t1")|$cpu" >>"$results"
}

for round in $(seq 1 "$rounds"); do
    for i in "${!releases[@]}"; do rm -rf "$work/$i/remote/p/checkpoint" "$work/$i/proj/checkpoint"; done
    rm -f "$work/rsync/local"/* "$work/rsync/remote"/*
    # The pull after the removal records it, so the timed pulls below see only the new file.
    for i in "${!releases[@]}"; do "${releases[$i]}/syncctl" pull "$work/$i/proj" --state-dir "$work/$i/state" >/dev/null 2>&1; done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    head -c $((size << 20)) /dev/urandom >"$work/new.pt"
    python3 - "$work/new.pt" "$work/tuned.pt" <<'PY'
import os, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
size = os.path.getsize(sys.argv[2])
region = size // 100
with open(sys.argv[2], "r+b") as f:
    for k in range(10):
        f.seek(k * (size // 10) + region // 2)
        f.write(os.urandom(region))
PY
    # Builds take turns going first.
    order=()
    for k in "${!releases[@]}"; do order+=($(( (k + round) % ${#releases[@]} ))); done
    for kind in new tuned; do
        for i in "${order[@]}"; do
            mkdir -p "$work/$i/remote/p/checkpoint"
            cp "$work/$kind.pt" "$work/$i/remote/p/checkpoint/$kind.pt"
            touch -d '-20 seconds' "$work/$i/remote/p/checkpoint/$kind.pt"
        done
        cp "$work/$kind.pt" "$work/rsync/remote/$kind.pt"
        for i in "${order[@]}"; do
            timed "${releases[$i]}" "$kind" "${releases[$i]}/syncctl" pull "$work/$i/proj" --state-dir "$work/$i/state"
        done
        timed "rsync -a" "$kind" rsync -a -e "ssh -F $work/sshd/ssh_config" "bench:$work/rsync/remote/" "$work/rsync/local/"
    done
done
echo
echo "| checkpoint | tool | walls, sorted (s) | median wall | median client CPU |"
echo "|---|---|---|---|---|"
python3 - "$results" <<'PY'
import sys, statistics
runs = {}
for line in open(sys.argv[1]):
    kind, name, wall, cpu = line.rstrip("\n").split("|")
    runs.setdefault((kind, name), []).append((float(wall), float(cpu)))
for (kind, name), v in runs.items():
    walls = sorted(w for w, _ in v)
    print(f"| {kind} | {name} | {', '.join(f'{w:.2f}' for w in walls)} | {statistics.median(walls):.2f} | "
          f"{statistics.median(c for _, c in v):.2f} |")
PY
