"""The one statistical standard of the labs: an interval first, a verdict only where the interval excludes zero.

* :func:`bootstrap_ci` -- the mean of a sample and its percentile bootstrap interval (e.g. accuracy over seeds).
* :func:`paired_ci` -- the mean of paired differences ``a - b`` (same seeds) and its bootstrap interval.
* :func:`proportion_ci` -- a Wilson interval for an accuracy measured on ``n`` answers (the spread over
  examples, for one trained model).
* :func:`verdict` -- "better" / "worse" only when the interval excludes zero.

With few seeds a bootstrap interval is rough (3 seeds have 10 distinct resamples): the labs say how many seeds
an interval rests on. ``paired`` (mean and standard deviation of paired differences) remains for printing.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np

from .._checks import check_int
from ..errors import BadArgumentError

__all__ = ["bootstrap_ci", "paired_ci", "proportion_ci", "verdict", "paired"]

NO_DIFFERENCE = "no difference shown (the interval includes 0)"


def _check_sample(name: str, xs: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(xs), dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise BadArgumentError(f"{name} must be a non-empty list of finite numbers, got {xs!r}")
    return a


def bootstrap_ci(xs: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the sample mean and its percentile bootstrap interval at ``level``."""
    a = _check_sample("xs", xs)
    if not 0 < level < 1:
        raise BadArgumentError(f"level must be in (0, 1), got {level}")
    check_int("n_boot", n_boot, min_value=100)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(a.mean()), float(lo), float(hi)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
              seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the seed-by-seed differences ``a - b`` (same seeds, same order)."""
    x, y = _check_sample("a", a), _check_sample("b", b)
    if x.size != y.size:
        raise BadArgumentError(f"a and b must be paired seed by seed, got lengths {x.size} and {y.size}")
    return bootstrap_ci(x - y, level, n_boot, seed)


def proportion_ci(acc: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson interval ``(lo, hi)`` for an accuracy ``acc`` measured on ``n`` answers."""
    check_int("n", n, min_value=1)
    if not 0 <= acc <= 1:
        raise BadArgumentError(f"acc must be in [0, 1], got {acc}")
    z = statistics.NormalDist().inv_cdf((1 + level) / 2)
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def verdict(lo: float, hi: float) -> str:
    """The verdict of an interval of a difference: "better" (above 0), "worse" (below 0), else no difference
    shown."""
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return NO_DIFFERENCE


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard deviation of the seed-by-seed differences ``a - b`` (same seeds, same order)."""
    if len(a) != len(b) or not a:
        raise BadArgumentError(f"a and b must be non-empty and paired seed by seed, got lengths {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), (statistics.stdev(d) if len(d) > 1 else 0.0)
