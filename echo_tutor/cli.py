"""``echo-tutor``: train, evaluate and reproduce the experiments from the command line.

    echo-tutor train  --scale lab --preset echo --pairs 4 8 16 --gaps 0 16 32 64 128 256 512 1024 --out m.pt
    echo-tutor eval   --model echo --pairs 8 16 --gaps 64 256 1024 4096
    echo-tutor cliff  [--fast]          the KV-pairs x gap grid for ssm, ssm+attn, echo, ssm+ridge
    echo-tutor transfer [--fast]        the transfer tasks and the NIAH length-generalisation table
    echo-tutor ablate [--fast]          power order K, spectral norm and prefix mask, same budget and seeds

cliff, transfer and ablate run their grid cell by cell (--executor local, the default) or as Ray tasks
(--executor ray; --address auto joins a cluster started with `ray start`), recording every cell in
<out-dir>/records.jsonl: rerunning the same command into the same --out-dir only runs the cells not recorded
yet (see docs/gpu.md).

Bad arguments exit with status 2 and a message; every command prints what it measured. A grid whose
cells failed exits with status 1 after listing them (one per line: spec, error).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any

import torch

from .grid import GridError
from .models import LAB_PRESETS, PRESETS, build, count_parameters, load
from .tasks import TASKS, make_task
from .train import evaluate, save_records, train

__all__ = ["main", "EXIT_CELLS_FAILED"]

EXIT_CELLS_FAILED = 1  # some cells of a grid failed (argparse and bad arguments exit with 2)


def _parser_of(cast, ok, what: str):
    """An argparse ``type=`` that casts, checks ``ok(value)`` and says what was expected."""

    def parse(s: str):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _parser_of(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _parser_of(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _parser_of(float, lambda v: v > 0, "a positive number")
_nonneg_float = _parser_of(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def _add_grid_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the grid commands (cliff, transfer, ablate): where and how the cells run."""
    g = p.add_argument_group("grid", "where the cells run; every cell is recorded in <out-dir>/records.jsonl and "
                                     "a rerun into the same --out-dir skips the recorded ones")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one cell after the other in this process (default); ray: every cell a Ray task")
    g.add_argument("--address", default=None,
                   help="ray only: 'auto' or HOST:PORT joins a running cluster (`ray start`); default: an embedded "
                        "Ray on this machine")
    g.add_argument("--cpus-per-cell", type=_positive_float, default=1.0,
                   help="ray only: CPUs reserved per cell (default 1)")
    g.add_argument("--gpus-per-cell", type=_nonneg_float, default=0.0,
                   help="ray only: GPUs reserved per cell (default 0; 1 on a GPU cluster, 0.5 packs two per GPU)")
    g.add_argument("--max-retries", type=_nonneg_int, default=2,
                   help="ray only: reruns of a cell whose worker died (default 2; a cell that raises is not retried)")


def _grid_args(args: argparse.Namespace) -> dict[str, Any]:
    return dict(executor=args.executor, address=args.address, cpus_per_cell=args.cpus_per_cell,
                gpus_per_cell=args.gpus_per_cell, max_retries=args.max_retries)


