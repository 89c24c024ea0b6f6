"""Wall-clock timing shared by the benchmarks, the GPU report and lab 07: medians, with the device
synchronised around each call so a CUDA launch is timed to its end."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .errors import BadArgumentError

__all__ = ["median_seconds", "first_and_median_seconds"]


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def median_seconds(fn: Callable[[], object], reps: int, device=None, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls after ``warmup`` untimed ones; ``device`` (a
    ``torch.device`` or string; CUDA ones are synchronised before and after each call)."""
    if not callable(fn):
        raise BadArgumentError(f"fn must be a function of no arguments, got {type(fn).__name__}")
    if int(reps) < 1 or int(warmup) < 0:
        raise BadArgumentError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    cuda = _is_cuda(device)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        _sync(cuda)
        t0 = time.perf_counter()
        fn()
        _sync(cuda)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def first_and_median_seconds(fn: Callable[[], object], reps: int, device=None) -> tuple[float, float]:
    """(the first call's seconds, compile included where there is one; the median of the next ``reps``)."""
    first = median_seconds(fn, 1, device, warmup=0)
    return first, median_seconds(fn, reps, device, warmup=0)
