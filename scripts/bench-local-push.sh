#!/usr/bin/env bash
# End-to-end push of ~500 MB of incompressible data to a local: remote, against rsync -a of the same tree.
# Prints a markdown table. Usage: scripts/bench-local-push.sh .build/release
set -euo pipefail
BIN="$(cd "${1:-.build/release}" && pwd)"
WORK="$(mktemp -d /tmp/syncd-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export XDG_STATE_HOME="$WORK/state"
P="$WORK/proj"
mkdir -p "$P/data" "$P/src" "$WORK/remote" "$WORK/rsync"
for i in 1 2 3 4 5; do head -c 100000000 /dev/urandom > "$P/data/part$i.bin"; done
for i in $(seq 1 500); do head -c 2000 /dev/urandom | base64 > "$P/src/mod$i.py"; done
"$BIN/syncctl" init "$P" --remote "local:$WORK/remote" 2>/dev/null
ms() { date +%s%3N; }
t0=$(ms); "$BIN/syncctl" push "$P" --json > "$WORK/first.json"; t1=$(ms)
"$BIN/syncctl" push "$P" --json > "$WORK/noop.json"; t2=$(ms)
rsync -a "$P/" "$WORK/rsync/"; t3=$(ms)
rsync -a "$P/" "$WORK/rsync/"; t4=$(ms)
mb=$(du -sm "$P" | cut -f1)
echo
echo "| scenario (local, $mb MB) | syncd ms | rsync -a ms |"
echo "|---|---|---|"
echo "| initial push | $((t1 - t0)) | $((t3 - t2)) |"
echo "| no-op push | $((t2 - t1)) | $((t4 - t3)) |"
echo "initial push throughput: $(( mb * 1000 / (t1 - t0 + 1) )) MB/s"
