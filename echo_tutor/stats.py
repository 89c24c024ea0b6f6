"""The one statistical standard of the package: an interval first, a verdict only where the interval excludes
zero. Cross-cutting, like ``timing``: ``echokv`` and ``experiments`` import it (``echo_tutor.experiments.stats``
re-exports it, for the labs).

* :func:`mean_ci` -- the mean of a sample (e.g. accuracy over seeds) and its 95% interval, by **the rule**:
  with fewer than :data:`SMALL_SAMPLE` (10) values, Student's t interval with ``n - 1`` degrees of freedom
  (mean +- t * sd / sqrt(n); one value gives no interval: ``(-inf, inf)``); from 10 values on, the percentile
  bootstrap (:func:`bootstrap_ci`, :data:`N_BOOT` resamples).
* :func:`paired_ci` -- the mean of paired differences ``a - b`` (same seeds) and its interval, by the same
  rule (:func:`mean_ci` of the differences).
* :func:`bootstrap_ci` -- the percentile bootstrap itself (any ``n``; what :func:`mean_ci` uses from 10 on).
* :func:`t_ci` -- Student's t interval itself (any ``n >= 2``; what :func:`mean_ci` uses below 10).
* :func:`proportion_ci` -- a Wilson interval for an accuracy measured on ``n`` answers (the spread over
  examples, for one trained model).
* :func:`verdict` -- "better" / "worse" only when the interval excludes zero.

Why t below 10: the percentile bootstrap resamples the values themselves, so with few of them it can only say
what the sample already shows, and its interval is too narrow. With 3 values its 95% interval is the range of the
sample, exactly (drawing the smallest value three times has probability 1/27 > 2.5%); on normal data it covers
the true mean about 76% of the time at 3 values, 83% at 5, 89% at 10 and 93% at 30, where t, which accounts for
estimating the spread from so few values, covers it 95% of the time at every size (our simulation, 2,000 samples
of each size). With 3 seeds, paired differences of 0.403, 0.001 and 0.146 give the bootstrap interval [+0.001,
+0.403] (their range: "better") and the t interval [-0.32, +0.69]: no verdict, which is what 3 seeds can support
(lab 04, section 6). With 5 seeds the same trap turns lab 05's lead of ``echo`` over ``ssm+attn`` into "better"
by the bootstrap ([+0.052, +0.668] at 4,000 steps) where t says no difference shown ([-0.097, +0.884]). From 10
values on, the percentile bootstrap (:data:`N_BOOT` = 10,000 resamples, seeded: the same values always give the
same interval), which needs no assumption of normal data; below that the labs use t, and print the per-seed
values beside every verdict over seeds and say how many seeds it rests on. The labs' paired verdicts over seeds
(lab 04 sections 5-6, lab 05) and the conversion study's over held-out windows (its summary read in lab 08; 24
windows in the shipped study, so the bootstrap) and EchoKV-lite's over its 24 held-out windows
(``echokv.evaluate.paired_difference``, read in lab 06) all come from :func:`paired_ci` (and :func:`verdict`).
``paired`` (mean and standard deviation of paired differences) remains for printing.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np

from ._checks import check_int
from .errors import BadArgumentError

__all__ = ["SMALL_SAMPLE", "N_BOOT", "mean_ci", "bootstrap_ci", "t_ci", "t_quantile", "paired_ci", "proportion_ci",
           "verdict", "paired"]

NO_DIFFERENCE = "no difference shown (the interval includes 0)"
SMALL_SAMPLE = 10  # below this many values the interval of a mean is Student's t; from it on, the bootstrap
N_BOOT = 10_000  # the bootstrap's resamples, for every interval of the package (callers keep the default)


def _check_sample(name: str, xs: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(xs), dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise BadArgumentError(f"{name} must be a non-empty list of finite numbers, got {xs!r}")
    return a


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise BadArgumentError(f"level must be in (0, 1), got {level}")


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (closed form for integer ``df``, Abramowitz and
    Stegun 26.7.3-4)."""
    th = math.atan(t / math.sqrt(df))
    c2, acc = math.cos(th) ** 2, 0.0
    if df % 2:  # odd: (2/pi) (th + sin th cos th (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 1 terms in all
        term = math.cos(th)
        for k in range(1, df - 1, 2):
            acc += term
            term *= c2 * (k + 1) / (k + 2)
        return 2 / math.pi * (th + math.sin(th) * acc)
    term = 1.0  # even: sin th (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(0, df - 1, 2):
        acc += term
        term *= c2 * (k + 1) / (k + 2)
    return math.sin(th) * acc


def t_quantile(level: float, df: int) -> float:
    """The ``t`` with ``P(|T| <= t) = level`` for Student's t with ``df`` degrees of freedom (e.g. 4.303 for a
    95% interval from 3 values, ``df = 2``)."""
    _check_level(level)
    check_int("df", df, min_value=1)
    if df > 200:  # Cornish-Fisher expansion about the normal quantile: within 1e-7 here, and no long series
        z = statistics.NormalDist().inv_cdf((1 + level) / 2)
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < level:
        hi *= 2
    for _ in range(100):  # bisection to float precision
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def t_ci(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the sample mean and Student's t interval, ``mean +- t(level, n - 1) sd / sqrt(n)``.
    One value has no spread to estimate: ``(x, -inf, inf)``."""
    a = _check_sample("xs", xs)
    _check_level(level)
    if a.size == 1:
        return float(a[0]), -math.inf, math.inf
    half = t_quantile(level, a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    m = float(a.mean())
    return m, m - half, m + half


def bootstrap_ci(xs: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the sample mean and its percentile bootstrap interval at ``level`` (any sample size:
    for the interval the labs report, :func:`mean_ci` applies the rule)."""
    a = _check_sample("xs", xs)
    _check_level(level)
    check_int("n_boot", n_boot, min_value=100)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(a.mean()), float(lo), float(hi)


def mean_ci(xs: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT,
            seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` by the rule: Student's t below :data:`SMALL_SAMPLE` values, else the percentile
    bootstrap (``n_boot`` resamples from ``seed``)."""
    a = _check_sample("xs", xs)
    if a.size < SMALL_SAMPLE:
        return t_ci(a, level)
    return bootstrap_ci(a, level, n_boot, seed)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT,
              seed: int = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the seed-by-seed differences ``a - b`` (same seeds, same order), by the rule of
    :func:`mean_ci` (t below 10 pairs, the percentile bootstrap from 10)."""
    x, y = _check_sample("a", a), _check_sample("b", b)
    if x.size != y.size:
        raise BadArgumentError(f"a and b must be paired seed by seed, got lengths {x.size} and {y.size}")
    return mean_ci(x - y, level, n_boot, seed)


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
