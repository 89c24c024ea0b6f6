"""What every exercise checker uses: the error it raises, fresh seeds, calling the student's function, and
shape and value checks."""

from __future__ import annotations

import secrets
from typing import Callable

import torch

__all__ = ["ExerciseError", "NotAttempted", "fresh_generator", "passed", "call_student", "expect_tensor", "close"]


class ExerciseError(AssertionError):
    """Raised by a checker: the message says what is wrong and how to reproduce it."""


class NotAttempted(ExerciseError):
    """The student's function still raises ``NotImplementedError``."""


def fresh_generator() -> tuple[torch.Generator, int]:
    """A generator on a fresh random seed (returned too, so a failure can be reproduced)."""
    seed = secrets.randbits(31)
    return torch.Generator().manual_seed(seed), seed


def passed(name: str) -> None:
    """Print the checker's success line (returns None, so the cell shows no ``Out: True``)."""
    print(f"\N{WHITE HEAVY CHECK MARK} {name}: correct on fresh random inputs.")


def call_student(name: str, fn: Callable, *args, **kwargs):
    """Call the student's function, turning 'not done yet' and crashes into readable messages."""
    if not callable(fn):
        raise ExerciseError(f"{name}: expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted(f"{name}: not attempted yet - replace `raise NotImplementedError` with your code.") from None
    except ExerciseError:
        raise
    except Exception as e:  # the student's own bug: say where, without hiding it
        raise ExerciseError(f"{name}: your function raised {type(e).__name__}: {e}") from e


def expect_tensor(name: str, out: object, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ExerciseError(f"{name}: should return a torch.Tensor {what}, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ExerciseError(f"{name}: wrong shape: expected {what} = {tuple(shape)}, got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ExerciseError(f"{name}: the output contains NaN or Inf")
    return out


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    a, b = a.double(), b.double()
    return bool((a - b).norm() <= tol * (1.0 + b.norm()))
