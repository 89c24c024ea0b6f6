#!/usr/bin/env bash
# Reproduce the shipped checkpoints in echo_tutor/pretrained/: one model per preset, trained on
# MQAR-gap (8 KV pairs, gaps 64..1024 mixed per batch, vocab 128) for 15 minutes of wall-clock
# training on a 2-core CPU (or --steps 1500, whichever comes first), then packed as float16.
#
#   scripts/train_checkpoints.sh [PRESET ...]     default: echo ssm ssm+attn ssm+ridge
#   MINUTES=15 STEPS=1500 scripts/train_checkpoints.sh echo
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(echo ssm ssm+attn ssm+ridge)
mkdir -p runs/ckpt
for p in "${presets[@]}"; do
  f="runs/ckpt/${p/+/_}.pt"
  echo "== $p -> $f"
  .venv/bin/echo-tutor train --preset "$p" --pairs 8 --gaps 64 128 256 512 1024 \
    --minutes "${MINUTES:-15}" --steps "${STEPS:-1500}" --eval-every 50 --eval-examples 128 --out "$f"
done
.venv/bin/python scripts/pack_checkpoints.py runs/ckpt echo_tutor/pretrained "${presets[@]}"
