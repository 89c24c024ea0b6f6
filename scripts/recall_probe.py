"""Train one small model on MQAR-gap for a few minutes and print its learning curve and a pairs x gap grid.

The sweep behind the lab scale (docs/results.md, "The lab scale") was run with this script, one thread each:

    python scripts/recall_probe.py --layout mamba2,attn --gaps 0 16 32 64 128 --show-values --minutes 5
    python scripts/recall_probe.py --layout mamba2,attn --pairs 4 8 16 --gaps 0 16 32 64 128 256 512 1024 \\
        --mk '{"attn": {"rope": false}}' --batch-size 16 --minutes 8

Flags name the model (``--layout``, ``--d-model``, ``--heads``, ``--rank``, ``--K``, ``--mk`` for per-mixer
keyword arguments as JSON) and the task (``--pairs``, ``--gaps`` as mixtures, ``--queries``, ``--show-values``).
"""

import argparse
import json

import torch

from echo_tutor.models import HybridConfig, HybridLM
from echo_tutor.tasks import make_task
from echo_tutor.train import TrainConfig, evaluate, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", default="mamba2,ska")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--K", type=int, default=1, help="SKA power order")
    p.add_argument("--mk", default="{}", help='per-mixer kwargs as JSON, e.g. \'{"attn": {"rope": false}}\'')
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--pairs", type=int, nargs="+", default=[8])
    p.add_argument("--gaps", type=int, nargs="+", default=[0, 16, 32, 64, 128])
    p.add_argument("--queries", choices=["once", "random"], default="once")
    p.add_argument("--show-values", action="store_true", help="Zoology's layout (values after queries)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-gaps", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="save the model here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    mk = json.loads(a.mk)
    if "ska" in a.layout:
        mk.setdefault("ska", {}).setdefault("power_steps", a.K)
    model = HybridLM(HybridConfig(a.vocab, d_model=a.d_model, layout=a.layout, n_heads=a.heads, ska_rank=a.rank,
                     mixer_kwargs={k: v for k, v in mk.items() if k in a.layout}))
    one = lambda xs: xs[0] if len(xs) == 1 else xs  # noqa: E731
    kw = dict(vocab_size=a.vocab, queries=a.queries, show_values=a.show_values)
    task = make_task("mqar_gap", num_kv_pairs=one(a.pairs), gap=one(a.gaps), **kw)
    print(vars(a), flush=True)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, seed=a.seed,
                      eval_every=100, eval_examples=128, time_budget_s=60 * a.minutes)
    train(model, task, cfg, progress=False,
          callback=lambda r: print(f"step {r['step']} loss {r['loss']:.3f} eval {r['eval_acc']:.3f} t {r['time_s']:.0f}", flush=True))
    for n in sorted(set(a.pairs) | {16}):
        cells = [f"{g}:{evaluate(model, make_task('mqar_gap', num_kv_pairs=n, gap=g, **kw), 128, batch_size=32):.2f}"
                 for g in (a.eval_gaps or sorted(set(a.gaps) | {256, 1024}))]
        print("pairs", n, " ".join(cells), flush=True)
    if a.out:
        model.save(a.out)


if __name__ == "__main__":
    main()
