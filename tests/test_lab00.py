"""Lab 00's checkers accept the solutions and reject the usual mistakes with the intended message."""

import re

import pytest
import torch

from echo_tutor.labs import ExerciseError, lab00


def one_layer(L, H, D, T, B):
    return 2 * H * D * T * B


def ska(H, r, P):
    """One SKA layer's state, in numbers (written out: a call to the solution would be refused as a shortcut)."""
    return H * (2 * r * r + P * r + r)


def first_past(state, per_token):
    return state // per_token + 1


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
    # crossover_tokens(n_kv_heads=A, head_dim=D, n_heads=H, r, P)
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: ska(H, r, P) // (2 * A * D), "not larger than the state yet"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: -(-ska(H, r, P) // (2 * A * D)), "can be *equal*"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: first_past(ska(H, r, P), A * D), "a key *and* a value"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: first_past(ska(H, r, P) - H * r, 2 * A * D), "k_prev"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: first_past(ska(1, r, P), 2 * A * D), "one head's state"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: first_past(ska(H, r, P), 2 * H * D), "grouped-query"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: ska(H, r, P) / (2 * A * D), "whole number"),
    (lab00.check_crossover_tokens, lambda A, D, H, r, P: first_past(ska(H, r, P), 2 * A * D) + 1, "expected"),
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
    (lab00.check_crossover_tokens, lab00._crossover_tokens_solution),
])
def test_checker_accepts_solution(checker, solution, capsys):
    for _ in range(5):
        assert checker.__wrapped__(solution) is None
    assert "correct on fresh random inputs" in capsys.readouterr().out


def test_checker_accepts_other_integer_types():
    lab00.check_kv_cache_bytes.__wrapped__(lambda *a: torch.tensor(lab00._kv_cache_bytes_solution(*a)))
    lab00.check_ska_state_floats.__wrapped__(lambda *a: float(lab00._ska_state_floats_solution(*a)))
    lab00.check_crossover_tokens.__wrapped__(lambda *a: torch.tensor(lab00._crossover_tokens_solution(*a)))


def test_crossover_by_search_and_by_helpers_is_accepted(capsys):
    """A learner's loop over T, built on their own two earlier functions, passes (no shortcut): only the
    library's byte counters and the solutions are refused."""
    def crossover_tokens(n_kv_heads, head_dim, n_heads, r, P):
        state, T = ska_state_floats(n_heads, r, P), 1
        while kv_cache_bytes(1, n_kv_heads, head_dim, T, 1) <= state:
            T += 1
        return T

    kv_cache_bytes = lambda L, A, D, T, B: 2 * L * A * D * T * B  # noqa: E731
    ska_state_floats = lambda H, r, P: H * (2 * r * r + P * r + r)  # noqa: E731
    assert lab00.check_crossover_tokens(crossover_tokens) is None
    with pytest.raises(ExerciseError, match="computes the answer for you"):
        lab00.check_crossover_tokens(lab00._crossover_tokens_solution)


def test_unattempted_is_explained():
    def todo(*args):
        raise NotImplementedError

    for checker in (lab00.check_kv_cache_bytes, lab00.check_ska_state_floats, lab00.check_crossover_tokens):
        with pytest.raises(ExerciseError, match="not attempted yet"):
            checker(todo)


def test_solutions_match_the_layers_they_describe():
    from echo_tutor.attention import CausalSelfAttention
    from echo_tutor.ska import SpectralKoopmanAttention

    ska = SpectralKoopmanAttention(48, 3, 8, head_dim=5)
    assert lab00._ska_state_floats_solution(3, 8, 5) * 4 == ska.state_nbytes()
    attn = CausalSelfAttention(48, 3)
    assert lab00._kv_cache_bytes_solution(1, 3, 16, 37, 4) == attn.state_nbytes(context=37)
    # lab 00's layers (d = 64, 2 heads, r = 32): the cache passes the state at 49 tokens, not at 48
    ska64, attn64 = SpectralKoopmanAttention(64, 2, 32), CausalSelfAttention(64, 2)
    T = lab00._crossover_tokens_solution(2, 32, 2, 32, 32)
    assert T == 49 and attn64.state_nbytes(context=T) > ska64.state_nbytes() >= attn64.state_nbytes(context=T - 1)
