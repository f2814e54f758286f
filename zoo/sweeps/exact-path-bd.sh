#!/bin/sh
# Run from the repository root: sh zoo/sweeps/exact-path-bd.sh (output: runs/exact-path-bd/ and the console)
# Kodak, 2 threads: exact vs float entropy path of the no-teacher students q2..q5 of zoo/ablation/ (seed 0,
# the four measured in exact-path-bd.txt), interleaved image by image; BD-rate of the exact path against the float one.
# The campaign's training processes are paused (SIGSTOP) for the measurement and resumed after.
set -e
PIDS=$(pgrep -f "compressai_feds.train" || true)
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
[ -n "$PIDS" ] && kill -STOP $PIDS
.venv/bin/python zoo/sweeps/exact_path_bd.py ../shared/data/kodak runs/exact-path-bd \
    $(ls zoo/ablation/feds-student-noteacher-mse-[2-5]-*.pth.tar | grep -v seed)
