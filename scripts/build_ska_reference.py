"""The reference curve lab 02 draws beside the learner's: the library's SKA layer in the lab-scale echo model,
trained exactly as lab 02 trains the learner's layer in FAST mode (same seed, same initial weights, same task,
batch and steps), with its evaluation every 25 steps and its accuracy by gap afterwards.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/build_ska_reference.py    # about 2 minutes on one CPU core

writes echo_tutor/pretrained/results_build_ska.json.
"""

from __future__ import annotations

import json
import pathlib
import time

import torch

from echo_tutor.models import build
from echo_tutor.tasks import make_task
from echo_tutor.train import TrainConfig, evaluate, train

# lab 02's FAST recipe (notebooks/02_ska_from_scratch.py, section 7)
TASK = dict(name="mqar_gap", vocab_size=128, num_kv_pairs=[4, 8], gap=[64, 128, 256], show_values=False)
STEPS, EVAL_EVERY, SEED = 400, 25, 0
GAPS = [64, 256, 1024, 4096]


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = build("echo", scale="lab")
    t0 = time.perf_counter()
    cfg = TrainConfig(steps=STEPS, batch_size=16, lr=3e-3, eval_every=EVAL_EVERY, eval_examples=128)
    res = train(model, make_task(**TASK), cfg, device="cpu", progress=False)
    model.eval()
    by_gap = {g: evaluate(model, make_task("mqar_gap", vocab_size=128, num_kv_pairs=8, gap=g, show_values=False), 128,
                          batch_size=16) for g in GAPS}
    out = {"what": "the library's SpectralKoopmanAttention in the lab-scale echo, trained as lab 02 trains the "
                   "learner's layer in FAST mode", "task": TASK, "steps": STEPS, "batch_size": 16, "lr": 3e-3,
           "seed": SEED, "evals": res.evals, "acc_by_gap_8pairs": by_gap, "train_seconds": round(res.time_s, 1),
           "command": "OMP_NUM_THREADS=1 python scripts/build_ska_reference.py"}
    path = pathlib.Path(__file__).resolve().parents[1] / "echo_tutor" / "pretrained" / "results_build_ska.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"final eval {res.final_eval:.3f} after {STEPS} steps ({time.perf_counter() - t0:.0f} s); by gap {by_gap}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
