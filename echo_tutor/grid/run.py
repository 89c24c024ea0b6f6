"""``run_grid``: run the cells not recorded yet, locally or on Ray, as :class:`GridOptions` says."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from .._checks import check_choice, check_int, check_positive
from ..errors import BadArgumentError
from .cells import Cell, rehash_records
from .ray_executor import run_ray
from .records import (
    append_record,
    CellFn,
    drop_incomplete_line,
    latest_records,
    load_records,
    records_path,
    run_cell,
    spec_hash,
)

__all__ = ["EXECUTORS", "GridOptions", "run_grid"]

EXECUTORS = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class GridOptions:
    """Where and how a grid's cells run: the one value the CLI's grid flags become.

    Args:
        executor: ``"local"`` runs the cells one after the other in this process; ``"ray"`` submits them
            all as Ray tasks and records each one as it finishes.
        address: Ray only. ``None`` starts an embedded Ray on this machine (shut down at the end) unless
            Ray is already initialised in this process (then that instance is used and left running);
            ``"auto"`` or ``"HOST:PORT"`` joins an existing cluster (never shut down here).
        cpus_per_cell, gpus_per_cell: Ray only: the resources each cell's task reserves (``> 0``, ``>= 0``).
        max_retries: Ray only: how often Ray reruns a cell whose worker process died (not when the cell
            raises: that is recorded as an error).
    """

    executor: str = "local"
    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        check_choice("executor", self.executor, EXECUTORS)
        if self.address is not None and not isinstance(self.address, str):
            raise BadArgumentError(f"address must be None, 'auto' or 'HOST:PORT', got {self.address!r}")
        if self.address is not None and self.executor != "ray":
            raise BadArgumentError(f"address is only used with executor='ray', got executor={self.executor!r}")
        object.__setattr__(self, "cpus_per_cell", check_positive("cpus_per_cell", self.cpus_per_cell))
        g = self.gpus_per_cell
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not g >= 0:
            raise BadArgumentError(f"gpus_per_cell must be a number >= 0, got {g!r}")
        object.__setattr__(self, "gpus_per_cell", float(g))
        check_int("max_retries", self.max_retries, min_value=0)


class _Progress:
    """"cells done/total" with tqdm (``tqdm.auto``) if it is installed, printed lines otherwise."""

    def __init__(self, total: int, done: int, enabled: bool, describe: Callable[[dict], Any] | None):
        self.total, self.done, self.n_failed = total, done, 0
        self.enabled, self.describe = enabled, describe
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print(f"grid: {done}/{total} cells done", flush=True)
            return
        self.bar = tqdm(total=total, initial=done, desc="cells", unit="cell")

    def update(self, record: dict) -> None:
        self.done += 1
        if not self.enabled:
            return
        if record.get("error"):
            self.n_failed += 1
            postfix = ""
        elif self.describe is not None:
            postfix = self.describe(record)
        else:
            postfix = ""
        if self.n_failed:
            postfix = f"{postfix}, failed={self.n_failed}" if postfix else f"failed={self.n_failed}"
        if self.bar is None:
            print(f"grid: {self.done}/{self.total} cells done" + (f" [{postfix}]" if postfix else ""), flush=True)
            return
        if isinstance(postfix, dict):
            self.bar.set_postfix(postfix, refresh=False)
        elif postfix:
            self.bar.set_postfix_str(str(postfix), refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()



def _check_cells(specs: Any, fn: Any, describe: Any) -> list[str]:
    """Check the arguments of :func:`run_grid`; return the specs' hashes."""
    if not isinstance(specs, (list, tuple)):
        raise BadArgumentError(f"specs must be a list of cells (typed Cells or dicts), got {type(specs).__name__}")
    for i, spec in enumerate(specs):
        if not isinstance(spec, (dict, Cell)):
            raise BadArgumentError(f"specs[{i}] must be a Cell or a dict, got {type(spec).__name__}")
    if not callable(fn):
        raise BadArgumentError(f"fn must be callable, got {type(fn).__name__}")
    if describe is not None and not callable(describe):
        raise BadArgumentError(f"describe must be callable or None, got {type(describe).__name__}")
    hashes = [spec.key if isinstance(spec, Cell) else spec_hash(spec) for spec in specs]
    first: dict[str, int] = {}
    for i, key in enumerate(hashes):
        if key in first:
            raise BadArgumentError(f"specs[{i}] duplicates specs[{first[key]}]: {specs[i]!r}")
        first[key] = i
    return hashes


def run_grid(
    specs: Sequence[dict],
    fn: CellFn,
    out_dir: str | os.PathLike,
    options: GridOptions | None = None,
    *,
    progress: bool = True,
    describe: Callable[[dict], Any] | None = None,
) -> list[dict]:
    r"""Run every cell of ``specs`` that is not recorded yet in ``out_dir``; return the records of all cells.

    Args:
        specs: the cells, a list of distinct typed :class:`~echo_tutor.grid.cells.Cell`\ s (or plain,
            JSON-serialisable dicts).
        fn: ``fn(cell) -> dict`` runs one cell (it gets the Cell, or the dict, as given). For ``executor="ray"`` it must be a module-level function
            of a module the Ray workers can import (a package module, or a module on their ``PYTHONPATH``);
            functions defined in the driver script itself are shipped by value and work too.
        out_dir: the directory of ``records.jsonl`` (created if needed). Rerunning with the same
            ``out_dir`` skips the cells recorded without an error and reruns the failed ones (their new
            record is appended; the latest record of a cell is the one that counts).
        options: where the cells run (:class:`GridOptions`; default: locally, one after the other).
        progress: show "cells done/total" (tqdm if installed, printed lines otherwise).
        describe: ``describe(record)`` gives the progress postfix (a str or a dict) after each successful
            cell, e.g. ``lambda r: f"acc={r['result']['acc']:.3f}"``.

    Returns:
        One record per spec, in the order of ``specs`` (see :func:`run_cell`); records read back from
        ``records.jsonl`` and fresh ones look alike (JSON round trip). Failed cells are returned like the
        others: check them with :func:`failed`.
    """
    options = GridOptions() if options is None else options
    if not isinstance(options, GridOptions):
        raise BadArgumentError(f"options must be a GridOptions, got {type(options).__name__}")
    hashes = _check_cells(specs, fn, describe)
    path = records_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_incomplete_line(path)
    recorded = load_records(out_dir)
    latest = latest_records(recorded)
    # a typed cell's older records (a field added since, or a default left out of the dict) count for it
    types = {type(s) for s in specs if isinstance(s, Cell)}
    latest = {**rehash_records(recorded, types), **latest} if types else latest
    todo = [i for i, key in enumerate(hashes) if key not in latest or latest[key].get("error")]
    bar = _Progress(len(specs), len(specs) - len(todo), bool(progress), describe)
    try:
        if todo and options.executor == "local":
            for i in todo:
                record = append_record(path, run_cell(fn, specs[i]))
                latest[record["spec_hash"]] = record
                bar.update(record)
        elif todo:

            run_ray(specs, todo, fn, path, latest, bar, options)
    finally:
        bar.close()
    return [latest[key] for key in hashes]
