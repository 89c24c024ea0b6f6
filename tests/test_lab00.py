"""Lab 00's checkers accept the solutions and reject the usual mistakes with the intended message."""

import re

import pytest
import torch

from echo_tutor.labs import ExerciseError, lab00


def one_layer(L, H, D, T, B):
    return 2 * H * D * T * B


WRONG = [
    (lab00.check_kv_cache_bytes, lambda L, H, D, T, B: L * H * D * T * B, "key *and* a value"),
    (lab00.check_kv_cache_bytes, lambda L, H, D, T, B: 2 * L * H * D * T, "not bytes"),
    (lab00.check_kv_cache_bytes, one_layer, "one layer"),
    (lab00.check_kv_cache_bytes, lambda L, H, D, T, B: 2.5 * L * H * D * T * B, "whole number"),
    (lab00.check_kv_cache_bytes, lambda L, H, D, T, B: torch.tensor([1, 2]), "return one number"),
    (lab00.check_kv_cache_bytes, lambda L, H, D, T, B: "many", "return one number"),
    (lab00.check_ska_state_floats, lambda H, r, P: H * (r * r + P * r + r), "M is missing"),
    (lab00.check_ska_state_floats, lambda H, r, P: H * (2 * r * r + P * r), "k_prev is missing"),
    (lab00.check_ska_state_floats, lambda H, r, P: H * (3 * r * r + r), "head_dim x r, not r x r"),
    (lab00.check_ska_state_floats, lambda H, r, P: 2 * r * r + P * r + r, "one head"),
    (lab00.check_ska_state_floats, lambda H, r, P: H * (r + P), "KV cache entry"),
    (lab00.check_ska_state_floats, lambda H, r, P: H * r * r, "expected"),
]


@pytest.mark.parametrize("checker,wrong,msg", WRONG, ids=[f"{w[0].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_checker_rejects_typical_wrong_answer(checker, wrong, msg):
    for _ in range(5):  # fresh random inputs every call: the message must not depend on the draw
        with pytest.raises(ExerciseError, match=re.escape(msg)):
            checker(wrong)


def test_wrong_answer_message_names_the_seed_and_the_call():
    with pytest.raises(ExerciseError, match=r"seed \d+") as e:
        lab00.check_ska_state_floats(lambda H, r, P: 0)
    assert "ska_state_floats(n_heads=" in str(e.value)


@pytest.mark.parametrize("checker,solution", [
    (lab00.check_kv_cache_bytes, lab00._kv_cache_bytes_solution),
    (lab00.check_ska_state_floats, lab00._ska_state_floats_solution),
])
def test_checker_accepts_solution(checker, solution, capsys):
    for _ in range(5):
        assert checker.__wrapped__(solution) is None
    assert "correct on fresh random inputs" in capsys.readouterr().out


def test_checker_accepts_other_integer_types():
    lab00.check_kv_cache_bytes.__wrapped__(lambda *a: torch.tensor(lab00._kv_cache_bytes_solution(*a)))
    lab00.check_ska_state_floats.__wrapped__(lambda *a: float(lab00._ska_state_floats_solution(*a)))


def test_unattempted_is_explained():
    def todo(*args):
        raise NotImplementedError

    for checker in (lab00.check_kv_cache_bytes, lab00.check_ska_state_floats):
        with pytest.raises(ExerciseError, match="not attempted yet"):
            checker(todo)


def test_solutions_match_the_layers_they_describe():
    from echo_tutor.attention import CausalSelfAttention
    from echo_tutor.ska import SpectralKoopmanAttention

    ska = SpectralKoopmanAttention(48, 3, 8, head_dim=5)
    assert lab00._ska_state_floats_solution(3, 8, 5) * 4 == ska.state_nbytes()
    attn = CausalSelfAttention(48, 3)
    assert lab00._kv_cache_bytes_solution(1, 3, 16, 37, 4) == attn.state_nbytes(context=37)
