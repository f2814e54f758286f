#!/bin/sh
# Run from the repository root: sh zoo/sweeps/exact-path-bd.sh (output: runs/exact-path-bd/ and the console)
# Kodak, 2 threads: exact vs float entropy path of the no-teacher students at every quality shipped in
# zoo/ablation/ (seed 0), interleaved image by image; BD-rate of the exact path against the float one.
# The campaign's training processes are paused (SIGSTOP) for the measurement and resumed after.
set -e
PIDS=$(pgrep -f "compressai_feds.train" || true)
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
[ -n "$PIDS" ] && kill -STOP $PIDS
.venv/bin/python zoo/sweeps/exact_path_bd.py ../shared/data/kodak runs/exact-path-bd \
    $(ls zoo/ablation/feds-student-noteacher-mse-[1-6]-*.pth.tar | grep -v seed)
