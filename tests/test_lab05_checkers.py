"""Lab 05's checkers, tested as an adversary would: the solution passes; each typical wrong answer, including
versions right for one number of leading batch dims only, is refused with its message; a call into the
package (by name, alias, getattr or importlib) or into the lab's private solutions is refused."""

import importlib
import re

import pytest
import torch

from echo_tutor.labs import ExerciseError, lab05


# ------------------------------------------------------------------------------------ tool_trace_answers
def first_write_wins(tokens, SET, GET):
    first, out = {}, []
    toks = [int(t) for t in tokens]
    for i in range(0, len(toks) - 2, 3):
        if toks[i] == SET:
            first.setdefault(toks[i + 1], toks[i + 2])
        elif toks[i] == GET:
            out.append(first[toks[i + 1]])
    return out


def last_set_in_the_trace(tokens, SET, GET):
    """Right on the task's traces (every SET first), wrong once a SET follows a GET."""
    toks = [int(t) for t in tokens]
    last = {toks[i + 1]: toks[i + 2] for i in range(0, len(toks) - 2, 3) if toks[i] == SET}
    return [last[toks[i + 1]] for i in range(0, len(toks) - 2, 3) if toks[i] == GET]


def copy_the_answer_slot(tokens, SET, GET):
    toks = [int(t) for t in tokens]
    return [toks[i + 2] for i in range(0, len(toks) - 2, 3) if toks[i] == GET]


def tool_trace_via_the_lab_solution(tokens, SET, GET):
    mod = importlib.import_module("echo_tutor.labs.lab05")
    return getattr(mod, "_tool_trace_answers" + "_solution")(tokens, SET, GET)


# ------------------------------------------------------------------------------------------ rising_gate
def smallest_gates(n, eps, share):
    """A correct student answer, written independently of the lab's solution."""
    c, total, out = share / (1 - share), 0.0, []
    for _ in range(n):
        b = c * (eps + total)
        if b > 1 + 1e-12:
            return None
        out.append(min(b, 1.0))
        total += out[-1]
    return torch.tensor(out, dtype=torch.float64)


def never_none(n, eps, share):
    """Clips the gates at 1 instead of saying no gate exists."""
    c, total, out = share / (1 - share), 0.0, []
    for _ in range(n):
        out.append(min(c * (eps + total), 1.0))
        total += out[-1]
    return torch.tensor(out, dtype=torch.float64)


def gates_ignoring_eps(n, eps, share):
    """beta_j = c * (earlier gates), starting from eps: forgets that eps is in the denominator."""
    c, total, out = share / (1 - share), 0.0, []
    for j in range(n):
        b = eps if j == 0 else c * total
        if b > 1:
            return None
        out.append(b)
        total += b
    return torch.tensor(out, dtype=torch.float64)


def only_the_last_write(n, eps, share):
    """Tiny gates then 1: the newest dominates after the last write only (not causal)."""
    if smallest_gates(n, eps, share) is None:
        return None
    return torch.tensor([1e-9] * (n - 1) + [1.0], dtype=torch.float64)


def gates_above_one(n, eps, share):
    return torch.full((n,), 5.0, dtype=torch.float64)


def rising_gate_via_the_lab(n, eps, share):
    mod = importlib.import_module("echo_tutor.labs.lab05")
    if n > getattr(mod, "_max_ranked_writes" + "_solution")(eps, share):
        return None
    return smallest_gates(n, eps, share)


# -------------------------------------------------------------------------------------- forgetting_readout
def readout_batched(keys, values, query, decay, eps):
    """A correct student answer for any number of leading dims."""
    T, r = keys.shape[-2:]
    w = decay ** torch.arange(T - 1, -1, -1, dtype=keys.dtype)
    G = eps * torch.eye(r, dtype=keys.dtype) + torch.einsum("t,...ti,...tj->...ij", w, keys, keys)
    C = torch.einsum("t,...tp,...ti->...pi", w, values, keys)
    return torch.linalg.solve(G, query.unsqueeze(-1)).squeeze(-1).unsqueeze(-2).mul(C).sum(-1)


def readout_2d_only(keys, values, query, decay, eps):
    """Right for keys [T, r] only: `.T` and a 2-D einsum."""
    T, r = keys.shape
    w = decay ** torch.arange(T - 1, -1, -1, dtype=keys.dtype)
    G = eps * torch.eye(r, dtype=keys.dtype) + (w[:, None] * keys).T @ keys
    C = torch.einsum("t,tp,ti->pi", w, values, keys)
    return C @ torch.linalg.solve(G, query)


def readout_one_leading_dim(keys, values, query, decay, eps):
    """Right for zero or one leading dim: loops over dim 0 with a 2-D-only inner function."""
    if keys.ndim == 2:
        return readout_2d_only(keys, values, query, decay, eps)
    return torch.stack([readout_2d_only(k, v, q, decay, eps) for k, v, q in zip(keys, values, query)])


def readout_eps_decayed(keys, values, query, decay, eps):
    T = keys.shape[-2]
    return readout_batched(keys, values, query, decay, eps * decay ** (T - 1))


def readout_only_C_weighted(keys, values, query, decay, eps):
    T = keys.shape[-2]
    w = decay ** torch.arange(T - 1, -1, -1, dtype=keys.dtype)
    return readout_batched(keys, values * w[:, None], query, 1.0, eps)


def readout_sqrt_weights(keys, values, query, decay, eps):
    return readout_batched(keys, values, query, decay ** 0.5, eps)


