#!/usr/bin/env bash
# The `make run` walkthrough: an example ML project, pushed to a local: remote, a checkpoint pulled back.
set -euo pipefail
BIN="$(cd "${1:-.build/release}" && pwd)"
WORK="$(mktemp -d /tmp/syncd-demo.XXXXXX)"
export XDG_STATE_HOME="$WORK/state"
PROJECT="$WORK/object-tracking"
REMOTE="$WORK/gpu-host"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Making an example ML project in $PROJECT"
mkdir -p "$PROJECT"/{src/models,data/images,configs} "$REMOTE"
cat > "$PROJECT/src/train.py" <<'PY'
import json, os
from models.tracker import Tracker
cfg = json.load(open("configs/base.json"))
os.makedirs("checkpoint", exist_ok=True)
print("training", Tracker(cfg).name)
PY
echo 'class Tracker:
    def __init__(self, cfg): self.name = cfg["model"]' > "$PROJECT/src/models/tracker.py"
echo '{"model": "bytetrack", "lr": 0.001}' > "$PROJECT/configs/base.json"
printf 'FROM python:3.11-slim\nCOPY src/ /app/src/\nCMD ["python", "/app/src/train.py"]\n' > "$PROJECT/Dockerfile"
head -c 20000000 /dev/urandom > "$PROJECT/data/train.bin"
for i in $(seq 1 50); do head -c 3000 /dev/urandom > "$PROJECT/data/images/img$i.jpg"; done
printf '*.tmp\n__pycache__\n' > "$PROJECT/.syncignore"
touch "$PROJECT/scratch.tmp"

say "syncctl init --remote local:$REMOTE"
"$BIN/syncctl" init "$PROJECT" --remote "local:$REMOTE"
cat "$PROJECT/syncd.yaml"

say "syncctl ls (what a push sends)"
"$BIN/syncctl" ls "$PROJECT" | sed -n 1,20p  # (sed reads to the end: under pipefail, head would fail the script)

say "syncctl push"
"$BIN/syncctl" push "$PROJECT"
"$BIN/syncctl" push "$PROJECT" --json

say "The remote tree ($REMOTE/object-tracking)"
(cd "$REMOTE/object-tracking" && find . -path ./.syncd -prune -o -print | grep -v 'images/img' | sort)

say "Training on the remote writes a checkpoint"
mkdir -p "$REMOTE/object-tracking/checkpoint"
head -c 30000000 /dev/urandom > "$REMOTE/object-tracking/checkpoint/epoch1.pt"
touch -d '5 seconds ago' "$REMOTE/object-tracking/checkpoint/epoch1.pt"

say "syncctl pull"
"$BIN/syncctl" pull "$PROJECT" --json
cmp "$PROJECT/checkpoint/epoch1.pt" "$REMOTE/object-tracking/checkpoint/epoch1.pt" && echo "checkpoint/epoch1.pt is back, byte for byte"

say "A second checkpoint that shares most of the first: only the new chunks travel"
(cat "$REMOTE/object-tracking/checkpoint/epoch1.pt"; head -c 2000000 /dev/urandom) > "$REMOTE/object-tracking/checkpoint/epoch2.pt"
touch -d '5 seconds ago' "$REMOTE/object-tracking/checkpoint/epoch2.pt"
"$BIN/syncctl" pull "$PROJECT" --json
echo
echo "Demo files are in $WORK (remove with: rm -rf $WORK)"
