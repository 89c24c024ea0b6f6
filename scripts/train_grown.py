"""Warm-start a larger-rank SKA model from a trained smaller one and fine-tune it on more KV pairs.

    python scripts/train_grown.py --from echo --rank 64 --out runs/ckpt/echo-r64.pt
    python scripts/train_grown.py --from echo --rank 32 --out runs/ckpt/echo-ft.pt    # the control

Trained from scratch, the lab-scale r=64 preset (``echo-r64``) never left chance with LAB_RECIPE
(docs/results.md). Growing a trained r=32 ``echo`` to r=64 (``echo_tutor.models.grow_ska_rank``: the
trained key/query rows are kept, the new ones start near zero, so training starts from a model that
already recalls) and fine-tuning on a mixture with more pairs than r=32 can hold does learn. ``--rank``
equal to the source's rank fine-tunes without growing: the control that separates "more rank" from "more
training on many pairs". ``--from`` is a shipped model name or a checkpoint file. Saves ``--out`` (float32)
and a ``.json`` record beside it (the command, history and evaluations, in the format of the shipped
checkpoints' records).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from echo_tutor.models import grow_ska_rank, load
from echo_tutor.pretrained import load_pretrained
from echo_tutor.tasks import make_task
from echo_tutor.train import TrainConfig, evaluate, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", default="echo", help="shipped model name or checkpoint file (default: echo)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--noise", type=float, default=1e-2, help="scale of the new key/query rows")
    ap.add_argument("--pairs", type=int, nargs="+", default=[16, 32, 48])
    ap.add_argument("--gaps", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/ckpt/echo-r64.pt")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = load(a.src) if a.src.endswith(".pt") else load_pretrained(a.src)
    ranks = {b.mixer.rank for b in src.blocks if hasattr(b.mixer, "rank")}
    model = src if a.rank in ranks else grow_ska_rank(src, a.rank, noise=a.noise, seed=a.seed)
    model.train()
    task = make_task("mqar_gap", vocab_size=128, num_kv_pairs=a.pairs, gap=a.gaps, show_values=False)
    probe = make_task("mqar_gap", vocab_size=128, num_kv_pairs=32, gap=256, show_values=False)
    t0 = time.time()
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, time_budget_s=60 * a.minutes,
                      eval_every=max(1, a.steps // 10), eval_examples=128)
    res = train(model, task, cfg, eval_task=probe, progress=True)
    model.eval()
    final = {n: evaluate(model, make_task("mqar_gap", vocab_size=128, num_kv_pairs=n, gap=256, show_values=False),
                         128, batch_size=16) for n in (16, 32, 48)}
    print("accuracy at gap 256 by pairs:", {k: round(v, 3) for k, v in final.items()}, flush=True)
    model.save(out)
    grown = a.rank not in ranks
    out.with_suffix(".json").write_text(json.dumps({
        "preset": f"echo-r{a.rank}" if grown else f"{a.src} fine-tuned", "scale": "lab", "task": task.describe(),
        "steps": res.steps_done, "time_s": round(res.time_s, 1), "wall_s": round(time.time() - t0, 1),
        "final_eval": res.final_eval, "eval_task": probe.describe(), "evals": res.evals,
        "history": res.history[:: max(1, len(res.history) // 200)], "acc_gap256": final,
        "argv": ["scripts/train_grown.py", *(sys.argv[1:] if argv is None else argv)],
        "note": (f"{a.src} (r={sorted(ranks)}) grown to r={a.rank} by echo_tutor.models.grow_ska_rank (noise {a.noise}), "
                 f"then fine-tuned" if grown else f"{a.src} fine-tuned at its own rank (the control)")
                + f" for {res.steps_done} steps on {task.describe()}, lr {a.lr}, batch {a.batch_size}"}, indent=1))


if __name__ == "__main__":
    main()