def _check_grid_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot check: exit 2 with a one-line message."""
    if getattr(args, "executor", None) is None:
        return
    if args.address is not None and args.executor != "ray":
        ap.error(f"--address needs --executor ray (got --executor {args.executor})")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        ap.error("--executor ray needs Ray: pip install 'echo_tutor[cluster]'")


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
    from .experiments import transfer_task

    return transfer_task(args.task, V, fast=False)


def _add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="mqar_gap", choices=list(TASKS), help="task name (default mqar_gap)")
    p.add_argument("--vocab", type=_positive_int, default=128, help="vocabulary size (default 128)")
    p.add_argument("--pairs", type=_positive_int, nargs="+", default=[8], help="KV pairs (several: a mixture)")
    p.add_argument("--gaps", type=_nonneg_int, nargs="+", default=[64, 128, 256, 512, 1024],
                   help="distractor gaps for mqar_gap (several: a mixture)")
    p.add_argument("--seq-len", type=_positive_int, nargs="+", default=[256], help="length for mqar / niah")
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
    print(f"preset {args.preset} ({args.scale} scale): {count_parameters(model):,d} parameters, layout {model.layout}")
    print(f"task {task.describe()}; budget {args.steps} steps / {args.minutes} min; batch {args.batch_size}, "
          f"lr {args.lr}; {torch.get_num_threads()} thread(s)")
    res = train(model, task, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                eval_every=args.eval_every, eval_examples=args.eval_examples,
                time_budget_s=None if args.minutes is None else 60 * args.minutes,
                progress=not args.quiet and sys.stderr.isatty(),
                callback=None if args.quiet else lambda r: print(
                    f"  step {r['step']:>5}  loss {r['loss']:.3f}  train acc {r['acc']:.3f}  eval acc {r['eval_acc']:.3f}"
                    f"  ({r['time_s']:.0f} s)", flush=True))
    print(f"trained {res.steps_done} steps in {res.time_s:.0f} s; final eval accuracy {res.final_eval:.3f}")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save(out, dtype=torch.float16 if args.half else None)
        meta = {"preset": args.preset, "scale": args.scale, "task": task.describe(), "steps": res.steps_done, "time_s": round(res.time_s, 1),
                "final_eval": res.final_eval, "history": res.history[:: max(1, len(res.history) // 200)],
                "evals": res.evals, "config": res.config, "argv": sys.argv[1:]}
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        print(f"saved {out} and {out.with_suffix('.json')}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import pretrained

    model = pretrained(args.model) if not pathlib.Path(args.model).exists() else load(args.model)
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


def cmd_cliff(args: argparse.Namespace) -> int:
    from .experiments import cliff

    t0 = time.perf_counter()
    cliff(fast=args.fast, out_dir=pathlib.Path(args.out_dir), examples=args.eval_examples, progress=not args.quiet,
          **_grid_args(args))
    print(f"cliff finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from .experiments import transfer

    t0 = time.perf_counter()
    transfer(fast=args.fast, out_dir=pathlib.Path(args.out_dir), seconds=args.seconds, progress=not args.quiet,
             scale=args.scale, presets=args.presets, tasks=args.tasks, steps=args.steps, **_grid_args(args))
    print(f"transfer finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from .experiments import ablation

    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = None
    if args.powers is not None:
        from .experiments import ABLATION_CONFIGS, LAB_ABLATION_CONFIGS

        table = LAB_ABLATION_CONFIGS if args.scale == "lab" else ABLATION_CONFIGS
        configs = [c for c in table if c[1] in args.powers]
        if not configs:
            raise ValueError(f"--powers: no {args.scale}-scale config has K in {args.powers} "
                             f"(have {sorted({c[1] for c in table})})")
    ablation(fast=args.fast, out_dir=pathlib.Path(args.out_dir), seeds=args.seeds, steps=args.steps, tasks=args.tasks,
             progress=not args.quiet, scale=args.scale, save_models=args.save_models, configs=configs,
             **_grid_args(args))
    print(f"ablation finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_echokv(args: argparse.Namespace) -> int:
    from .echokv.study import StudyConfig, format_table, run_study, save

    cfg = StudyConfig.fast() if args.fast else StudyConfig()
    if args.stage2_steps is not None:
        cfg.stage2_steps = args.stage2_steps
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run_study(cfg, progress=not args.quiet and sys.stderr.isatty())
    result["command"] = "echo-tutor echokv" + (" --fast" if args.fast else "")
    save(result, str(out_dir / "echokv.json"))
    table = format_table(result, 0.5 if 0.5 in cfg.ratios else cfg.ratios[0])
    (out_dir / "echokv.md").write_text(table + "\n")
    print(table)
    print(f"echokv study finished in {time.perf_counter() - t0:.0f} s; wrote {out_dir}/echokv.json")
    return 0


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="echo-tutor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{train,eval,cliff,transfer,ablate,echokv}")

    p = sub.add_parser("train", help="train a preset on a recall task and save it")
    p.add_argument("--preset", default="echo", choices=sorted(set(PRESETS) | set(LAB_PRESETS)),
                   help="a preset of --scale (paper: %s; lab: %s)" % (", ".join(PRESETS), ", ".join(LAB_PRESETS)))
    p.add_argument("--scale", choices=["paper", "lab"], default="lab",
                   help="lab: the CPU lab scale (default); paper: the paper's sub-million models (a GPU job)")
    _add_task_flags(p)
    p.add_argument("--steps", type=_positive_int, default=2000, help="maximum optimiser steps (default 2000)")
    p.add_argument("--minutes", type=_positive_float, default=None, help="wall-clock training budget")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=_positive_float, default=3e-3)
    p.add_argument("--d-model", type=_positive_int, default=None, help="override the preset's width")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--eval-every", type=_positive_int, default=100)
    p.add_argument("--eval-examples", type=_positive_int, default=256)
    p.add_argument("--out", default=None, help="where to save the model (.pt; a .json with the history beside it)")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (the shipped checkpoints)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved or shipped model")
    p.add_argument("--model", required=True, help="a .pt file, or a shipped name such as 'echo'")
    _add_task_flags(p)
    p.add_argument("--eval-examples", type=_positive_int, default=256)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--out", default=None, help="write the records as .json or .csv")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("cliff", help="the memory-cliff grid: accuracy vs KV pairs x gap per preset")
    p.add_argument("--fast", action="store_true", help="evaluate the shipped checkpoints only (minutes on a CPU)")
    p.add_argument("--out-dir", default="runs/cliff")
    p.add_argument("--eval-examples", type=_positive_int, default=None)
    p.add_argument("--quiet", action="store_true")
    _add_grid_flags(p)
    p.set_defaults(func=cmd_cliff)

    p = sub.add_parser("transfer", help="transfer tasks and NIAH length generalisation")
    p.add_argument("--fast", action="store_true",
                   help="short training per model (paper scale: 60 s; lab scale: 1,500 steps)")
    p.add_argument("--scale", choices=["paper", "lab"], default="paper",
                   help="paper-size presets (default) or the CPU lab scale (LAB_PRESETS, SKA chunks of 16, fixed steps)")
    p.add_argument("--presets", nargs="+", default=None, help="presets to train (default: ssm ssm+attn echo)")
    p.add_argument("--tasks", nargs="+", default=None, help="transfer tasks (default: all six)")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps per (task, model)")
    p.add_argument("--seconds", type=_positive_float, default=None, help="training seconds per (task, model)")
    p.add_argument("--out-dir", default="runs/transfer")
    p.add_argument("--quiet", action="store_true")
    _add_grid_flags(p)
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("ablate", help="power-filter ablation: K, spectral norm, prefix mask (MQAR-gap, tool trace)")
    p.add_argument("--fast", action="store_true", help="d=64 models, short tasks, 500 steps (about 20 CPU minutes)")
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--tasks", nargs="+", choices=["mqar_gap", "tool_trace"], default=None,
                   help="default: both (scale small), mqar_gap (scale lab)")
    p.add_argument("--scale", choices=["small", "lab"], default="small",
                   help="small: d=64 4-block models on short tasks (the first ablation); lab: the lab-scale echo "
                        "model on the lab recipe, K = 0, 1, 2")
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--powers", type=_nonneg_int, nargs="+", default=None,
                   help="only the configs with these power orders K (e.g. --powers 0 2)")
    p.add_argument("--save-models", action="store_true", help="save every trained model into --out-dir")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads of this process (the cells of --executor local)")
    p.add_argument("--out-dir", default="runs/ablation")
    p.add_argument("--quiet", action="store_true")
    _add_grid_flags(p)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("echokv", help="EchoKV-lite on SmolLM2: perplexity vs cache bytes for it and the baselines")
    p.add_argument("--fast", action="store_true", help="small calibration/eval sets, 5 stage-2 steps (a few CPU minutes)")
    p.add_argument("--stage2-steps", type=_nonneg_int, default=None, help="override the stage-2 (KL) steps")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--out-dir", default="runs/echokv")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_echokv)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = make_parser()
    args = ap.parse_args(argv)
    _check_grid_args(ap, args)
    try:
        return args.func(args)
    except GridError as e:  # the summary of the other cells is written; list the failed ones, one per line
        print(f"echo-tutor {args.command}: {e}", file=sys.stderr)
        return EXIT_CELLS_FAILED
    except ValueError as e:  # a library ValueError names the bad argument: show it without a trace
        print(f"echo-tutor {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
