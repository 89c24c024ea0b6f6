"""The grid commands: ``cliff``, ``transfer``, ``ablate``. Each runs one named recipe of its experiment."""

from __future__ import annotations

import argparse
import pathlib
import time
from types import ModuleType

import torch

from ..errors import BadArgumentError
from ..experiments import ablation, cliff, transfer
from ..models import SCALES
from .flags import (
    add_grid_flags,
    given,
    grid_options,
    nonneg_int,
    positive_float,
    positive_int,
)

__all__ = ["add_experiment_commands"]


def recipes_help(mod: ModuleType) -> str:
    """The help text that names an experiment's recipes and which flags pick each."""
    flags = {name: [] for name in mod.RECIPES}
    for (scale, fast), name in mod.PICK.items():
        flags[name].append(" ".join(x for x in ("--scale synth1m" if scale == "synth1m" else "",
                                                 "--fast" if fast else "") if x) or "(no flags)")
    lines = ["recipes (--recipe NAME, or the one that --scale {lab,synth1m} (default lab) and --fast pick):"]
    for name, recipe in mod.RECIPES.items():
        picked = " | ".join(flags[name]) or "only by --recipe"
        lines.append(f"  {name:<20} {picked:<28} {recipe.description}")
    return "\n".join(lines)


def _add_recipe_flags(p: argparse.ArgumentParser, mod: ModuleType) -> None:
    p.add_argument("--recipe", choices=list(mod.RECIPES), default=None, help="the recipe to run, by name (see above)")
    p.add_argument("--scale", choices=list(SCALES), default=None, help="the models' scale (default lab)")
    p.add_argument("--fast", action="store_true", help="the quick recipe of the scale (see above)")
    p.add_argument("--quiet", action="store_true")


def _recipe(mod: ModuleType, args: argparse.Namespace):
    if args.recipe is not None:
        if args.fast or args.scale is not None:
            raise BadArgumentError("--recipe names the recipe itself: drop --fast and --scale")
        return mod.RECIPES[args.recipe]
    return mod.recipe_for(args.scale or "lab", args.fast)


def _announce(command: str, recipe, overrides: dict) -> float:
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
    print(f"echo-tutor {command}: recipe {recipe.name} ({recipe.description})"
          + (f", with {changed}" if changed else ""), flush=True)
    return time.perf_counter()


def cmd_cliff(args: argparse.Namespace) -> int:
    recipe = _recipe(cliff, args)
    over = given(examples=args.eval_examples, presets=args.presets, pairs=args.pairs, gaps=args.gaps)
    t0 = _announce("cliff", recipe, over)
    cliff.run(recipe, pathlib.Path(args.out_dir), grid=grid_options(args), progress=not args.quiet, **over)
    print(f"cliff finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    recipe = _recipe(transfer, args)
    over = given(presets=args.presets, tasks=args.tasks, steps=args.steps, seconds=args.seconds)
    t0 = _announce("transfer", recipe, over)
    transfer.run(recipe, pathlib.Path(args.out_dir), grid=grid_options(args), progress=not args.quiet, **over)
    print(f"transfer finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _recipe(ablation, args).only(tasks=args.tasks, powers=args.powers)
    over = given(seeds=args.seeds, steps=args.steps)
    t0 = _announce("ablate", recipe, over)
    ablation.run(recipe, pathlib.Path(args.out_dir), save_models=args.save_models, grid=grid_options(args),
                 progress=not args.quiet, **over)
    print(f"ablation finished in {time.perf_counter() - t0:.0f} s")
    return 0


def _parser(sub, name: str, mod: ModuleType, help: str, out_dir: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=f"{help}.\n\n{recipes_help(mod)}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_recipe_flags(p, mod)
    p.add_argument("--out-dir", default=out_dir)
    return p


def add_experiment_commands(sub) -> None:
    """Add ``cliff``, ``transfer`` and ``ablate`` to the subparsers ``sub``."""
    p = _parser(sub, "cliff", cliff, "the memory-cliff grid: accuracy vs KV pairs x gap per preset", "runs/cliff")
    p.add_argument("--eval-examples", type=positive_int, default=None, help="examples per point (the recipe's)")
    p.add_argument("--presets", nargs="+", default=None, help="presets (the recipe's)")
    p.add_argument("--pairs", type=positive_int, nargs="+", default=None, help="KV pairs (the recipe's)")
    p.add_argument("--gaps", type=nonneg_int, nargs="+", default=None, help="gaps (the recipe's)")
    add_grid_flags(p)
    p.set_defaults(func=cmd_cliff)

    p = _parser(sub, "transfer", transfer, "transfer tasks and NIAH length generalisation", "runs/transfer")
    p.add_argument("--presets", nargs="+", default=None, help="presets to train (the recipe's: ssm ssm+attn echo)")
    p.add_argument("--tasks", nargs="+", default=None, help="transfer tasks (the recipe's: all six)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps per (task, model)")
    p.add_argument("--seconds", type=positive_float, default=None, help="training seconds per (task, model)")
    add_grid_flags(p)
    p.set_defaults(func=cmd_transfer)

    p = _parser(sub, "ablate", ablation, "power-filter ablation: K, spectral norm, prefix mask over seeds",
                "runs/ablation")
    p.add_argument("--seeds", type=positive_int, default=None, help="seeds per config (the recipe's: 3)")
    p.add_argument("--tasks", nargs="+", default=None, help="a subset of the recipe's tasks (mqar_gap, tool_trace)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (the recipe's)")
    p.add_argument("--powers", type=nonneg_int, nargs="+", default=None,
                   help="only the configs with these power orders K (e.g. --powers 0 2)")
    p.add_argument("--save-models", action="store_true", help="save every trained model into --out-dir")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads of this process (the cells of --executor local)")
    add_grid_flags(p)
    p.set_defaults(func=cmd_ablate)
