#!/usr/bin/env bash
# Reproduce the shipped checkpoints in echo_tutor/pretrained/: one model per preset, trained on
# MQAR-gap (8 KV pairs, gaps 64..1024 mixed per batch, value-half distractors, vocab 128) for 15 minutes
# of wall-clock training each, then packed as float16.
#
# Two models train at a time, one CPU thread each (the project's machines have 2 cores), so every model
# gets the same budget under the same conditions: 15 minutes of one core.
#
#   scripts/train_checkpoints.sh [PRESET ...]     default: echo ssm ssm+attn ssm+ridge
#   MINUTES=15 STEPS=3000 scripts/train_checkpoints.sh echo
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(echo ssm ssm+attn ssm+ridge)
mkdir -p runs/ckpt
run() {
  local p=$1 f="runs/ckpt/${1/+/_}"
  .venv/bin/echo-tutor train --preset "$p" --pairs 8 --gaps 64 128 256 512 1024 --threads 1 \
    --minutes "${MINUTES:-15}" --steps "${STEPS:-3000}" --eval-every 50 --eval-examples 128 --out "$f.pt" > "$f.log" 2>&1
  echo "== $p: $(tail -n 2 "$f.log" | head -n 1)"
}
for ((i = 0; i < ${#presets[@]}; i += 2)); do
  run "${presets[i]}" &
  if [ $((i + 1)) -lt ${#presets[@]} ]; then run "${presets[i + 1]}" & fi
  wait
done
.venv/bin/python scripts/pack_checkpoints.py runs/ckpt echo_tutor/pretrained "${presets[@]}"
