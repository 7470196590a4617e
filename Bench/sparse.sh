#!/usr/bin/env bash
# A sparse file over a loopback sshd: 5 GB holding 1 MB of data (a preallocated dataset file, a VM image), pushed
# to an empty remote, then one edit inside the data pushed again. Prints the wall time of each push, the bytes that
# crossed, and the remote file's disk use (st_blocks), R rounds, median. Targets (issue 11): under 2 s, under 10 MB.
# usage: Bench/sparse.sh [RELEASE_DIR] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
release=$(cd "${1:-$here/../.build/release}" && pwd)
rounds=${2:-3}
source "$here/lib/sshd.sh"
work=$(mktemp -d /tmp/syncd-sparse.XXXXXX)
trap 'bench_sshd_stop; rm -rf "$work"' EXIT
bench_sshd_start "$work/sshd"
mkdir -p "$work/proj/data"
python3 - "$work/proj/data/disk.img" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(5 << 30)
    for i, offset in enumerate([0, 1 << 30, 3 << 30, (5 << 30) - (256 << 10)]):
        f.seek(offset)
        f.write(os.urandom(256 << 10))
PY
cat >"$work/proj/syncd.yaml" <<CONF
name: proj
remote: bench
remote_root: $work/remote
ssh_config: $work/sshd/ssh_config
agent_path: $release/syncd-agent
CONF
ms() { date +%s%3N; }
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
first=() edit=() sent=() edsent=() disk=()
for r in $(seq 1 "$rounds"); do
    rm -rf "$work/remote" "$work/state"; sync; sleep 0.5
    t0=$(ms); "$release/syncctl" push "$work/proj" --state-dir "$work/state" --json >"$work/push.json"; t1=$(ms)
    first+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')")
    sent+=("$(field "$work/push.json" bytes_sent)")
    printf 'edit %04d' "$r" | dd of="$work/proj/data/disk.img" bs=1 seek=$(( (1 << 30) + 1000 )) conv=notrunc status=none
    t0=$(ms); "$release/syncctl" push "$work/proj" --state-dir "$work/state" --json >"$work/edit.json"; t1=$(ms)
    edit+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1000 }')")
    edsent+=("$(field "$work/edit.json" bytes_sent)")
    disk+=("$(( $(stat -c %b "$work/remote/proj/data/disk.img") * 512 ))")
    python3 - "$work/proj/data/disk.img" "$work/remote/proj/data/disk.img" <<'PY' || { echo "sparse: the remote copy differs" >&2; exit 1; }
import os, sys
# Equal where either file has data; elsewhere both are holes, which read as zeros.
a, b = (os.open(p, os.O_RDONLY) for p in sys.argv[1:3])
size = os.fstat(a).st_size
assert size == os.fstat(b).st_size
def regions(fd):
    out, off = [], 0
    while off < size:
        try: start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError: break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, end)); off = end
    return out
for start, end in regions(a) + regions(b):
    if os.pread(a, end - start, start) != os.pread(b, end - start, start): sys.exit(1)
PY
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "| 5 GB sparse file, 1 MB of data ($rounds rounds, median) | wall s | bytes sent | remote disk |"
echo "|---|---|---|---|"
echo "| first push | $(median "${first[@]}") | $(median "${sent[@]}") | $(( $(median "${disk[@]}") / 1024 )) KiB |"
echo "| push after a 9-byte edit | $(median "${edit[@]}") | $(median "${edsent[@]}") | |"
echo "rounds: first ${first[*]} | edit ${edit[*]} | disk ${disk[*]}"
