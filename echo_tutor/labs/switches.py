"""The lab switches, read from the environment when this module is imported: FAST and SOLUTIONS."""

from __future__ import annotations

import os

import torch

__all__ = ["FAST", "SOLUTIONS", "is_fast", "solutions_enabled"]


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



def solutions_enabled() -> bool:
    """Instructor mode: ``ECHO_TUTOR_SOLUTIONS=1``."""
    return bool(_flag("ECHO_TUTOR_SOLUTIONS"))



FAST: bool = is_fast()

SOLUTIONS: bool = solutions_enabled()

