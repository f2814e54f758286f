#!/bin/bash
# Teacher-vr's training speed alone with 2 threads, then with 1 thread (ratio measured in one
# run). Pauses the campaign's trainers meanwhile (SIGSTOP/SIGCONT: they lose nothing).
# The teacher-vr recipe on 32 training images, untrained weights, 40 steps, logged every 10.
# Run from the repository root:  bash zoo/results/threads-2026-12-01/probe.sh
set -e
PROBE=$(mktemp -d)
mkdir -p "$PROBE/train" "$PROBE/val"
for f in $(ls runs/campaign/data/train | head -32); do ln -s "$(readlink -f runs/campaign/data/train/$f)" "$PROBE/train/$f"; done
.venv/bin/python - "$PROBE" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image
probe = Path(sys.argv[1])
Image.open(sorted((probe / "train").iterdir())[0]).convert("RGB").crop((0, 0, 64, 64)).save(probe / "val" / "a.png")
config = json.loads(Path("runs/campaign/teacher-vr/campaign-config.json").read_text())
config.update(data=str(probe / "train"), val=str(probe / "val"), log_every=10, val_every=100000,
              checkpoint_every=100000, restart_warmup=0, val_qualities=[3],
              stages=[{"name": "rate_distortion", "steps": 40, "lr": 0.0005, "feature_weight": 0.0, "channel_weight": 0.0}])
(probe / "teacher.json").write_text(json.dumps(config))
PY
PIDS=$(pgrep -f "compressai_feds.train --out runs/campaign" || true)
trap '[ -n "$PIDS" ] && kill -CONT $PIDS; rm -rf "$PROBE"' EXIT
[ -n "$PIDS" ] && kill -STOP $PIDS
for threads in 2 1; do
  OMP_NUM_THREADS=$threads .venv/bin/python -m compressai_feds.train --config "$PROBE/teacher.json" \
    --out "$PROBE/out$threads" --no-progress > "$PROBE/log$threads" 2>&1
  echo "$threads thread(s): steps/s per 10-step window" \
    $(grep -o '"it_per_s": [0-9.]*' "$PROBE/out$threads/metrics.jsonl" | cut -d' ' -f2)
done
