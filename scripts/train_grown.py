"""Warm-start a larger-rank SKA model from a trained smaller one and fine-tune it on more KV pairs.

    python scripts/train_grown.py --from echo --rank 64 --out runs/echo-r64

Trained from scratch, the lab-scale r=64 preset (``echo-r64``) never left chance with LAB_RECIPE
(docs/results.md). Growing the shipped r=32 ``echo`` to r=64 (``echo_tutor.models.grow_ska_rank``: the
trained key/query rows are kept, the new ones start near zero, so training starts from a model that
already recalls) and fine-tuning on a mixture with more pairs than r=32 can hold does learn. Saves
``<out>/model.pt`` (float32) and ``<out>/train.json`` (the command, history and evaluations).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from echo_tutor.models import grow_ska_rank
from echo_tutor.pretrained import load_pretrained
from echo_tutor.tasks import make_task
from echo_tutor.train import evaluate, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", default="echo", help="shipped model to grow (default: echo)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--noise", type=float, default=1e-2, help="scale of the new key/query rows")
    ap.add_argument("--pairs", type=int, nargs="+", default=[8, 16, 32, 48])
    ap.add_argument("--gaps", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/echo-r64")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = grow_ska_rank(load_pretrained(a.src).train(), a.rank, noise=a.noise, seed=a.seed)
    task = make_task("mqar_gap", vocab_size=128, num_kv_pairs=a.pairs, gap=a.gaps, show_values=False)
    probe = make_task("mqar_gap", vocab_size=128, num_kv_pairs=32, gap=256, show_values=False)
    t0 = time.time()
    res = train(model, task, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                time_budget_s=60 * a.minutes, eval_every=max(1, a.steps // 10), eval_examples=128,
                eval_task=probe, progress=True)
    model.eval()
    final = {n: evaluate(model, make_task("mqar_gap", vocab_size=128, num_kv_pairs=n, gap=256, show_values=False),
                         128, batch_size=16) for n in (16, 32, 48)}
    print("accuracy at gap 256 by pairs:", {k: round(v, 3) for k, v in final.items()}, flush=True)
    model.save(out / "model.pt")
    (out / "train.json").write_text(json.dumps({
        "command": "python scripts/train_grown.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "from": a.src, "rank": a.rank, "task": task.describe(),
        "steps": res.steps_done, "time_s": round(res.time_s, 1), "wall_s": round(time.time() - t0, 1),
        "evals": res.evals, "history": res.history[:: max(1, len(res.history) // 200)],
        "acc_gap256": final}, indent=1))


if __name__ == "__main__":
    main()
