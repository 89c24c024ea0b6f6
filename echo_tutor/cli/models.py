"""The model commands: ``train`` a preset and ``eval`` a saved or shipped model."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import torch

from ..errors import BadArgumentError
from ..experiments import transfer_task_args
from ..models import LAB_PRESETS, PRESETS, SCALES, build, count_parameters, load, scale_of
from ..pretrained import available, load_pretrained
from ..tasks import TASKS, make_task
from ..train import TrainConfig, evaluate, save_records, train
from .flags import nonneg_int, positive_float, positive_int

__all__ = ["add_model_commands", "task_from_args"]


def _model_of(name: str):
    """A saved model (a path that exists) or a shipped one (a name); a path that does not exist says so."""

    p = pathlib.Path(name)
    if p.exists():
        return load(p)
    if name in available():
        return load_pretrained(name)
    if p.suffix or "/" in name or "\\" in name:
        raise BadArgumentError(f"model: {name} does not exist (a .pt path; or a shipped model: {available()})")
    raise BadArgumentError(f"model must be a .pt file that exists or a shipped model {available()}, got {name!r}")


def task_from_args(args: argparse.Namespace, gaps: list[int] | None = None, pairs: list[int] | None = None):
    """The task the flags describe (lists become per-batch mixtures)."""
    gaps = gaps if gaps is not None else args.gaps
    pairs = pairs if pairs is not None else args.pairs
    one = lambda xs: xs[0] if len(xs) == 1 else list(xs)  # noqa: E731
    V = args.vocab
    if args.task == "mqar_gap":
        return make_task("mqar_gap", vocab_size=V, num_kv_pairs=one(pairs), gap=one(gaps), queries=args.queries,
                         show_values=args.values == "shown")
    if args.task == "mqar":
        return make_task("mqar", vocab_size=V, seq_len=one(args.seq_len), num_kv_pairs=one(pairs))
    if args.task == "niah":
        return make_task("niah", vocab_size=V, seq_len=one(args.seq_len))

    return make_task(**transfer_task_args(args.task, V))



def _add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="mqar_gap", choices=list(TASKS), help="task name (default mqar_gap)")
    p.add_argument("--vocab", type=positive_int, default=128, help="vocabulary size (default 128)")
    p.add_argument("--pairs", type=positive_int, nargs="+", default=[8], help="KV pairs (several: a mixture)")
    p.add_argument("--gaps", type=nonneg_int, nargs="+", default=[64, 128, 256, 512, 1024],
                   help="distractor gaps for mqar_gap (several: a mixture)")
    p.add_argument("--seq-len", type=positive_int, nargs="+", default=[256], help="length for mqar / niah")
    p.add_argument("--values", choices=["hidden", "shown"], default="hidden",
                   help="mqar_gap: is each query's value shown after it? (default hidden: the lab-scale recipe; "
                        "'shown' is Zoology's layout, with its elimination shortcut)")
    p.add_argument("--queries", choices=["once", "random"], default="once",
                   help="mqar_gap: every key asked once (default) or keys drawn with replacement")



def cmd_train(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides: dict[str, Any] = {}
    if args.d_model:
        overrides["d_model"] = args.d_model
    model = build(args.preset, vocab_size=args.vocab, scale=args.scale, **overrides)
    task = task_from_args(args)
    print(f"preset {args.preset} ({scale_of(args.preset)} scale): {count_parameters(model):,d} parameters, "
          f"layout {model.layout}")
    print(f"task {task.describe()}; budget {args.steps} steps / {args.minutes} min; batch {args.batch_size}, "
          f"lr {args.lr}; {torch.get_num_threads()} thread(s)")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      eval_every=args.eval_every, eval_examples=args.eval_examples,
                      time_budget_s=None if args.minutes is None else 60 * args.minutes, compile=args.compile)
    res = train(model, task, cfg,
                progress=not args.quiet and sys.stderr.isatty(),
                callback=None if args.quiet else lambda r: print(
                    f"  step {r['step']:>5}  loss {r['loss']:.3f}  train acc {r['acc']:.3f}  eval acc {r['eval_acc']:.3f}"
                    f"  ({r['time_s']:.0f} s)", flush=True))
    print(f"trained {res.steps_done} steps in {res.time_s:.0f} s; final eval accuracy {res.final_eval:.3f}")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(out, dtype=torch.float16 if args.half else None)
        meta = {"preset": args.preset, "scale": scale_of(args.preset), "task": task.describe(), "steps": res.steps_done, "time_s": round(res.time_s, 1),
                "final_eval": res.final_eval, "history": res.history[:: max(1, len(res.history) // 200)],
                "evals": res.evals, "config": res.config, "argv": sys.argv[1:]}
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        print(f"saved {out} and {out.with_suffix('.json')}")
    return 0



def cmd_eval(args: argparse.Namespace) -> int:
    model = _model_of(args.model)
    rows = []
    for pairs in args.pairs:
        for gap in args.gaps:
            task = task_from_args(args, gaps=[gap], pairs=[pairs])
            acc = evaluate(model, task, args.eval_examples, batch_size=args.batch_size)
            rows.append({"pairs": pairs, "gap": gap, "acc": acc})
            print(f"pairs {pairs:>3}  gap {gap:>5}  accuracy {acc:.3f}", flush=True)
            if args.task != "mqar_gap":
                break
        if args.task != "mqar_gap":
            break
    if args.out:
        save_records(rows, args.out)
    return 0



def add_model_commands(sub) -> None:
    """Add ``train`` and ``eval`` to the subparsers ``sub``."""
    p = sub.add_parser("train", help="train a preset on a recall task and save it")
    p.add_argument("--preset", default="echo", choices=[*LAB_PRESETS, *PRESETS],
                   help="lab scale (default echo): %s; the paper's synthetic-task size, about 1M parameters (a GPU job): %s" % (", ".join(LAB_PRESETS),
                                                                                 ", ".join(PRESETS)))
    p.add_argument("--scale", choices=list(SCALES), default=None,
                   help="optional: the preset's scale, checked (the preset's name says it)")
    _add_task_flags(p)
    p.add_argument("--steps", type=positive_int, default=2000, help="maximum optimiser steps (default 2000)")
    p.add_argument("--minutes", type=positive_float, default=None, help="wall-clock training budget")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--d-model", type=positive_int, default=None, help="override the preset's width")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile(fullgraph=True): pays off on long runs only (compile time)")
    p.add_argument("--eval-every", type=positive_int, default=100)
    p.add_argument("--eval-examples", type=positive_int, default=256)
    p.add_argument("--out", default=None, help="where to save the model (.pt; a .json with the history beside it)")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (the shipped checkpoints)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved or shipped model")
    p.add_argument("--model", required=True, help="a .pt file, or a shipped name such as 'echo'")
    _add_task_flags(p)
    p.add_argument("--eval-examples", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--out", default=None, help="write the records as .json or .csv")
    p.set_defaults(func=cmd_eval)