def readout_via_ska(keys, values, query, decay, eps):
    from echo_tutor.ska import ska_chunked as fit  # an alias of the package's SKA: SKA with K = 0 is this ridge

    T = keys.shape[-2]
    w = decay ** torch.arange(T - 1, -1, -1, dtype=keys.dtype)
    _, st = fit(keys[None, :, None], keys[None, :, None], values[None, :, None], w[None, :, None], power_steps=0, eps=eps)
    return (st.C @ torch.linalg.solve(st.G, query[:, None]))[0, 0, :, 0]


def readout_via_importlib(keys, values, query, decay, eps):
    mod = importlib.import_module("echo_tutor.ska." + "reference")
    T = keys.shape[-2]
    w = decay ** torch.arange(T - 1, -1, -1, dtype=keys.dtype)
    _, st = getattr(mod, "ska" + "_recurrent")(keys[None, :, None], keys[None, :, None], values[None, :, None],
                                               w[None, :, None], power_steps=0, eps=eps)
    return (st.C @ torch.linalg.solve(st.G, query[:, None]))[0, 0, :, 0]


# ----------------------------------------------------------------------------------------------- tests
SOLUTIONS = [
    (lab05.check_tool_trace_answers, lab05._tool_trace_answers_solution),
    (lab05.check_rising_gate, lab05._rising_gate_solution),
    (lab05.check_forgetting_readout, lab05._forgetting_readout_solution),
]


@pytest.mark.parametrize("check, solution", SOLUTIONS, ids=[s[1].__name__ for s in SOLUTIONS])
def test_the_solution_passes_and_handing_it_in_is_refused(check, solution):
    assert check.__wrapped__(solution) is None
    with pytest.raises(ExerciseError, match="computes the answer for you"):
        check(solution)


@pytest.mark.parametrize("check, student", [(lab05.check_rising_gate, smallest_gates),
                                            (lab05.check_forgetting_readout, readout_batched)],
                         ids=["rising_gate", "forgetting_readout"])
def test_an_independent_correct_answer_passes_under_the_guard(check, student, capsys):
    assert check(student) is None
    assert "correct" in capsys.readouterr().out


WRONG = [
    (lab05.check_tool_trace_answers, first_write_wins, "first* value"),
    (lab05.check_tool_trace_answers, last_set_in_the_trace, "*before* it"),
    (lab05.check_tool_trace_answers, copy_the_answer_slot, "copied"),
    (lab05.check_tool_trace_answers, lambda toks, S, G: copy_the_answer_slot(toks, S, G)[:-1], "one answer per GET"),
    (lab05.check_tool_trace_answers, lambda toks, S, G: torch.tensor(0.5), "list of ints"),
    (lab05.check_rising_gate, lambda n, e, s: None, "a gate in (0, 1] exists"),
    (lab05.check_rising_gate, never_none, "return None"),
    (lab05.check_rising_gate, gates_ignoring_eps, "eps counts"),
    (lab05.check_rising_gate, only_the_last_write, "causal"),
    (lab05.check_rising_gate, gates_above_one, "(0, 1]"),
    (lab05.check_rising_gate, lambda n, e, s: torch.ones(n, dtype=torch.float64), "after write 2"),
    (lab05.check_forgetting_readout, lambda K, V, q, d, e: readout_batched(K, V, q, 1.0, e), "no effect"),
    (lab05.check_forgetting_readout, lambda K, V, q, d, e: readout_batched(K.flip(-2), V.flip(-2), q, d, e), "wrong way"),
    (lab05.check_forgetting_readout, readout_eps_decayed, "keep eps * I"),
    (lab05.check_forgetting_readout, readout_only_C_weighted, "Weight both statistics"),
    (lab05.check_forgetting_readout, readout_sqrt_weights, "not its square root"),
    (lab05.check_forgetting_readout, readout_2d_only, "leading dims [(]"),
    (lab05.check_forgetting_readout, readout_one_leading_dim, "right with leading dims (), (3,) and is wrong with (2, 3)"),
]


@pytest.mark.parametrize("check, wrong, msg", WRONG, ids=[f"{w[0].__name__}-{w[1].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_a_typical_wrong_answer_is_refused_with_its_message(check, wrong, msg):
    with pytest.raises(ExerciseError) as e:
        check(wrong)
    assert re.search(msg if msg.endswith("[(]") else re.escape(msg), str(e.value)), str(e.value)


SHORTCUTS = [
    (lab05.check_tool_trace_answers, tool_trace_via_the_lab_solution, "_tool_trace_answers_solution"),
    (lab05.check_rising_gate, rising_gate_via_the_lab, "_max_ranked_writes_solution"),
    (lab05.check_forgetting_readout, readout_via_ska, "ska_chunked"),
    (lab05.check_forgetting_readout, readout_via_importlib, "ska_recurrent"),
]


@pytest.mark.parametrize("check, student, name", SHORTCUTS, ids=[s[1].__name__ for s in SHORTCUTS])
def test_a_shortcut_is_refused(check, student, name):
    with pytest.raises(ExerciseError, match="answer for you") as e:
        check(student)
    assert name in str(e.value)


def test_the_writes_a_gate_can_rank_follow_the_derivation():
    # eps = 1e-3, share 0.9: the smallest gates are 0.009, 0.09, 0.9, then 9 > 1
    assert lab05._max_ranked_writes_solution(1e-3, 0.9) == 3
    assert torch.allclose(lab05._rising_gate_solution(3, 1e-3, 0.9), torch.tensor([0.009, 0.09, 0.9], dtype=torch.float64))
    assert lab05._rising_gate_solution(4, 1e-3, 0.9) is None
    assert lab05._max_ranked_writes_solution(1e-3, 0.5) == 10
    assert lab05._max_ranked_writes_solution(0.5, 0.9) == 0 and lab05._rising_gate_solution(1, 0.5, 0.9) is None
