"""Lab 04, exercise 3 (open-ended): ``paired_ablation(measure, arm_a, arm_b, seeds) -> dict``, its solution, its
checker and :func:`review_ablation`, which grades the learner's own run from its records (see
:mod:`echo_tutor.labs.lab04`, which re-exports them, for the exercise).

What is checked: the records (complete, paired, what measure returned), the per-seed differences ``a - b``, their
mean, the 95% interval of the mean by the course's rule (Student's t below 10 seeds; from 10, the percentile
bootstrap, or a t interval, also accepted) and the verdict; each is a helper of :func:`_grade`.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any, Mapping

import numpy as np
import torch

from . import ExerciseError, call_student, checker, fresh_generator, passed

__all__ = ["_paired_ablation_solution", "check_paired_ablation", "review_ablation", "NO_VERDICT"]


# -------------------------------------------------------------------------------------- paired_ablation
NO_VERDICT = "no verdict"
_KEYS = ("records", "diffs", "mean", "interval", "verdict")
_T_BELOW = 10  # the course's rule (echo_tutor.experiments.stats.SMALL_SAMPLE): below 10 seeds, only a t interval
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
         25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}  # t quantiles, 97.5%, by degrees of freedom


def _paired_ablation_solution(measure, arm_a, arm_b, seeds):
    seeds = list(seeds)
    # the design: every seed runs both arms (same data, same budget), so each difference is paired
    records = [{"seed": s, "arm": arm, "acc": float(measure(arm, s))} for s in seeds for arm in (arm_a, arm_b)]
    acc = {(r["arm"], r["seed"]): r["acc"] for r in records}
    diffs = np.array([acc[arm_a, s] - acc[arm_b, s] for s in seeds])  # a - b, seed by seed
    if diffs.size < _T_BELOW:  # so few seeds that a bootstrap would be too narrow (at 3, their range): Student's t
        half = _t_quantile(diffs.size - 1) * diffs.std(ddof=1) / math.sqrt(diffs.size)
        lo, hi = diffs.mean() - half, diffs.mean() + half
    else:
        rng = np.random.default_rng(0)  # a fixed seed: the same records always give the same interval
        means = diffs[rng.integers(0, diffs.size, size=(10_000, diffs.size))].mean(1)  # resample seeds 10,000 times
        lo, hi = np.quantile(means, [0.025, 0.975])  # the percentile bootstrap's 95% interval
    verdict = arm_a if lo > 0 else arm_b if hi < 0 else NO_VERDICT  # a verdict only where 0 is outside
    return {"records": records, "diffs": diffs.tolist(), "mean": float(diffs.mean()),
            "interval": (float(lo), float(hi)), "verdict": verdict}


def _t_quantile(df: int) -> float:
    if df in _T975:
        return _T975[df]
    below = max(k for k in _T975 if k < df)
    above = min((k for k in _T975 if k > df), default=None)
    if above is None:
        return 1.96
    return _T975[below] + (_T975[above] - _T975[below]) * (df - below) / (above - below)


def _bootstrap_distribution(diffs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap distribution of the mean of ``diffs`` (resampling them with replacement): its values, sorted,
    and their probabilities. Exact for up to 9 seeds (every multiset of draws, with its multinomial weight),
    else 200,000 resamples."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n <= 9:
        idx = np.array(list(itertools.combinations_with_replacement(range(n), n)))  # [C(2n-1, n), n]
        counts = np.stack([(idx == i).sum(1) for i in range(n)], 1)  # [C, n]: how often each seed is drawn
        logw = math.lgamma(n + 1) - np.vectorize(math.lgamma)(counts + 1).sum(1) - n * math.log(n)
        values, weights = counts @ d / n, np.exp(logw)
    else:
        values = d[np.random.default_rng(12345).integers(0, n, size=(200_000, n))].mean(1)
        weights = np.full(values.size, 1.0 / values.size)
    order = np.argsort(values, kind="stable")
    return values[order], weights[order]


def _bootstrap_quantile(values: np.ndarray, weights: np.ndarray, p: float) -> float:
    return float(values[min(np.searchsorted(np.cumsum(weights), p - 1e-12), values.size - 1)])


def _at_level(values: np.ndarray, weights: np.ndarray, x: float, p: float, slack: float = 0.0125) -> bool:
    """Whether ``x`` is a ``p``-quantile of the distribution, give or take ``slack`` in probability (what a few
    thousand resamples and any quantile rule can move)."""
    eps = 1e-9 * (1.0 + abs(x))
    below = float(weights[values < x - eps].sum())  # P(mean < x)
    at_most = float(weights[values <= x + eps].sum())  # P(mean <= x)
    return below <= p + slack and at_most >= p - slack


def _t_interval(diffs: list[float]) -> tuple[float, float]:
    d = np.asarray(diffs, dtype=np.float64)
    half = _t_quantile(d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def _matching_interval(diffs: list[float], lo: float, hi: float) -> str | None:
    """Which accepted 95% interval of the mean of ``diffs`` ``(lo, hi)`` is: "a percentile bootstrap" (each end
    at its quantile level of the bootstrap distribution, within resampling noise) or "a t interval" (within 2% of
    the differences' standard deviation); None if neither."""
    values, weights = _bootstrap_distribution(diffs)
    if _at_level(values, weights, lo, 0.025) and _at_level(values, weights, hi, 0.975):
        return "a percentile bootstrap"
    tl, th = _t_interval(diffs)
    tol = 0.02 * statistics.stdev(diffs) + 1e-9
    if abs(lo - tl) <= tol and abs(hi - th) <= tol:
        return "a t interval"
    return None


def _reference_intervals(diffs: list[float]) -> dict[str, tuple[float, float]]:
    """The 95% intervals of the mean of ``diffs`` the lab accepts: the t interval, and from 10 seeds on the
    percentile bootstrap's too (exact quantiles of the bootstrap distribution)."""
    if len(diffs) < _T_BELOW:
        return {"a t interval": _t_interval(diffs)}
    values, weights = _bootstrap_distribution(diffs)
    boot = (_bootstrap_quantile(values, weights, 0.025), _bootstrap_quantile(values, weights, 0.975))
    return {"a percentile bootstrap": boot, "a t interval": _t_interval(diffs)}


def _records(name: str, out: Any) -> dict[tuple[str, int], float]:
    """The result's records as ``{(arm, seed): acc}``; raise ExerciseError if the result or its records are not
    in the asked form."""
    if not isinstance(out, Mapping) or any(k not in out for k in _KEYS):
        have = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise ExerciseError(f"{name}: return a dict with the keys {list(_KEYS)}, got {have}")
    records = out["records"]
    if not isinstance(records, (list, tuple)) or not all(
            isinstance(r, Mapping) and {"seed", "arm", "acc"} <= set(r) for r in records):
        raise ExerciseError(f"{name}: 'records' should be a list of dicts with keys 'seed', 'arm', 'acc' (one per seed "
                            "and arm)")
    acc: dict[tuple[str, int], float] = {}
    for r in records:
        key = (str(r["arm"]), int(r["seed"]))
        if key in acc:
            raise ExerciseError(f"{name}: two records for arm {key[0]!r}, seed {key[1]}: one record per (seed, arm)")
        acc[key] = float(r["acc"])
    return acc


def _coverage(name: str, acc: dict[tuple[str, int], float], arms: tuple[str, str] | None, seeds: list[int] | None,
              table: Mapping[tuple[str, int], float] | None, min_seeds: int) -> tuple[tuple[str, str], list[int]]:
    """The arms and seeds the records must cover (read from the records where None); raise ExerciseError unless
    they cover exactly those, paired, with enough seeds and the values ``table`` says measure returned."""
    if arms is None:
        arms = tuple(dict.fromkeys(a for a, _ in acc))  # type: ignore[assignment]
        if len(arms) != 2:
            raise ExerciseError(f"{name}: the records should hold exactly two arms, got {list(arms)}")
    if seeds is None:
        seeds = list(dict.fromkeys(s for _, s in acc))
    a, b = arms
    for arm in arms:
        for s in seeds:
            if (arm, s) not in acc:
                other = b if arm == a else a
                paired = (other, s) in acc
                raise ExerciseError(f"{name}: no record for arm {arm!r} at seed {s}"
                                    + (f" (arm {other!r} has one): not paired: every seed must run both arms."
                                       if paired else ": the records should cover every seed, for both arms."))
    extra = sorted(set(acc) - {(arm, s) for arm in arms for s in seeds})
    if extra:
        raise ExerciseError(f"{name}: records for (arm, seed) {extra[:3]} that were not asked for: arms {list(arms)}, "
                            f"seeds {seeds}")
    if len(seeds) < min_seeds:
        raise ExerciseError(f"{name}: {len(seeds)} seed(s): a paired comparison needs at least {min_seeds} seeds "
                            "for an interval that means anything")
    if table is not None:
        for key, v in acc.items():
            if abs(v - table[key]) > 1e-9:
                raise ExerciseError(f"{name}: the record for arm {key[0]!r}, seed {key[1]} says acc {v:.4f}, but "
                                    f"measure({key[0]!r}, {key[1]}) returned {table[key]:.4f}: record what it returns")
    return arms, seeds


def _differences(name: str, out: Any, acc: dict[tuple[str, int], float], arms: tuple[str, str],
                 seeds: list[int]) -> tuple[list[float], float]:
    """The per-seed differences ``a - b`` and their mean; raise ExerciseError unless the result's 'diffs' and
    'mean' are those."""
    a, b = arms
    want = [acc[a, s] - acc[b, s] for s in seeds]
    diffs = out["diffs"]
    try:
        diffs = [float(x) for x in diffs]
    except (TypeError, ValueError):
        raise ExerciseError(f"{name}: 'diffs' should be a list of numbers, one per seed") from None
    if len(diffs) != len(seeds) or any(abs(x - y) > 1e-9 for x, y in zip(diffs, want)):
        hint = ""
        if len(diffs) == len(seeds) and all(abs(x + y) <= 1e-9 for x, y in zip(diffs, want)):
            hint = f" Yours are {b!r} minus {a!r}: the differences (and the interval) are arm_a minus arm_b."
        elif sorted(diffs) == sorted(want):
            hint = " Keep them in the order of the seeds."
        raise ExerciseError(f"{name}: 'diffs' should be acc({a!r}) - acc({b!r}) seed by seed, in the order of the seeds "
                            f"{seeds}: expected {[round(x, 4) for x in want]}, got {[round(x, 4) for x in diffs]}.{hint}")
    mean = statistics.fmean(want)
    if not isinstance(out["mean"], (int, float, np.floating)) or abs(float(out["mean"]) - mean) > 1e-9:
        raise ExerciseError(f"{name}: 'mean' should be the mean of the differences, {mean:.4f}, got {out['mean']!r}")
    return want, mean


def _interval(name: str, out: Any, want: list[float], mean: float, arms: tuple[str, str]) -> tuple[float, float, str]:
    """The result's interval ``(lo, hi)`` and which accepted 95% interval of the mean of ``want`` it is; raise
    ExerciseError, saying what it looks like instead, when it is none of them (or a bootstrap below 10 seeds)."""
    a, b = arms
    iv = out["interval"]
    try:
        lo, hi = (float(x) for x in iv)
    except (TypeError, ValueError):
        raise ExerciseError(f"{name}: 'interval' should be a pair (lo, hi), got {iv!r}") from None
    refs = _reference_intervals(want)
    match = _matching_interval(want, lo, hi) if lo <= hi else None
    sd = statistics.stdev(want)
    se = sd / math.sqrt(len(want))
    tol = 0.02 * sd + 1e-9
    normal = abs(lo - (mean - 1.96 * se)) <= tol and abs(hi - (mean + 1.96 * se)) <= tol
    normal_hint = (f" That is mean +- 1.96 standard errors, the normal interval: with {len(want)} seeds the spread is "
                   f"itself estimated from {len(want)} values, so use t's 97.5% quantile with {len(want) - 1} degrees "
                   f"of freedom ({_t_quantile(len(want) - 1):.3f}).")
    if match == "a percentile bootstrap" and len(want) < _T_BELOW:
        tl, th = refs["a t interval"]
        if normal:  # from about 6 seeds on, the normal band and the bootstrap's are hard to tell apart
            raise ExerciseError(f"{name}: interval [{lo:+.4f}, {hi:+.4f}] is too narrow. With fewer than {_T_BELOW} "
                                f"seeds the course's interval is Student's t ({len(want) - 1} degrees of freedom): "
                                f"[{tl:+.4f}, {th:+.4f}].{normal_hint}")
        raise ExerciseError(
            f"{name}: interval [{lo:+.4f}, {hi:+.4f}] is a percentile bootstrap of {len(want)} differences. With "
            f"fewer than {_T_BELOW} seeds the course's interval is Student's t ({len(want) - 1} degrees of freedom): "
            f"[{tl:+.4f}, {th:+.4f}]. Resampling so few values can only return what they already show, so the "
            f"bootstrap's interval is too narrow: with 3 seeds its 95% interval is exactly their range (drawing the "
            f"smallest three times has probability 1/27, more than 2.5%), and on normal data it covers the true "
            f"mean about 76% of the time at 3 seeds and 83% at 5, not 95%. Use mean +- t * sd / sqrt(n) below "
            f"{_T_BELOW} seeds; from {_T_BELOW} on the rule's percentile bootstrap is accepted too.")
    if match is None:
        hint = ""
        if lo > hi:
            hint = " lo should not be above hi."
        elif normal:
            hint = normal_hint
        elif abs(lo - (mean - se)) <= tol and abs(hi - (mean + se)) <= tol:
            hint = " That is one standard error either side of the mean (about a 68% interval), not a 95% one."
        elif abs(lo - (mean - sd)) <= tol and abs(hi - (mean + sd)) <= tol:
            hint = " That is one standard deviation of the differences either side: an interval of the mean is narrower."
        elif _matching_interval([-x for x in want], lo, hi):
            hint = f" Yours is the interval of {b!r} minus {a!r}: flip it (arm_a minus arm_b)."
        elif abs(lo - min(want)) <= tol and abs(hi - max(want)) <= tol:
            hint = " That is the range of the differences, not an interval of their mean."
        shown = "; ".join(f"{k} [{rl:+.4f}, {rh:+.4f}]" for k, (rl, rh) in refs.items())
        how = (f"With {len(want)} seeds (fewer than {_T_BELOW}) use Student's t: mean +- t * sd / sqrt(n), t the "
               f"97.5% quantile with n - 1 degrees of freedom." if len(want) < _T_BELOW else
               "Resample the per-seed differences with replacement a few thousand times and take the 2.5% and "
               "97.5% quantiles of the resampled means (the rule from 10 seeds on), or use Student's t.")
        raise ExerciseError(f"{name}: interval [{lo:+.4f}, {hi:+.4f}] is not a 95% interval of the mean of these "
                            f"{len(want)} differences: {shown} (a bootstrap's ends may differ by resampling noise). "
                            f"{how}{hint}")
    return lo, hi, match


def _verdict(name: str, out: Any, arms: tuple[str, str], lo: float, hi: float) -> str:
    """The result's verdict (``"no verdict"`` in any case spelled so); raise ExerciseError unless it is what the
    accepted interval ``(lo, hi)`` says."""
    a, b = arms
    expected = a if lo > 0 else b if hi < 0 else NO_VERDICT  # from the learner's own interval, now accepted
    got = str(out["verdict"]).strip()
    if got.lower() == NO_VERDICT:
        got = NO_VERDICT
    if got != expected:
        if got not in (a, b, NO_VERDICT):
            why = f"the verdict should be exactly {a!r}, {b!r} or {NO_VERDICT!r}"
        elif expected == NO_VERDICT:
            why = f"the interval [{lo:+.4f}, {hi:+.4f}] includes 0: the data do not say which arm is better, so {NO_VERDICT!r}"
        elif got == NO_VERDICT:
            why = (f"the interval [{lo:+.4f}, {hi:+.4f}] lies entirely {'above' if expected == a else 'below'} 0: name "
                   f"the better arm, {expected!r}")
        else:
            why = (f"the interval of {a!r} minus {b!r}, [{lo:+.4f}, {hi:+.4f}], lies "
                   f"{'above' if expected == a else 'below'} 0, so {expected!r} is the better arm, not {got!r}")
        raise ExerciseError(f"{name}: verdict {out['verdict']!r}: {why}.")
    return got


def _grade(name: str, out: Any, arms: tuple[str, str] | None, seeds: list[int] | None,
           table: Mapping[tuple[str, int], float] | None, min_seeds: int = 3) -> dict[str, Any]:
    """Check a paired ablation's result; raise ExerciseError saying what is wrong. ``arms``/``seeds``/``table``:
    what the result must cover and what measure returned (None: read them from the records)."""
    acc = _records(name, out)
    arms, seeds = _coverage(name, acc, arms, seeds, table, min_seeds)
    want, mean = _differences(name, out, acc, arms, seeds)
    lo, hi, match = _interval(name, out, want, mean, arms)
    got = _verdict(name, out, arms, lo, hi)
    return {"arms": arms, "seeds": seeds, "method": match, "interval": (lo, hi), "verdict": got}


_ARM_PAIRS = [("K=1", "K=0"), ("K=0", "K=1"), ("K=2", "K=1"), ("r=16", "r=32"), ("eps=1e-3", "eps=1e-1")]


@checker(forbid=("paired_ci", "bootstrap_ci", "mean_ci", "t_ci", "t_quantile", "verdict", "paired", "proportion_ci"))
def check_paired_ablation(fn) -> None:
    """Check ``fn(measure, arm_a, arm_b, seeds) -> dict`` on three measures of the checker's (arm_a better, no
    difference, arm_b better), each with fresh arm names and fresh seeds (one with 3-5 seeds, one with 6-9,
    one with 10-12): the records (complete, paired, what measure returned), the differences, their mean, the
    interval (the course's rule: a t interval below 10 seeds; from 10, within bootstrap noise, a percentile
    bootstrap, or a t interval) and the verdict."""
    name = "paired_ablation"
    g, seed = fresh_generator()
    few = torch.randperm(3, generator=g).tolist()  # which measure gets 3-5 seeds, which 6-9, which 10-12
    for effect, size in zip((+1, 0, -1), few):
        a, b = _ARM_PAIRS[int(torch.randint(len(_ARM_PAIRS), (1,), generator=g))]
        low, high = ((3, 6), (6, _T_BELOW), (_T_BELOW, _T_BELOW + 3))[size]
        n = int(torch.randint(low, high, (1,), generator=g))
        seeds = (torch.randperm(1000, generator=g)[:n] * 7 + 3).tolist()
        base = (0.2 + 0.4 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
        if effect:  # a clear effect: 0.25 +- 0.03, of the sign asked
            d = (effect * (0.25 + 0.03 * torch.randn(n, generator=g, dtype=torch.float64))).tolist()
        else:  # no effect: differences symmetric about 0, mean exactly 0
            half = (0.02 + 0.08 * torch.rand(n // 2, generator=g, dtype=torch.float64)).tolist()
            d = half + [-x for x in half] + [0.0] * (n % 2)
            d = [d[i] for i in torch.randperm(n, generator=g).tolist()]
        table = {}
        for s, b0, dd in zip(seeds, base, d):
            table[b, s] = round(b0, 6)
            table[a, s] = round(b0 + dd, 6)
        calls: list[tuple[str, int]] = []

        def measure(arm, s, table=table, calls=calls, seeds=seeds, arms=(a, b)):
            if arm not in arms:
                raise ExerciseError(f"{name}: measure was called with arm {arm!r}; the arms are {list(arms)}")
            if s not in seeds:
                raise ExerciseError(f"{name}: measure was called with seed {s!r}, not one of the seeds given {seeds}")
            calls.append((arm, s))
            return table[arm, s]

        what = {+1: f"{a!r} better", 0: "no difference", -1: f"{b!r} better"}[effect]
        out = call_student(name, fn, measure, a, b, list(seeds))
        try:
            _grade(name, out, (a, b), list(seeds), table)
        except ExerciseError as e:
            raise ExerciseError(f"{e} (the checker's measure: {what}, arms {a!r} / {b!r}, seeds {seeds}; seed {seed})") from None
    return passed(name)


def review_ablation(result: Any, min_seeds: int = 3) -> bool:
    """Grade your own run's result (what the checker grades, from the records alone): print what holds and what
    does not, and return whether it all holds. Does not raise."""
    try:
        got = _grade("your ablation", result, None, None, None, min_seeds=min_seeds)
    except ExerciseError as e:
        print(f"\N{CROSS MARK} {e}")
        return False
    a, b = got["arms"]
    lo, hi = got["interval"]
    print(f"\N{WHITE HEAVY CHECK MARK} your ablation: {len(got['seeds'])} seeds, both arms at every seed (paired); "
          f"the interval [{lo:+.4f}, {hi:+.4f}] of {a} minus {b} matches {got['method']} of your differences; "
          f"the verdict {got['verdict']!r} follows from it.")
    return True
