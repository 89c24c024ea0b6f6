"""Argument types and flag groups the commands share."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from ..grid import GridOptions

__all__ = ["positive_int", "nonneg_int", "positive_float", "nonneg_float", "add_grid_flags", "grid_options",
           "check_grid_flags"]


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


positive_int = _parser_of(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _parser_of(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _parser_of(float, lambda v: v > 0, "a positive number")
nonneg_float = _parser_of(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def add_grid_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the grid commands (cliff, transfer, ablate): where and how the cells run."""
    g = p.add_argument_group("grid", "where the cells run; every cell is recorded in <out-dir>/records.jsonl and "
                                     "a rerun into the same --out-dir skips the recorded ones")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one cell after the other in this process (default); ray: every cell a Ray task")
    g.add_argument("--address", default=None,
                   help="ray only: 'auto' or HOST:PORT joins a running cluster (`ray start`); default: an embedded "
                        "Ray on this machine")
    g.add_argument("--cpus-per-cell", type=positive_float, default=1.0,
                   help="ray only: CPUs reserved per cell (default 1)")
    g.add_argument("--gpus-per-cell", type=nonneg_float, default=0.0,
                   help="ray only: GPUs reserved per cell (default 0; 1 on a GPU cluster, 0.5 packs two per GPU)")
    g.add_argument("--max-retries", type=nonneg_int, default=2,
                   help="ray only: reruns of a cell whose worker died (default 2; a cell that raises is not retried)")


def check_grid_flags(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot check: exit 2 with a one-line message."""
    if getattr(args, "executor", None) is None:
        return
    if args.address is not None and args.executor != "ray":
        ap.error(f"--address needs --executor ray (got --executor {args.executor})")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        ap.error("--executor ray needs Ray: pip install 'echo_tutor[cluster]'")


def grid_options(args: argparse.Namespace) -> GridOptions:
    """The grid flags as one :class:`~echo_tutor.grid.GridOptions`."""
    return GridOptions(executor=args.executor, address=args.address, cpus_per_cell=args.cpus_per_cell,
                       gpus_per_cell=args.gpus_per_cell, max_retries=args.max_retries)


def given(**kw: Any) -> dict[str, Any]:
    """The keyword arguments whose value was given (not None): recipe overrides from optional flags."""
    return {k: v for k, v in kw.items() if v is not None}
