"""Lab 00's checkers, tried as an adversary would: the solutions pass; an answer right on random sizes and wrong
on one of the lab's own calls is refused; the package's byte counters (by name, alias, getattr or importlib)
and the lab's private solutions are refused. (tests/test_lab00.py holds the typical wrong formulas.)"""

import importlib
import pathlib
import re

import pytest

from echo_tutor.attention import CausalSelfAttention
from echo_tutor.labs import ExerciseError, lab00
from echo_tutor.models import LAB_SCALE
from echo_tutor.ska import SpectralKoopmanAttention as Layer

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "00_tour.py"

CHECKS = {
    "kv_cache_bytes": (lab00.check_kv_cache_bytes, lab00._kv_cache_bytes_solution),
    "ska_state_floats": (lab00.check_ska_state_floats, lab00._ska_state_floats_solution),
    "crossover_tokens": (lab00.check_crossover_tokens, lab00._crossover_tokens_solution),
}


def kv(L, A, D, T, B):
    return 2 * L * A * D * T * B


def ska(H, r, P):
    return H * (2 * r * r + P * r + r)


def crossover(A, D, H, r, P):
    return ska(H, r, P) // (2 * A * D) + 1


MINE = {"kv_cache_bytes": kv, "ska_state_floats": ska, "crossover_tokens": crossover}


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_solution_and_a_learners_own_formula_pass(name, capsys):
    check, solution = CHECKS[name]
    for _ in range(3):
        assert check.__wrapped__(solution) is None
        assert check(MINE[name]) is None  # through the guard: a formula of the learner's own
    assert "correct on fresh random inputs" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="computes the answer for you"):
        check(solution)  # the lab's private solution, handed in


@pytest.mark.parametrize("name,call", [(n, c) for n, calls in lab00.LAB_CALLS.items() for c in calls],
                         ids=lambda v: str(v))
def test_an_answer_wrong_only_on_one_of_the_labs_calls_is_refused(name, call):
    """The lab calls each function with its own sizes (section 1's layers, the paper's models): a function that
    is right on every random size and wrong on one of those cannot pass."""
    check, _ = CHECKS[name]
    right = MINE[name]

    def wrong_there(*args):
        return right(*args) + (1 if tuple(args) == call else 0)

    with pytest.raises(ExerciseError, match=re.escape(f"{name}(") + ".*" + re.escape(f"={call[-1]})")):
        check(wrong_there)


def test_the_lab_calls_are_the_calls_the_lab_makes():
    """LAB_CALLS follows the notebook: section 1's layers are LAB_SCALE's, and the paper's sizes are in the
    notebook's source as the checker has them."""
    d, H, r = LAB_SCALE["d_model"], LAB_SCALE["n_heads"], LAB_SCALE["ska_rank"]
    assert (1, H, d // H, 4096, 4) in lab00.LAB_CALLS["kv_cache_bytes"]
    assert (H, r, d // H) in lab00.LAB_CALLS["ska_state_floats"]
    assert {(H, d // H, H, r, d // H), (1, d // H, H, r, d // H)} == set(lab00.LAB_CALLS["crossover_tokens"])
    T = lab00._crossover_tokens_solution(H, d // H, H, r, d // H)
    assert {(1, H, d // H, T, 4), (1, H, d // H, T - 1, 4)} <= set(lab00.LAB_CALLS["kv_cache_bytes"])
    src = NOTEBOOK.read_text()
    for sizes in ("(2, 12, 56, 64)", "(2, 12, 48, 768 // 12)", "(4, 7, 56, 448 // 7)", "kv_cache_bytes(1, 12, 64, 131072, 2)"):
        assert sizes in src
    for layers, heads, r_p, P_p in ((2, 12, 56, 64), (2, 12, 48, 64), (4, 7, 56, 64)):
        assert {(heads, r_p, P_p), (1, r_p, P_p)} <= set(lab00.LAB_CALLS["ska_state_floats"])
    assert (1, 12, 64, 131072, 2) in lab00.LAB_CALLS["kv_cache_bytes"]


# ------------------------------------------------------------------------------------------- shortcuts
# The layers want an even head size: build them with heads of 2 and scale (a shortcut that raised inside the
# package would be reported as a crash, not as the shortcut it is).
def kv_by_the_layer(L, A, D, T, B):
    return L * CausalSelfAttention(2 * A, A, rope=False).state_nbytes(context=T) * D * B // 8


Attn = CausalSelfAttention


COUNT = "state_" + "nbytes"  # the method's name, built at run time: no name check can see it


def kv_by_an_alias(L, A, D, T, B):
    return L * getattr(Attn(2 * A, A, rope=False), COUNT)(context=T) * D * B // 8


def kv_by_importlib(L, A, D, T, B):
    mod = importlib.import_module("echo_tutor." + "attention")
    return L * getattr(getattr(mod, "Causal" + "SelfAttention")(2 * A, A, rope=False), COUNT)(context=T) * D * B // 8


def ska_by_an_alias(H, r, P):
    return getattr(Layer(H * P, H, r, head_dim=P), COUNT)() // 4


def ska_by_importlib(H, r, P):
    cls = vars(importlib.import_module("echo_tutor.ska"))["Spectral" + "KoopmanAttention"]
    return getattr(cls(H * P, H, r, head_dim=P), COUNT)() // 4


def crossover_by_the_layers(A, D, H, r, P):
    mod = importlib.import_module("echo_tutor." + "ska")
    state = getattr(getattr(mod, "Spectral" + "KoopmanAttention")(H * P, H, r, head_dim=P), COUNT)() // 4
    return state // (2 * A * D) + 1


def crossover_by_the_solution(A, D, H, r, P):
    return lab00._crossover_tokens_solution(A, D, H, r, P)


SHORTCUTS = [
    (lab00.check_kv_cache_bytes, kv_by_the_layer, "CausalSelfAttention"),
    (lab00.check_kv_cache_bytes, kv_by_an_alias, "`Attn` (that is `echo_tutor.attention"),
    (lab00.check_kv_cache_bytes, kv_by_importlib, "echo_tutor.attention"),
    (lab00.check_ska_state_floats, ska_by_an_alias, "`Layer` (that is `echo_tutor.ska"),
    (lab00.check_ska_state_floats, ska_by_importlib, "echo_tutor.ska"),
    (lab00.check_crossover_tokens, crossover_by_the_layers, "echo_tutor.ska"),
    (lab00.check_crossover_tokens, crossover_by_the_solution, "_crossover_tokens_solution"),
]


@pytest.mark.parametrize("check,student,name", SHORTCUTS, ids=[s[1].__name__ for s in SHORTCUTS])
def test_a_call_to_what_computes_the_answer_is_refused(check, student, name):
    with pytest.raises(ExerciseError, match="the answer for you") as e:
        check(student)
    assert name in str(e.value)
