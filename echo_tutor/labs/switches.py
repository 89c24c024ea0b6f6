"""The lab switches, read from the environment when this module is imported: FAST and SOLUTIONS."""

from __future__ import annotations

import os

import torch

__all__ = ["FAST", "SOLUTIONS", "is_fast", "solutions_enabled", "solutions_mode"]


def _flag(name: str) -> bool | None:
    val = os.environ.get(name)
    if val is None or val.strip() == "":
        return None
    return val.strip().lower() not in ("0", "false", "no", "off")


def is_fast() -> bool:
    """FAST mode: ``ECHO_TUTOR_FAST`` if set, else on when ``CI`` is set or no CUDA device is present."""
    flag = _flag("ECHO_TUTOR_FAST")
    if flag is not None:
        return flag
    return bool(_flag("CI")) or not torch.cuda.is_available()


def solutions_mode() -> str:
    """Who runs the lab, from ``ECHO_TUTOR_SOLUTIONS``: ``"learner"`` (unset or ``0``: the student's functions),
    ``"instructor"`` (``1``: the solutions filled in) or ``"both"`` (``both``: the instructor's run that also
    checks, in the same execution, what a learner who has done no exercise sees: each exercise cell first
    checks the unfinished stub, which must say "not attempted yet", then the solution; ``make test`` runs the
    labs this way, so one execution of a lab tests both)."""
    raw = os.environ.get("ECHO_TUTOR_SOLUTIONS", "").strip().lower()
    if raw == "both":
        return "both"
    return "instructor" if _flag("ECHO_TUTOR_SOLUTIONS") else "learner"


def solutions_enabled() -> bool:
    """Instructor mode: ``ECHO_TUTOR_SOLUTIONS=1`` (or ``both``): later cells use the solutions."""
    return solutions_mode() != "learner"


FAST: bool = is_fast()

SOLUTIONS: bool = solutions_enabled()

