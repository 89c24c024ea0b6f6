"""The experiment commands, built from ``echo_tutor.experiments.registry.EXPERIMENTS``: one command per
experiment module, named, described and given its options by the module's ``COMMAND``
(:class:`~echo_tutor.experiments.command.Command`); each runs one named recipe of that experiment."""

from __future__ import annotations

import argparse
import pathlib
import time
from types import ModuleType

import torch

from ..errors import BadArgumentError
from ..experiments import registry
from ..experiments.command import Option
from ..models import SCALES
from .flags import add_grid_flags, grid_options, nonneg_int, positive_float, positive_int

__all__ = ["add_experiment_commands", "recipes_help"]

_TYPES = {"str": str, "positive_int": positive_int, "nonneg_int": nonneg_int, "positive_float": positive_float}


def _scales(mod: ModuleType) -> tuple[str, ...]:
    """The values of the command's ``--scale``, the default first."""
    return mod.COMMAND.scales or ("lab", *(s for s in SCALES if s != "lab"))


def recipes_help(mod: ModuleType) -> str:
    """The help text that names an experiment's recipes and which flags pick each."""
    scales = _scales(mod)
    flags = {name: [] for name in mod.RECIPES}
    for (scale, fast), name in mod.PICK.items():
        flags[name].append(" ".join(x for x in (f"--scale {scale}" if scale != scales[0] else "",
                                                 "--fast" if fast else "") if x) or "(no flags)")
    how = f"--scale {{{','.join(scales)}}} (default {scales[0]}) and --fast" if len(scales) > 1 else "--fast"
    lines = [f"recipes (--recipe NAME, or the one that {how} pick):"]
    for name, recipe in mod.RECIPES.items():
        picked = " | ".join(flags[name]) or "only by --recipe"
        lines.append(f"  {name:<20} {picked:<28} {recipe.description}")
    return "\n".join(lines)


def _recipe(mod: ModuleType, args: argparse.Namespace):
    if args.recipe is not None:
        if args.fast or args.scale is not None:
            raise BadArgumentError("--recipe names the recipe itself: drop --fast and --scale")
        return mod.RECIPES[args.recipe]
    return mod.recipe_for(args.scale or _scales(mod)[0], args.fast)


def _given(args: argparse.Namespace, options: tuple[Option, ...], to: str) -> dict:
    """``{field: value}`` of the options going ``to`` ("recipe", "only", "run") that were given."""
    out = {}
    for o in options:
        v = getattr(args, o.dest)
        if o.to == to and v is not None and v is not False:
            out[o.field] = v
    return out


def _run(mod: ModuleType, args: argparse.Namespace) -> int:
    """Run the picked recipe of ``mod`` with the given options; print what ran and how long it took."""
    command = mod.COMMAND
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _recipe(mod, args)
    only = _given(args, command.options, "only")
    if only:
        recipe = recipe.only(**only)
    over = _given(args, command.options, "recipe")
    changed = ", ".join(f"{k}={v}" for k, v in over.items())
    print(f"echo-tutor {command.name}: recipe {recipe.name} ({recipe.description})"
          + (f", with {changed}" if changed else ""), flush=True)
    t0 = time.perf_counter()
    mod.run(recipe, pathlib.Path(args.out_dir), grid=grid_options(args), progress=not args.quiet,
            **_given(args, command.options, "run"), **over)
    print(f"{command.finished} finished in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_command(sub, mod: ModuleType) -> None:
    command = mod.COMMAND
    p = sub.add_parser(command.name, help=command.help, description=f"{command.help}.\n\n{recipes_help(mod)}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=list(mod.RECIPES), default=None, help="the recipe to run, by name (see above)")
    p.add_argument("--scale", choices=list(_scales(mod)), default=None, help=f"the models' scale (default {_scales(mod)[0]})")
    p.add_argument("--fast", action="store_true", help="the quick recipe of the scale (see above)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out-dir", default=command.out_dir)
    for o in command.options:
        if o.flag_only:
            p.add_argument(o.flag, dest=o.dest, action="store_true", help=o.help)
        else:
            p.add_argument(o.flag, dest=o.dest, metavar=o.flag[2:].upper().replace("-", "_"), type=_TYPES[o.type],
                           nargs=o.nargs, default=None, help=o.help)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads of this process (the cells of --executor local)")
    add_grid_flags(p)
    p.set_defaults(func=lambda args, mod=mod: _run(mod, args))


def add_experiment_commands(sub) -> None:
    """Add one command per experiment of ``registry.EXPERIMENTS`` (read at call time) to the subparsers ``sub``."""
    for mod in registry.EXPERIMENTS.values():
        _add_command(sub, mod)
