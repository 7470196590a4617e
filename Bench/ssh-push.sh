#!/usr/bin/env bash
# Push throughput over SSH on loopback against libssh2's raw exec channel, measured in the same run,
# interleaved so that both see the same machine: a throwaway sshd, 5 x 100 MB of random data, R rounds of
#   raw     syncd-ssh-bench: 500 MB from memory to `cat > /dev/null` (the ceiling the issue names)
#   raw-fs  the same into a file on the remote root's file system, then fsync (what a push must also do)
#   push    syncctl push of the 500 MB to an empty remote (scan, chunk, hash, send, verify, fsync, rename)
# usage: Bench/ssh-push.sh [RELEASE_DIR] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
release=$(cd "${1:-$here/../.build/release}" && pwd)
rounds=${2:-5}
source "$here/lib/sshd.sh"
work=$(mktemp -d /tmp/syncd-ssh-push.XXXXXX)
trap 'bench_sshd_stop; rm -rf "$work"' EXIT
bench_sshd_start "$work/sshd"
mkdir -p "$work/proj"
for i in 1 2 3 4 5; do head -c 100M /dev/urandom >"$work/proj/data$i.bin"; done
cat >"$work/proj/syncd.yaml" <<CONF
name: proj
remote: bench
remote_root: $work/remote
ssh_config: $work/sshd/ssh_config
agent_path: $release/syncd-agent
CONF
ms() { date +%s%3N; }
raw=() rawfs=() push=()
for r in $(seq 1 "$rounds"); do
    sync; sleep 0.5
    raw+=("$("$release/syncd-ssh-bench" bench "$work/sshd/ssh_config" 500 | sed -E "s/.*: [0-9]+ MB in ([0-9.]+) s .*/\1/" | tail -1)")
    sync; sleep 0.5
    rawfs+=("$("$release/syncd-ssh-bench" bench "$work/sshd/ssh_config" 500 "cat > $work/raw.out && sync $work/raw.out" | sed -E "s/.*: [0-9]+ MB in ([0-9.]+) s .*/\1/" | tail -1)")
    rm -f "$work/raw.out"
    rm -rf "$work/remote" "$work/state"; sync; sleep 0.5
    t0=$(ms)
    "$release/syncctl" push "$work/proj" --state-dir "$work/state" --json >"$work/push.json"
    t1=$(ms)
    push+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mr=$(median "${raw[@]}"); mf=$(median "${rawfs[@]}"); mp=$(median "${push[@]}")
echo "| measurement (500 MB, $rounds rounds, median) | seconds | MB/s | push vs it |"
echo "|---|---|---|---|"
awk -v r="$mr" -v f="$mf" -v p="$mp" 'BEGIN {
    mb = 500 * 1.048576
    printf "| raw exec channel to /dev/null | %.2f | %.0f | %.0f%% |\n", r, mb / r, 100 * r / p
    printf "| raw exec channel to a file + fsync | %.2f | %.0f | %.0f%% |\n", f, mb / f, 100 * f / p
    printf "| syncctl push (wall, connect included) | %.2f | %.0f | |\n", p, mb / p
}'
echo "rounds: raw ${raw[*]} | raw-fs ${rawfs[*]} | push ${push[*]}"
