"""What every exercise checker uses: the error it raises, fresh seeds, calling the student's function, and
shape and value checks."""

from __future__ import annotations

import itertools
import secrets
from typing import Callable

import torch

from . import integrity
from .guard import ALLOW, FORBID, short_path, watch_calls

__all__ = ["ExerciseError", "NotAttempted", "fresh_generator", "passed", "call_student", "expect_tensor", "close",
           "LEADING_DIMS", "leading_dims", "batch_dims_hint", "right_one_by_one"]


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
    """Call the student's function, turning 'not done yet' and crashes into readable messages.

    Inside a checker (:data:`~echo_tutor.labs.guard.ALLOW` set) the call runs under
    :class:`~echo_tutor.labs.guard.watch_calls`: a call it makes into the package's answer-computing code is
    refused with the routine's name."""
    if not callable(fn):
        raise ExerciseError(f"{name}: expected a function, got {type(fn).__name__}")
    allow = ALLOW.get()
    watch = watch_calls(allow or (), FORBID.get())
    before = None
    try:
        if allow is None:
            return fn(*args, **kwargs)
        before = integrity.snapshot()
        with watch:
            out = fn(*args, **kwargs)
    except NotImplementedError:
        _refuse_shortcut(name, watch)
        raise NotAttempted(f"{name}: not attempted yet - replace `raise NotImplementedError` with your code.") from None
    except ExerciseError:
        raise
    except Exception as e:  # the student's own bug: say where, without hiding it (unless it came from a shortcut)
        _refuse_shortcut(name, watch)
        raise ExerciseError(f"{name}: your function raised {type(e).__name__}: {e}") from e
    _refuse_shortcut(name, watch)
    tampered = integrity.changed(before) if before is not None else []
    if tampered:
        raise ExerciseError(f"{name}: your function replaced {', '.join(tampered[:3])} while it ran: a checker relies on "
                            "them. Compute your answer; leave the libraries as they are.")
    return out


def _refuse_shortcut(name: str, watch: watch_calls) -> None:
    """Raise the shortcut's refusal if the watched call entered the package's answer-computing code."""
    if watch.violation is not None:
        qual, path = watch.violation
        where = path if not path.startswith("/") else short_path(path)
        what = qual if qual.startswith("`") else f"`{qual}`"
        raise ExerciseError(
            f"{name}: your function calls {what} ({where}), which computes (part of) the answer for you. Write it "
            "yourself with tensor operations: building it is the point of the exercise.")


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


# Array exercises take any number of leading batch dims ``[...]``: a checker tries none, one and two, and then
# every shape the lab's later cells call the function with (a function right for one leading dim only, such
# as ``X.cumsum(1)`` or ``k[:, None, :]``, passes a one-dim test and breaks in a later cell).
LEADING_DIMS: tuple[tuple[int, ...], ...] = ((), (3,), (2, 3))


def leading_dims(*later: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The leading batch shapes to try: ``LEADING_DIMS``, then each shape in ``later`` not already there."""
    out = list(LEADING_DIMS)
    for lead in later:
        if tuple(lead) not in out:
            out.append(tuple(lead))
    return out


def batch_dims_hint(lead: tuple[int, ...], passed: list[tuple[int, ...]]) -> str:
    """A sentence for a function that is right for some leading batch shapes and wrong for ``lead``."""
    if not passed:
        return ""
    ok = ", ".join(str(p) for p in passed)
    return (f" It was right with leading dims {ok} and is wrong with {lead}: it assumes a fixed number of leading "
            "batch dims (e.g. `x.cumsum(1)`, `x[:, None]`, a 3-D einsum). Count dims from the end instead "
            "(`dim=-3`, `x[..., None, :]`, `...` in einsum), so that it works for any number, as the lab's later "
            "cells need.")


def right_one_by_one(fn, lead: tuple[int, ...], args: tuple, same) -> bool:
    """Whether ``fn``, called on each example of the batch alone (the tensors in ``args`` indexed by each index of
    ``lead``), gives the right answer ``same(out, index)`` every time: then only its batching is wrong (a checker
    says so with :func:`batch_dims_hint` rather than calling the answer wrong)."""
    try:
        for idx in itertools.product(*(range(n) for n in lead)):
            sub = tuple(a[idx] if isinstance(a, torch.Tensor) else a for a in args)
            if not same(call_student(getattr(fn, "__name__", "fn"), fn, *sub), idx):
                return False
    except Exception:  # a crash on one example: not only its batching is wrong
        return False
    return True
