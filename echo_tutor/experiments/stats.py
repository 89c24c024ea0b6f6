"""The statistics the experiments and labs report: paired differences over seeds and the labs' verdict."""

from __future__ import annotations

import statistics

from ..errors import BadArgumentError

__all__ = ["paired", "verdict"]


def verdict(mean: float, sd: float) -> str:
    """The labs' rule for a paired difference over seeds: within ``max(sd, 0.02)`` of zero is no difference."""
    if abs(mean) <= max(sd, 0.02):
        return "no difference beyond the seed spread"
    return "better" if mean > 0 else "worse"


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard deviation of the seed-by-seed differences ``a - b`` (same seeds, same order)."""
    if len(a) != len(b) or not a:
        raise BadArgumentError(f"a and b must be non-empty and paired seed by seed, got lengths {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), (statistics.stdev(d) if len(d) > 1 else 0.0)
