"""``echo-tutor``: train, evaluate and reproduce the experiments from the command line.

    echo-tutor train  --scale lab --preset echo --pairs 4 8 16 --gaps 0 16 32 64 128 256 512 1024 --out m.pt
    echo-tutor eval   --model echo --pairs 8 16 --gaps 64 256 1024 4096
    echo-tutor cliff    [--fast] [--scale lab|synth1m] [--recipe NAME]   the KV-pairs x gap grid per preset
    echo-tutor transfer [--fast] [--scale lab|synth1m] [--recipe NAME]   transfer tasks and NIAH length generalisation
    echo-tutor ablate   [--fast] [--scale lab|synth1m] [--recipe NAME]   power order K, spectral norm, prefix mask
    echo-tutor echokv   [--fast]                                       EchoKV-lite on SmolLM2
    echo-tutor convert  [--fast] [--variants ...] [--layers N]         SmolLM2's attention into SKA / window / linear
    echo-tutor grade    SUBMISSIONS... [--out grades]                  checkers + rubric: a report per student
    echo-tutor preview  [--labs 00,03] [--out preview]                 the labs executed, as static HTML

cliff, transfer and ablate each run one named recipe of their experiment (echo_tutor.experiments.RECIPES):
--recipe names it, or --scale (default lab) and --fast pick it; `echo-tutor cliff --help` lists them.

cliff, transfer and ablate run their grid cell by cell (--executor local, the default) or as Ray tasks
(--executor ray; --address auto joins a cluster started with `ray start`), recording every cell in
<out-dir>/records.jsonl: rerunning the same command into the same --out-dir only runs the cells not recorded
yet (see docs/gpu.md).

Bad arguments (the package's BadArgumentError) exit with status 2 and a one-line message; every command
prints what it measured. A grid whose cells failed exits with status 1 after listing them (one per line:
spec, error). Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import BadArgumentError
from ..grid import GridError
from .course import add_course_commands
from .experiments import add_experiment_commands
from .flags import check_grid_flags
from .models import add_model_commands

__all__ = ["main", "make_parser", "EXIT_CELLS_FAILED", "EXIT_BAD_ARGUMENT"]

EXIT_CELLS_FAILED = 1  # some cells of a grid failed
EXIT_BAD_ARGUMENT = 2  # as argparse's own errors


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="echo-tutor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    add_model_commands(sub)
    add_experiment_commands(sub)   # one per experiment of echo_tutor.experiments.registry.EXPERIMENTS
    add_course_commands(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = make_parser()
    args = ap.parse_args(argv)
    check_grid_flags(ap, args)
    try:
        return args.func(args)
    except GridError as e:  # the summary of the other cells is written; list the failed ones, one per line
        print(f"echo-tutor {args.command}: {e}", file=sys.stderr)
        return EXIT_CELLS_FAILED
    except BadArgumentError as e:  # names the bad argument: the user's, shown without a trace
        print(f"echo-tutor {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
