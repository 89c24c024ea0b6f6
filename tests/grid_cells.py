"""Toy cell functions for tests/test_grid.py.

They live in their own importable module (not in the test file) so that Ray workers can import them: the
tests put this directory on the workers' PYTHONPATH.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from echo_tutor.grid import Cell

# In-process bookkeeping for the local executor (Ray workers have their own copies).
CALLS: list[dict] = []  # every spec seed_cell / flaky_cell was called with
BROKEN: set[int] = set()  # flaky_cell raises for these spec["x"]


def seed_cell(spec: dict) -> dict:
    """A deterministic function of the spec: a tiny seeded torch computation.

    ``spec["raise"]`` (a message) makes it raise ``RuntimeError``; ``spec["sleep"]`` seconds of sleep."""
    CALLS.append(spec)
    if spec.get("sleep"):
        time.sleep(spec["sleep"])
    if spec.get("raise"):
        raise RuntimeError(spec["raise"])
    gen = torch.Generator().manual_seed(spec["seed"])
    w = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(4, generator=gen, dtype=torch.float64) * spec.get("scale", 1.0)
    y = torch.tanh(w @ x)
    return {"norm": float(y.norm()), "argmax": int(y.argmax()), "first": [float(v) for v in y[:2]]}


def flaky_cell(spec: dict) -> dict:
    """Raises ``ValueError`` while ``spec["x"]`` is in ``BROKEN``; otherwise returns ``x**2``."""
    CALLS.append(spec)
    if spec["x"] in BROKEN:
        raise ValueError(f"cell x={spec['x']} is broken")
    return {"y": spec["x"] ** 2}


def not_a_dict_cell(spec: dict) -> float:
    return 1.0


@dataclasses.dataclass(frozen=True)
class ToyCell(Cell):
    """A typed cell for the tests: one seed, an optional scale (added "later": older records lack it)."""

    experiment = "toy"
    seed: int
    scale: float = 1.0
    sizes: list = dataclasses.field(default_factory=lambda: [4])


def toy_cell(cell: ToyCell) -> dict:
    """Gets the typed cell itself; a deterministic function of its fields."""
    assert isinstance(cell, ToyCell), type(cell)
    CALLS.append(cell.spec())
    gen = torch.Generator().manual_seed(cell.seed)
    return {"y": float(torch.randn(cell.sizes[0], generator=gen, dtype=torch.float64).sum() * cell.scale)}
