"""Lab 08's checkers: the solutions pass, typical wrong answers are rejected with a hint that names the
mistake, and a call to the library code that computes the answer is refused."""

import re

import pytest
import torch

from echo_tutor.convert.study import mixer_bytes
from echo_tutor.labs import ExerciseError, lab08

S = lab08._visible_parts_solution
B = lab08._converted_state_bytes_solution


def _no_sinks(T, w, a):
    return S(T, w, 0)


def _forgets_old(T, w, a):
    p = S(T, w, a)
    p[p == 2] = 0
    return p


def _sinks_in_stats(T, w, a):
    p = S(T, w, a)
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    p[(s < a) & (t - s >= w)] = 2
    return p


WRONG = [
    (lab08.check_visible_parts, lambda T, w, a: S(T, w, a).T, "future"),
    (lab08.check_visible_parts, lambda T, w, a: torch.where(S(T, w, a) > 0, S(T, w, a), 2), "future"),
    (lab08.check_visible_parts, lambda T, w, a: S(T, w + 1, a), "Off by one"),
    (lab08.check_visible_parts, _sinks_in_stats, "sinks"),
    (lab08.check_visible_parts, _forgets_old, "not forgotten"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, 0, r, H, D), "sinks are missing"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - W * H * r * 4, "key features"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - H * r * 4, "k_prev"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) // 4, "elements"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - (W + A) * H * D * 4, "factor 2"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) + 8 * H * (2 * r * r + D * r + r), "per KV head"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: float(B(W, A, r, H, D)) + 0.5, "return an int"),
]


@pytest.mark.parametrize("checker,wrong,msg", WRONG, ids=[f"{w[0].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_checker_rejects_typical_wrong_answer(checker, wrong, msg):
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        checker.__wrapped__(wrong)


@pytest.mark.parametrize("checker,solution", [(lab08.check_visible_parts, S), (lab08.check_converted_state_bytes, B)])
def test_solutions_pass(checker, solution):
    checker.__wrapped__(solution)


def test_solution_agrees_with_the_library():
    from echo_tutor.convert import ConvertedAttention, MixerSpec

    assert B(64, 4, 32, 3, 64) == ConvertedAttention.state_nbytes_for(MixerSpec("window+ska", window=64, sinks=4, rank=32), 3, 64)
    assert mixer_bytes  # (the model-level helper wraps the same arithmetic)


def test_calling_the_library_is_refused():
    from echo_tutor.convert.study import state_bytes  # noqa: F401

    def via_library(W, A, r, H, D):
        from echo_tutor.convert import ConvertedAttention
        return ConvertedAttention.state_nbytes

    with pytest.raises(ExerciseError, match="ConvertedAttention"):
        lab08.check_converted_state_bytes(via_library)
