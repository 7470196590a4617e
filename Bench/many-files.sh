#!/usr/bin/env bash
# Many small files, first copy over SSH: syncctl push against rsync -a and rsync -a --fsync, all three through
# the same throwaway loopback sshd into a fresh journaled ext4 loop file system with cold caches (freshly
# deleted inodes make ext4 allocation slower, so nothing is reused between runs). The loop device does direct
# I/O, so written-back pages go to the disk once, as from a real one (a buffered loop device copies each again
# into the host's page cache, which only the tools that make data durable pay for). Root only (mount).
# Prints a markdown table, one column per round.
# usage: Bench/many-files.sh [RELEASE_DIR] [FILES] [ROUNDS]
#   PULL=1         the other way: the files are a remote project's output/, brought back by syncctl pull (and
#                  rsync from the remote), into a local directory on the same fresh file system
#   ONLY_SYNCD=1   skip the two rsync rows
#   LOCAL=1        also push to a local: agent (no SSH), as the bench did before it went over SSH
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
release=$(cd "${1:-.build/release}" && pwd)
files=${2:-100000}
rounds=${3:-1}
source "$here/lib/sshd.sh"
work=$(mktemp -d /tmp/syncd-many.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
device=""
# Unmounts the file system and lets its loop device go.
detach() {
    umount "$mnt" 2>/dev/null || true
    if [ -n "$device" ]; then losetup -d "$device" 2>/dev/null || true; fi
    device=""
}
trap 'bench_sshd_stop; detach; rm -rf "$work"' EXIT
bench_sshd_start "$work/sshd"
ssh_cmd=$(cat "$work/sshd/ssh_options.bench")

python3 - "$work/proj" "$files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{root}/src/d{i // 100}"
    if i % 100 == 0:
        os.makedirs(d)
    with open(f"{d}/m{i}.py", "w") as f:
        f.write(f"x = {i}\n" * 20)
EOF

# A fresh file system holding a copy of the project (the source side), caches dropped.
fresh() {
    detach
    rm -f "$work/fs.img"
    truncate -s 4G "$work/fs.img"
    mkfs.ext4 -q -F "$work/fs.img"
    if device=$(losetup --find --show --direct-io=on "$work/fs.img") && mount "$device" "$mnt"; then
        :
    else
        detach
        echo "many-files: no direct-I/O loop device here; using a buffered one" >&2
        mount -o loop "$work/fs.img" "$mnt"
    fi
    cp -a "$work/proj" "$mnt/proj"
    sync
    echo 3 > /proc/sys/vm/drop_caches
}

# Wall seconds of a command.
timed() {
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null 2>"$work/err" || { cat "$work/err" >&2; return 1; }
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.2f}')"
}

# For PULL=1: the files become the remote project's output/, old enough to be offered, and an empty local
# project waits for them.
fresh_pull() {
    fresh
    mkdir -p "$mnt/remote/many" "$mnt/local"
    mv "$mnt/proj/src" "$mnt/remote/many/output"
    find "$mnt/remote/many/output" -exec touch -h -d '1 min ago' {} +
    printf 'name: many\nremote: bench\nremote_root: %s/remote\nssh_config: %s\nagent_path: %s/syncd-agent\n' \
        "$mnt" "$work/sshd/ssh_config" "$release" > "$mnt/local/syncd.yaml"
    sync
    echo 3 > /proc/sys/vm/drop_caches
}

placed() {
    [ "$(find "$1" -type f -name '*.py' | wc -l)" = "$files" ] || { echo "many-files: $1 does not hold $files files" >&2; exit 1; }
}

plain=() synced=() ours=() local=()
# The direction: how each run starts, what rsync copies from and to, and the syncctl run.
if [ -n "${PULL:-}" ]; then
    prepare=fresh_pull from="bench:$mnt/remote/many/output/" to="$mnt/r/" verb=pull moved="pulled"
else
    prepare=fresh from="$mnt/proj/" to="bench:$mnt/r/" verb=push moved=""
fi
ours_run() {
    if [ -n "${PULL:-}" ]; then
        ours+=("$(timed "$release/syncctl" pull "$mnt/local" --state-dir "$mnt/state")"); placed "$mnt/local/output"
        return
    fi
    printf 'name: many\nremote: bench\nremote_root: %s/remote\nssh_config: %s\nagent_path: %s/syncd-agent\n' \
        "$mnt" "$work/sshd/ssh_config" "$release" > "$mnt/proj/syncd.yaml"
    ours+=("$(timed "$release/syncctl" push "$mnt/proj" --state-dir "$mnt/state")"); placed "$mnt/remote/many"
}
for r in $(seq 1 "$rounds"); do
    if [ -z "${ONLY_SYNCD:-}" ]; then
        $prepare; plain+=("$(timed rsync -a -e "$ssh_cmd" "$from" "$to")"); placed "$mnt/r"
        $prepare; synced+=("$(timed rsync -a --fsync -e "$ssh_cmd" "$from" "$to")"); placed "$mnt/r"
    fi
    $prepare
    ours_run
    if [ -n "${LOCAL:-}" ] && [ -z "${PULL:-}" ]; then
        fresh
        printf 'name: many\nremote: local:%s/remote\nagent_path: %s/syncd-agent\n' "$mnt" "$release" > "$mnt/proj/syncd.yaml"
        local+=("$(timed "$release/syncctl" push "$mnt/proj" --state-dir "$mnt/state")"); placed "$mnt/remote/many"
    fi
done

echo "| $files files of 200 B${moved:+ $moved}, first copy over loopback SSH, fresh ext4 | wall s ($rounds rounds) |"
echo "|---|---|"
[ -z "${ONLY_SYNCD:-}" ] && echo "| rsync -a (no fsync) | ${plain[*]} |" && echo "| rsync -a --fsync | ${synced[*]} |"
echo "| syncctl $verb (durable: data before rename) | ${ours[*]} |"
[ -n "${LOCAL:-}" ] && [ -z "${PULL:-}" ] && echo "| syncctl push, local: agent | ${local[*]} |"
true
