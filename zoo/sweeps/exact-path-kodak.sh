#!/bin/sh
# Run from the repository root: sh zoo/sweeps/exact-path-kodak.sh (output: runs/bench-exact.json and the console)
# Kodak, 2 threads: exact vs float entropy path, zoo teacher + no-teacher student as "student".
# The campaign's training processes are paused (SIGSTOP) for the measurement and resumed after.
set -e
PIDS=$(pgrep -f "compressai_feds.train" || true)
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
[ -n "$PIDS" ] && kill -STOP $PIDS
rm -rf runs/bench-zoo && mkdir -p runs/bench-zoo
cp zoo/feds-teacher-mse-3-*.pth.tar runs/bench-zoo/
b=$(ls zoo/ablation/feds-student-noteacher-mse-3-*.pth.tar | grep -v seed)
cp "$b" runs/bench-zoo/feds-student-mse-3-$(basename "$b" | sed 's/.*-\([0-9a-f]*\)\.pth\.tar/\1/').pth.tar
ls runs/bench-zoo
COMPRESSAI_FEDS_ZOO=runs/bench-zoo .venv/bin/python -m compressai_feds.benchmark ../shared/data/kodak --entropy-path --threads 2 --json runs/bench-exact.json
