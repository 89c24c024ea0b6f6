#!/usr/bin/env bash
# Reproduce the shipped lab-scale checkpoints in echo_tutor/pretrained/: one model per preset, every one
# trained the same way (echo_tutor.models.LAB_RECIPE): MQAR-gap with 4, 8 or 16 KV pairs and gaps
# 0..1024 mixed per batch, values hidden after the queries, vocab 128, batch 16, lr 3e-3, STEPS steps
# (capped at MINUTES of training), then packed as float16.
#
# Two models train at a time, one CPU thread each (the project's machines have 2 cores), so every model
# gets the same budget under the same conditions. `ssm+swa` is not trained: it is the `ssm+attn` weights
# read through the preset's 256-token window (pack_checkpoints.py --swa). `ssm+ridge` (K=0) and `echo-k2`
# come from the power-order runs (`make kpower`, then pack_checkpoints.py --ablation). `echo-r64` is not
# trained from scratch either (from scratch it never left chance): when `echo` is trained, it is grown to
# r=64 and fine-tuned on 16/32/48 pairs (scripts/train_grown.py), next to its control `echo-ft` (the same
# fine-tuning at r=32).
#
#   scripts/train_checkpoints.sh [PRESET ...]     default: echo ssm+attn ssm
#   STEPS=4000 MINUTES=15 scripts/train_checkpoints.sh echo ssm+attn
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(echo ssm+attn ssm)
mkdir -p runs/ckpt
run() {
  local p=$1 f="runs/ckpt/${1/+/_}"
  .venv/bin/echo-tutor train --scale lab --preset "$p" --pairs 4 8 16 --gaps 0 16 32 64 128 256 512 1024 \
    --values hidden --batch-size 16 --lr 3e-3 --seed "${SEED:-0}" --threads 1 \
    --minutes "${MINUTES:-15}" --steps "${STEPS:-4000}" --eval-every 100 --eval-examples 128 --out "$f.pt" > "$f.log" 2>&1
  echo "== $p: $(tail -n 2 "$f.log" | head -n 1)"
}
for ((i = 0; i < ${#presets[@]}; i += 2)); do
  run "${presets[i]}" &
  if [ $((i + 1)) -lt ${#presets[@]} ]; then run "${presets[i + 1]}" & fi
  wait
done
if [[ " ${presets[*]} " == *" echo "* ]]; then
  .venv/bin/python scripts/train_grown.py --from runs/ckpt/echo.pt --rank 64 --out runs/ckpt/echo-r64.pt > runs/ckpt/echo-r64.log 2>&1 &
  .venv/bin/python scripts/train_grown.py --from runs/ckpt/echo.pt --rank 32 --out runs/ckpt/echo-ft.pt > runs/ckpt/echo-ft.log 2>&1 &
  wait
  echo "== echo-r64: $(tail -n 1 runs/ckpt/echo-r64.log)"
  echo "== echo-ft:  $(tail -n 1 runs/ckpt/echo-ft.log)"
  presets+=(echo-r64 echo-ft)
fi
if [[ " ${presets[*]} " == *" ssm+attn "* ]]; then
  .venv/bin/python scripts/pack_checkpoints.py --swa runs/ckpt
  presets+=(ssm+swa)
fi
if [ -z "${NO_PACK:-}" ]; then
  .venv/bin/python scripts/pack_checkpoints.py runs/ckpt echo_tutor/pretrained "${presets[@]}"
fi
