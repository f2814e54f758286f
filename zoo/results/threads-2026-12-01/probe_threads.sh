#!/bin/bash
# A campaign job's training speed alone on 2 threads, then on 1 (ratio measured in one run):
# its recipe settings (zoo/recipe.json, through the campaign), 32 training images, untrained
# student, 40 steps logged every 10 (a FEDS job: 20 of feature alignment, 20 of channel
# distillation, its teacher the latest teacher-vr export). Pauses the campaign's trainers
# meanwhile (SIGSTOP/SIGCONT: they lose nothing), all but the campaign job BESIDE if given:
# then it measures 1 thread beside that one's training. From the repository root:
#     bash zoo/results/threads-2026-12-01/probe_threads.sh teacher-vr
#     bash zoo/results/threads-2026-12-01/probe_threads.sh student-vr baseline-vr
set -e
JOB=${1:?which job, e.g. teacher-vr or student-vr}
BESIDE=$2
PROBE=$(mktemp -d)
mkdir -p "$PROBE/train" "$PROBE/val"
for f in $(ls runs/campaign/data/train | head -32); do ln -s "$(readlink -f runs/campaign/data/train/$f)" "$PROBE/train/$f"; done
.venv/bin/python - "$PROBE" "$JOB" <<'PY'
import sys
from dataclasses import replace
from pathlib import Path

from PIL import Image

from compressai_feds.campaign import Campaign, Recipe
from compressai_feds.config import Stage

probe, name = Path(sys.argv[1]), sys.argv[2]
Image.open(sorted((probe / "train").iterdir())[0]).convert("RGB").crop((0, 0, 64, 64)).save(probe / "val" / "a.png")
campaign = Campaign(Recipe.load("zoo/recipe.json"), "runs/campaign", "zoo", progress=False)
config = campaign.training_config(campaign.jobs[name], probe / "train", probe / "val")
stages = [replace(stage, steps=20 if config.teacher else 40) for stage in config.stages[: 2 if config.teacher else 1]]
replace(config, stages=stages, log_every=10, val_every=100000, checkpoint_every=100000, restart_warmup=0,
        val_qualities=[3]).save(probe / "config.json")
PY
PIDS=$(pgrep -f "compressai_feds.train --out runs/campaign/" | grep -v -x -F -f <(pgrep -f "runs/campaign/$BESIDE " || true) || true)
trap '[ -n "$PIDS" ] && kill -CONT $PIDS; rm -rf "$PROBE"' EXIT
[ -n "$PIDS" ] && kill -STOP $PIDS
for threads in $([ -n "$BESIDE" ] && echo 1 || echo 2 1); do
  OMP_NUM_THREADS=$threads .venv/bin/python -m compressai_feds.train --config "$PROBE/config.json" \
    --out "$PROBE/out$threads" --no-progress > "$PROBE/log$threads" 2>&1
  echo "$JOB, $threads thread(s)${BESIDE:+ beside $BESIDE}: steps/s per 10-step window" \
    $(grep -o '"it_per_s": [0-9.]*' "$PROBE/out$threads/metrics.jsonl" | cut -d' ' -f2)
done
