#!/usr/bin/env bash
# The lab-scale echo recipe with one knob changed at a time (lr, width, vocabulary); 1,000 steps, one thread,
# two at a time; logs in runs/sweep/. The table it made is in docs/results.md ("The lab scale").
cd "$(dirname "$0")/.." && mkdir -p runs/sweep
base=(--layout mamba2,ska --K 1 --pairs 4 8 16 --gaps 0 16 32 64 128 256 512 1024 --batch-size 16 --steps 1000 --minutes 30 --eval-gaps 64 1024)
run() { local name=$1; shift; OMP_NUM_THREADS=1 .venv/bin/python scripts/recall_probe.py "${base[@]}" "$@" > runs/sweep/$name.log 2>&1; }
run base & run lr1e-3 --lr 1e-3 & wait
run lr1e-2 --lr 1e-2 & run d32 --d-model 32 & wait
run d128 --d-model 128 & run v512 --vocab 512 & wait
