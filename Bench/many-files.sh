#!/usr/bin/env bash
# Many small files, first copy: syncctl push to a local: agent against rsync -a and rsync -a --fsync, each on a
# fresh journaled ext4 loop file system with cold caches (freshly deleted inodes make ext4 allocation slower,
# so nothing is reused between runs). Root only (mount). Prints a markdown table.
# usage: Bench/many-files.sh [RELEASE_DIR] [FILES]     (ONLY_SYNCD=1: skip the two rsync runs)
set -euo pipefail
release=$(cd "${1:-.build/release}" && pwd)
files=${2:-100000}
work=$(mktemp -d /tmp/syncd-many.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$work"' EXIT

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

fresh() {
    umount "$mnt" 2>/dev/null || true
    rm -f "$work/fs.img"
    truncate -s 4G "$work/fs.img"
    mkfs.ext4 -q -F "$work/fs.img"
    mount -o loop "$work/fs.img" "$mnt"
    cp -a "$work/proj" "$mnt/proj"
    printf 'name: many\nremote: local:%s/remote\nagent_path: %s/syncd-agent\n' "$mnt" "$release" > "$mnt/proj/syncd.yaml"
    sync
    echo 3 > /proc/sys/vm/drop_caches
}

# Wall seconds of a command.
timed() {
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')"
}

plain=-; synced=-
if [ -z "${ONLY_SYNCD:-}" ]; then
    fresh; plain=$(timed rsync -a "$mnt/proj/" "$mnt/r/")
    fresh; synced=$(timed rsync -a --fsync "$mnt/proj/" "$mnt/r/")
fi
fresh; ours=$(XDG_STATE_HOME=$mnt/state timed "$release/syncctl" push "$mnt/proj")
[ "$(find "$mnt/remote" -type f -name '*.py' | wc -l)" = "$files" ] || { echo "many-files: the push did not place $files files" >&2; exit 1; }

echo "| $files files of 200 B, first copy, fresh ext4 | wall s |"
echo "|---|---|"
echo "| rsync -a (no fsync) | $plain |"
echo "| rsync -a --fsync | $synced |"
echo "| syncctl push, local: agent (fsync, rename, journal) | $ours |"
