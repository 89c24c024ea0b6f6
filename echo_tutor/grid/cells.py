"""Typed cells: a grid cell as a frozen dataclass, recorded and hashed as its plain-dict spec.

An experiment declares one :class:`Cell` subclass (``experiment = "cliff"`` and typed fields); its cell function
takes that class, so a misspelt field fails when the cell is built, not inside a worker an hour later::

    @dataclass(frozen=True)
    class GapCell(Cell):
        experiment = "gap-sweep"
        gap: int
        seed: int = 0

    run_grid([GapCell(g) for g in (0, 64)], gap_cell, "runs/gap-sweep")   # gap_cell(cell: GapCell) -> dict

The record keeps ``cell.spec()`` (``{"experiment": ..., every field}``, JSON values only) and its hash.
Records written before a field existed, or by code that left a default out of the dict, are read back through
:meth:`Cell.from_spec` (a missing field takes its default), so they count for the cell they describe:
:func:`rehash_records` maps them to today's hashes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Iterable

from ..errors import BadArgumentError
from .records import spec_hash

__all__ = ["Cell", "rehash_records"]

_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, all the way down: what the value reads back as from JSON."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_json(name: str, value: Any) -> None:
    """Refuse a field value that would not read back from JSON as itself (a mapping must have string keys)."""
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(f"{name}[{i}]", v)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadArgumentError(f"{name} must have string keys, got {k!r}")
            _check_json(f"{name}[{k!r}]", v)
        return
    raise BadArgumentError(f"{name} must be a JSON value (str, int, float, bool, None, list, dict), got "
                           f"{type(value).__name__}: {value!r}")


@dataclasses.dataclass(frozen=True)
class Cell:
    """Base of an experiment's cells. Subclasses set ``experiment`` and declare JSON-valued fields (tuples are
    kept as lists and read-only mappings as dicts, as JSON reads them back; a subclass's own ``__post_init__``
    calls this one first)."""

    experiment: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not self.experiment:
            raise BadArgumentError(f"{type(self).__name__} must set the class attribute experiment")
        for f in dataclasses.fields(self):
            value = _plain(getattr(self, f.name))
            _check_json(f"{type(self).__name__}.{f.name}", value)
            object.__setattr__(self, f.name, value)

    def spec(self) -> dict[str, Any]:
        """The plain dict recorded and hashed: ``{"experiment": ..., <every field>}``."""
        return {"experiment": self.experiment, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @property
    def key(self) -> str:
        """The cell's record hash (:func:`~echo_tutor.grid.records.spec_hash` of :meth:`spec`)."""
        return spec_hash(self.spec())

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Cell":
        """The cell a recorded spec describes: a field the spec lacks takes its default; a key that is not a
        field, or another experiment's spec, raises ``BadArgumentError``."""
        if not isinstance(spec, dict) or spec.get("experiment") != cls.experiment:
            raise BadArgumentError(f"spec is not a {cls.experiment!r} cell: {spec!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(spec) - names - {"experiment"})
        if extra:
            raise BadArgumentError(f"spec has key(s) {extra} that {cls.__name__} does not have")
        try:
            return cls(**{k: v for k, v in spec.items() if k in names})
        except TypeError as exc:  # a required field missing
            raise BadArgumentError(f"spec does not describe a {cls.__name__}: {exc}") from None


def rehash_records(records: Iterable[dict], cell_types: Iterable[type[Cell]]) -> dict[str, dict]:
    """``{today's hash: record}`` for records whose spec reads back as one of ``cell_types`` (by its
    ``experiment``) under another hash: what an older spec of the same cell was recorded as. A spec that names no
    experiment (written before its cells were typed) is read as the cell type, when there is only one. The
    latest record of a cell wins; records of other experiments, or that no longer describe a cell, are left
    out."""
    by_name = {c.experiment: c for c in cell_types}
    only = next(iter(by_name.values())) if len(by_name) == 1 else None
    out: dict[str, dict] = {}
    for rec in records:
        spec = rec.get("spec")
        if not isinstance(spec, dict):
            continue
        cls = by_name.get(spec["experiment"]) if "experiment" in spec else only
        if cls is None:
            continue
        try:
            key = cls.from_spec({"experiment": cls.experiment, **spec}).key
        except BadArgumentError:
            continue
        if key != rec.get("spec_hash"):
            out[key] = rec
    return out
