"""Tidy records: run a grid of points into one dict per run, and write records as JSON or CSV."""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any, Callable, Iterable

from ..errors import BadArgumentError
from .loop import progress_bar

__all__ = ["sweep", "save_records"]


def sweep(grid: Iterable[dict[str, Any]], run: Callable[..., dict[str, Any]], progress: bool = True) -> list[dict[str, Any]]:
    """Call ``run(**point)`` for every point of ``grid`` and return tidy records ``{**point, **result}``."""
    points = list(grid)
    bar = progress_bar(len(points), "sweep", progress)
    records = []
    for point in points:
        out = run(**point)
        if not isinstance(out, dict):
            raise BadArgumentError(f"run must return a dict of results, got {type(out).__name__}")
        records.append({**point, **out})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return records



def save_records(records: list[dict[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
    """Write records as ``.json`` (a list) or ``.csv`` (one row each, columns from all keys)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1, default=str))
    elif path.suffix == ".csv":
        cols = list(dict.fromkeys(k for r in records for k in r))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(records)
    else:
        raise BadArgumentError(f"path must end in .json or .csv, got {path.name}")
    return path

