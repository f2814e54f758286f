#!/bin/sh
# Run from the repository root: sh zoo/sweeps/fixed-point-products.sh (output: the console and zoo/sweeps/fixed-point-products.txt)
# The campaign's training processes are paused (SIGSTOP) for the measurement and resumed after.
set -e
PIDS=$(pgrep -f "compressai_feds.train" || true)
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
[ -n "$PIDS" ] && kill -STOP $PIDS
OMP_NUM_THREADS=2 .venv/bin/python zoo/sweeps/fixed_point_products.py ../shared/data/kodak24-crop500 ${1:-6} | tee zoo/sweeps/fixed-point-products.txt
