"""echo_tutor.timing: medians of real calls, and clear errors for bad arguments."""

import pytest

from echo_tutor.timing import first_and_median_seconds, median_seconds


def test_median_counts_every_call_and_rejects_bad_arguments():
    calls = []
    t = median_seconds(lambda: calls.append(1), 5, "cpu", warmup=2)
    assert len(calls) == 7 and t >= 0
    first, med = first_and_median_seconds(lambda: calls.append(1), 3)
    assert len(calls) == 11 and first >= 0 and med >= 0
    with pytest.raises(ValueError, match="reps must be >= 1"):
        median_seconds(lambda: None, 0)
    with pytest.raises(ValueError, match="fn must be a function"):
        median_seconds(3, 5)
