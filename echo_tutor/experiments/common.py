"""What the experiments share: the lab recipe's task at one grid point, recipe lookup, argument checks, the
shipped checkpoints' identities, and the end of a grid (failed cells raised after the rest is written).

A *recipe* is a frozen dataclass that says everything a run needs (models, tasks, budget, evaluation); each
experiment module (``cliff``, ``transfer``, ``ablation``) keeps its named recipes in ``RECIPES`` and picks one
for a ``(scale, fast)`` pair of the CLI with ``PICK``. ``dataclasses.replace(recipe, steps=...)`` (or the
drivers' ``**overrides``) derives a variant; every recipe checks its fields when it is built.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pathlib
import types
from collections.abc import Mapping
from typing import Any

from ..errors import BadArgumentError
from ..grid import GridError, failed
from ..models import LAB_RECIPE, SCALES
from ..pretrained import path_of
from ..tasks import Task, make_task

__all__ = ["VOCAB", "TRAINED_GAP_MAX", "lab_task", "lab_task_args", "pick", "check_int_list", "check_names",
           "checkpoint_id", "finish", "frozen", "plain", "resolve", "write_summary"]

VOCAB = 128  # every recall experiment's vocabulary (the paper's)
TRAINED_GAP_MAX = max(LAB_RECIPE.task["gap"])  # the longest gap the lab-scale checkpoints were trained on


def lab_task_args(pairs: int, gap: int) -> dict[str, Any]:
    """``make_task`` arguments of the lab recipe's MQAR-gap at one point: ``pairs`` KV pairs, ``gap`` tokens."""
    kw = {k: v for k, v in LAB_RECIPE.task.items() if k not in ("num_kv_pairs", "gap")}
    return {**kw, "num_kv_pairs": pairs, "gap": gap}


def lab_task(pairs: int, gap: int) -> Task:
    """The lab recipe's MQAR-gap (vocab 128, value-half distractors, values hidden) at one grid point."""
    return make_task(**lab_task_args(pairs, gap))


def pick(experiment: str, recipes: Mapping[str, Any], table: Mapping[tuple[str, bool], str], scale: str,
         fast: bool) -> Any:
    """The recipe of ``experiment`` that ``table`` names for ``(scale, fast)`` (the CLI's ``--scale``, ``--fast``).
    ``scale`` is one of the preset scales (``SCALES``) or of the scales ``table`` names (``"smollm2"``)."""
    known = list(dict.fromkeys([*SCALES, *(s for s, _ in table)]))
    if scale not in known:
        raise BadArgumentError(f"scale must be one of {known}, got {scale!r}")
    name = table.get((scale, bool(fast)))
    if name is None:
        raise BadArgumentError(f"{experiment} has no {'fast ' if fast else ''}recipe at scale={scale!r}; "
                               f"its recipes: {sorted(recipes)}")
    return recipes[name]


def resolve(recipes: Mapping[str, Any], cls: type, recipe: Any, overrides: Mapping[str, Any]) -> Any:
    """``recipe`` (a name of ``recipes`` or a ``cls``) with ``overrides`` replacing its fields."""
    if isinstance(recipe, str):
        if recipe not in recipes:
            raise BadArgumentError(f"recipe must be one of {sorted(recipes)}, got {recipe!r}")
        recipe = recipes[recipe]
    if not isinstance(recipe, cls):
        raise BadArgumentError(f"recipe must be a recipe name or a {cls.__name__}, got {type(recipe).__name__}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise BadArgumentError(f"overrides: {sorted(unknown)} are not fields of {cls.__name__}")
    return dataclasses.replace(recipe, **overrides) if overrides else recipe


def check_int_list(name: str, xs: Any, min_value: int) -> tuple[int, ...]:
    """A non-empty list of ints >= ``min_value``, as a tuple."""
    if not isinstance(xs, (list, tuple)) or not xs:
        raise BadArgumentError(f"{name} must be a non-empty list of ints, got {xs!r}")
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int) or x < min_value:
            raise BadArgumentError(f"{name} must hold ints >= {min_value}, got {x!r}")
    return tuple(xs)


def check_names(name: str, xs: Any, allowed: list[str], what: str) -> tuple[str, ...]:
    """A non-empty list of names drawn from ``allowed``, as a tuple."""
    if not isinstance(xs, (list, tuple)) or not xs:
        raise BadArgumentError(f"{name} must be a non-empty list of names, got {xs!r}")
    unknown = [x for x in xs if x not in allowed]
    if unknown:
        raise BadArgumentError(f"{name} must be drawn from {what} {allowed}, got unknown {unknown}")
    return tuple(xs)


def checkpoint_id(preset: str) -> dict[str, str]:
    """The shipped checkpoint of ``preset``: file name and the first 16 hex digits of its sha1 (so that a
    retrained checkpoint is a new cell, and a worker with another version of it fails instead of lying)."""

    p = path_of(preset)
    return {"file": p.name, "sha1": hashlib.sha1(p.read_bytes()).hexdigest()[:16]}


def write_summary(out_dir: pathlib.Path, stem: str, summary: dict[str, Any], table: str, show: bool = True) -> None:
    """Write a study's summary as ``<stem>.json`` and its markdown ``table`` as ``<stem>.md`` in ``out_dir``;
    print the table when ``show``."""
    (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    (out_dir / f"{stem}.md").write_text(table + "\n")
    if show:
        print(table, flush=True)


def finish(records: list[dict[str, Any]], out_dir: pathlib.Path) -> None:
    """Raise :class:`~echo_tutor.grid.GridError` listing the failed cells, if any (after the outputs are
    written from the others)."""
    bad = failed(records)
    if bad:
        raise GridError(bad, len(records), out_dir)


def frozen(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only deep copy of a (nested) mapping, for a recipe's fields."""
    if m is None:
        return types.MappingProxyType({})
    if not isinstance(m, Mapping):
        raise BadArgumentError(f"expected a mapping, got {m!r}")
    return types.MappingProxyType({k: frozen(v) if isinstance(v, Mapping) else copy.deepcopy(v) for k, v in m.items()})


def plain(m: Any) -> Any:
    """A recipe's (nested, read-only) mapping as plain dicts, for a JSON cell spec."""
    if isinstance(m, Mapping):
        return {k: plain(v) for k, v in m.items()}
    if isinstance(m, tuple):
        return [plain(v) for v in m]
    return copy.deepcopy(m)
