"""Every exercise checker accepts the solution and rejects a typical wrong answer with a useful message."""

import importlib
import re

import pytest
import torch

from echo_tutor import labs
from echo_tutor.labs import ExerciseError
from echo_tutor.labs import lab01, lab02, lab03, lab04, lab05, lab06, lab07


def eye_like(K, eps):
    return eps * torch.eye(K.shape[1], dtype=K.dtype)


def labels_on_values(keys, values, distractors, order):
    inputs, labels = lab03._gap_example_solution(keys, values, distractors, order)
    shifted = torch.full_like(labels, -100)
    shifted[1:] = labels[:-1]
    return inputs, shifted


def values_after_queries(keys, values, distractors, order):
    inputs, labels = lab03._gap_example_solution(keys, values, distractors, order)
    q0 = 2 * keys.shape[0] + distractors.shape[0]
    inputs = inputs.clone()
    inputs[q0 + 1::2] = values[order]
    return inputs, labels


def first_write_wins(tokens, SET, GET):
    first, out = {}, []
    toks = [int(t) for t in tokens]
    for i in range(0, len(toks), 3):
        if toks[i] == SET:
            first.setdefault(toks[i + 1], toks[i + 2])
        else:
            out.append(first[toks[i + 1]])
    return out


def radius_by_power_iteration(A, iters):
    x = torch.ones(A.shape[1], dtype=A.dtype)
    for _ in range(iters):
        x = A @ x
        x = x / x.norm()
    return float((A @ x).norm())


def scan_variant(i, x, a, b, c):
    """The i-th typical wrong recurrence: multiply by a_t, read before writing, never decay."""
    return list(lab01._scan_variants(x, a, b, c).values())[i]


def ridge_penalised_intercept(X, Y, lam):
    Z = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    Wb = torch.linalg.solve(Z.T @ Z + lam * torch.eye(Z.shape[1], dtype=X.dtype), Z.T @ Y)
    return Wb[:-1], Wb[-1]


def power_filter_no_detach(G, M, C, q, K, gamma, eta):
    """The power filter with the gradient flowing through sigma_max(A_w)."""
    L, A_w = lab02._whitened_operator_solution(G, M)
    s = gamma / torch.linalg.matrix_norm(A_w, ord=2).clamp_min(1.0)
    u = torch.linalg.solve_triangular(L, q.mT, upper=False)
    for _ in range(K):
        u = A_w @ u
    return lab02._ridge_readout_solution(G, C, (L @ u).mT) * (eta * s**K)[..., None, None]


def ridge_no_intercept(X, Y, lam):
    W = torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)
    return W, torch.zeros(Y.shape[1], dtype=X.dtype)


def rope_rotate_half_swapped(x, cos, sin):
    """rotate_half written as (x2, -x1): the same numbers as the inverse rotation."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., h:], -x[..., :h]), -1) * sin


def ridge_centred_no_c(X, Y, lam):
    W, _ = lab06._ridge_with_intercept_solution(X, Y, lam)
    return W, torch.zeros(Y.shape[1], dtype=X.dtype)


def naive_streaming_keep(T, sinks, window):
    keep = torch.zeros(T, dtype=torch.bool)
    keep[:sinks] = True
    keep[-window:] = True          # window = 0 keeps everything
    return keep


WRONG = [
    # (checker, wrong answer, what the message must say)
    (lab02.check_ska_statistics, lambda k, v, b, kp: (k.mT @ k, k.mT @ torch.cat([kp[..., None, :], k[..., :-1, :]], -2), v.mT @ k),
     "gate beta_t is missing"),
    (lab02.check_ska_statistics, lambda k, v, b, kp: (lambda G, M, C: (G, M.mT, C))(*lab02._ska_statistics_solution(k, v, b, kp)),
     "transposed"),
    (lab02.check_ska_statistics, lambda k, v, b, kp: lab02._ska_statistics_solution(k, v, b, torch.zeros_like(kp)),
     "k_prev"),
    (lab02.check_ska_statistics, lambda k, v, b, kp: (lambda G, M, C: (G + torch.eye(G.shape[-1], dtype=G.dtype), M, C))(
        *lab02._ska_statistics_solution(k, v, b, kp)), "eps I"),
    (lab02.check_ridge_readout, lambda G, C, q: (C @ q.mT).mT, "linear attention"),
    (lab02.check_ridge_readout, lambda G, C, q: (C @ G @ q.mT).mT, "not G itself"),
    (lab02.check_ridge_readout, lambda G, C, q: C @ torch.linalg.solve(G, q.mT), "wrong shape"),
    (lab02.check_whitened_operator, lambda G, M: (torch.linalg.cholesky(G), M @ torch.linalg.inv(G)), "unwhitened"),
    (lab02.check_whitened_operator, lambda G, M: (lambda L: (L, torch.linalg.inv(L) @ M @ torch.linalg.inv(L)))(torch.linalg.cholesky(G)),
     "L^-T"),
    (lab02.check_whitened_operator, lambda G, M: (torch.linalg.cholesky(G).mT, lab02._whitened_operator_solution(G, M)[1]),
     "lower-triangular"),
    (lab02.check_power_filter, lambda G, M, C, q, K, g, e: e * lab02._ridge_readout_solution(
        G, C, (torch.linalg.matrix_power(M @ torch.linalg.inv(G), K) @ q.mT).mT), "spectral scale is missing"),
    (lab02.check_power_filter, power_filter_no_detach, "Stop the gradient"),
    (lab02.check_exclusive_prefix_sum, lambda X0, Xc: (X0[..., None, :, :] + Xc.cumsum(-3), X0 + Xc.sum(-3)), "inclusive"),
    (lab02.check_exclusive_prefix_sum, lambda X0, Xc: (lab02._exclusive_prefix_sum_solution(X0, Xc)[0], X0), "total"),
    (lab01.check_ssm_scan, lambda *args: scan_variant(0, *args), "exp(a_t)"),
    (lab01.check_ssm_scan, lambda *args: scan_variant(1, *args), "reads the state before"),
    (lab01.check_ssm_scan, lambda *args: scan_variant(2, *args), "never decayed"),
    (lab01.check_ssm_scan, lambda x, a, b, c: lab01._ssm_scan_solution(x, a, b, c).flip(0), "not causal"),
    (lab01.check_ssm_scan, lambda x, a, b, c: lab01._ssm_scan_solution(x, a, b, c).T, "wrong shape"),
    (lab01.check_decay_mask, lambda a: torch.exp(torch.cumsum(a, 0)[:, None] - torch.cumsum(a, 0)[None, :]), "above the diagonal"),
    (lab01.check_decay_mask, lambda a: torch.tril(torch.cumsum(a, 0)[:, None] - torch.cumsum(a, 0)[None, :]), "exponential"),
    (lab01.check_decay_mask, lambda a: torch.tril(torch.exp(torch.cumsum(a, 0)[:, None] - torch.cumsum(a, 0)[None, :] + a[None, :])),
     "excludes a_j"),
    (lab01.check_decay_mask, lambda a: torch.tril(torch.exp(torch.cumsum(a, -1)[..., :, None] - torch.cumsum(a, -1)[..., None, :])),
     "inexact on a long float32"),  # the cumsum difference: right in float64, loses digits in float32
    (lab01.check_ssd_quadratic, lambda x, a, b, c: torch.tril(c @ b.T) @ x, "decay mask"),
    (lab01.check_ssd_quadratic, lambda x, a, b, c: ((b @ c.T) * lab01._decay_mask_solution(a)) @ x, "B C^T"),
    (lab03.check_gap_example, labels_on_values, "value tokens"),
    (lab03.check_gap_example, lambda k, v, d, o: lab03._gap_example_solution(k, v, d, o)[0], "pair"),
    (lab03.check_gap_example, values_after_queries, "Zoology's layout"),
    (lab03.check_elimination_accuracy, lambda n: [1.0 / n] * n, "ruled out"),
    (lab03.check_elimination_accuracy, lambda n: [1.0 / (n - i + 1) for i in range(n)], "Off by one"),
    (lab03.check_elimination_accuracy, lambda n: 1.0 / n, "list of n"),
    (lab04.check_dmd_operator, lambda X, Y, e: lab04._dmd_operator_solution(X, Y, e).T, "transpose"),
    (lab04.check_dmd_operator, lambda X, Y, e: lab04._dmd_operator_solution(X, Y, 0.0), "without ridge"),
    (lab04.check_dmd_operator, lambda X, Y, e: lab04._dmd_operator_solution(Y, X, e), "swapped"),
    (lab04.check_sigma_max_power, radius_by_power_iteration, "spectral radius"),
    (lab04.check_sigma_max_power, lambda A, it: lab04._sigma_max_power_solution(A, it) ** 2, "squared"),
    (lab05.check_tool_trace_answers, first_write_wins, "first* value"),
    (lab05.check_tool_trace_answers, lambda toks, S, G: [int(toks[i + 2]) for i in range(0, len(toks) - 2, 3) if toks[i] == G], "copied"),
    (lab05.check_forgetting_readout, lambda K, V, q, d, e: lab05._forgetting_readout_solution(K, V, q, 1.0, e), "no effect"),
    (lab05.check_forgetting_readout, lambda K, V, q, d, e: lab05._forgetting_readout_solution(K.flip(0), V.flip(0), q, d, e),
     "wrong way"),
    (lab06.check_rope_rotate, lambda x, c, s: lab06._rope_rotate_solution(x, c, -s), "inverse rotation"),
    (lab06.check_rope_rotate, lab06._rope_interleaved, "GPT-J"),
    (lab06.check_rope_rotate, lambda x, c, s: x * c, "missing"),
    (lab06.check_rope_rotate, rope_rotate_half_swapped, "(x2, -x1)"),
    (lab06.check_rope_rotate, lambda x, c, s: x * c + x * s, "keeps each vector's length"),
    (lab06.check_ridge_with_intercept, ridge_penalised_intercept, "intercept is penalised"),
    (lab06.check_ridge_with_intercept, ridge_no_intercept, "without an intercept"),
    (lab06.check_ridge_with_intercept, lambda X, Y, l: lab06._ridge_with_intercept_solution(X, Y, 0.0), "unregularised"),
    (lab06.check_ridge_with_intercept, ridge_centred_no_c, "W is right but c"),
    (lab06.check_streaming_keep, lambda T, s, w: lab06._streaming_keep_solution(T, 0, w), "sinks"),
    (lab06.check_streaming_keep, lambda T, s, w: lab06._streaming_keep_solution(T, s, w + 1), "Off by one"),
    (lab06.check_streaming_keep, naive_streaming_keep, "window=0"),
    (lab07.check_chunk_gram, lambda ok, kk, S: lab07._chunk_gram_solution(ok, kk, S).cumsum(-3), "running"),
    (lab07.check_chunk_gram, lambda ok, kk, S: lab07._chunk_gram_solution(ok, kk, S).transpose(-1, -2), "Transposed"),
    (lab07.check_sherman_morrison, lambda Gi, k, a: Gi + a * torch.outer(Gi @ k, Gi @ k) / (1 + a * k @ Gi @ k), "sign"),
    (lab07.check_sherman_morrison, lambda Gi, k, a: Gi - a * torch.outer(Gi @ k, Gi @ k), "denominator"),
    (lab07.check_sherman_morrison, lambda Gi, k, a: Gi - torch.outer(Gi @ k, Gi @ k) / (1 + k @ Gi @ k), "weight a"),
]


@pytest.mark.parametrize("checker,wrong,msg", WRONG, ids=[f"{w[0].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_checker_rejects_typical_wrong_answer(checker, wrong, msg):
    # the wrong answers here are built from the solutions, which the shortcut scan would refuse first:
    # this test is about the checks behind it (checker.__wrapped__)
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        checker.__wrapped__(wrong)


@pytest.mark.parametrize(
    "checker,solution",
    [
        (lab02.check_ska_statistics, lab02._ska_statistics_solution),
        (lab02.check_ridge_readout, lab02._ridge_readout_solution),
        (lab02.check_whitened_operator, lab02._whitened_operator_solution),
        (lab02.check_power_filter, lab02._power_filter_solution),
        (lab02.check_exclusive_prefix_sum, lab02._exclusive_prefix_sum_solution),
        (lab01.check_ssm_scan, lab01._ssm_scan_solution),
        (lab01.check_decay_mask, lab01._decay_mask_solution),
        (lab01.check_ssd_quadratic, lab01._ssd_quadratic_solution),
        (lab01.check_ssd_chunked, lab01._ssd_chunked_solution),
        (lab03.check_gap_example, lab03._gap_example_solution),
        (lab03.check_elimination_accuracy, lab03._elimination_accuracy_solution),
        (lab04.check_dmd_operator, lab04._dmd_operator_solution),
        (lab04.check_sigma_max_power, lab04._sigma_max_power_solution),
        (lab05.check_tool_trace_answers, lab05._tool_trace_answers_solution),
        (lab05.check_forgetting_readout, lab05._forgetting_readout_solution),
        (lab06.check_rope_rotate, lab06._rope_rotate_solution),
        (lab06.check_ridge_with_intercept, lab06._ridge_with_intercept_solution),
        (lab06.check_streaming_keep, lab06._streaming_keep_solution),
        (lab07.check_chunk_gram, lab07._chunk_gram_solution),
        (lab07.check_sherman_morrison, lab07._sherman_morrison_solution),
    ],
)
def test_checker_accepts_solution(checker, solution):
    assert checker.__wrapped__(solution) is None  # no exception: accepted (and no `Out: True` in the lab)
    with pytest.raises(ExerciseError, match="computes the answer for you"):
        checker(solution)  # handing in the lab's private solution itself is a shortcut


def test_unattempted_and_crashing_answers_are_explained():
    def todo(*args):
        raise NotImplementedError

    with pytest.raises(ExerciseError, match="not attempted yet"):
        lab02.check_ridge_readout(todo)
    with pytest.raises(ExerciseError, match="your function raised ZeroDivisionError"):
        lab02.check_whitened_operator(lambda G, M: 1 / 0)
    with pytest.raises(ExerciseError, match="expected a function"):
        lab02.check_whitened_operator(3)


def test_switches_follow_the_environment(monkeypatch):
    monkeypatch.setenv("ECHO_TUTOR_FAST", "0")
    assert labs.is_fast() is False
    monkeypatch.setenv("ECHO_TUTOR_FAST", "1")
    assert labs.is_fast() is True
    monkeypatch.delenv("ECHO_TUTOR_FAST")
    monkeypatch.setenv("CI", "true")
    assert labs.is_fast() is True
    mine = lambda *a: "mine"  # noqa: E731
    monkeypatch.setenv("ECHO_TUTOR_SOLUTIONS", "1")
    ex = labs.exercise(mine, lambda *a: "solution")
    assert ex.status == "solution" and ex() == "solution"
    monkeypatch.setenv("ECHO_TUTOR_SOLUTIONS", "0")
    ex = labs.exercise(mine, lambda *a: "solution")
    assert ex.status == "unchecked" and ex() == "mine"
    # SOLUTIONS is read once, when echo_tutor.labs.switches is imported (reloading the package alone would
    # keep the submodule's value from the first import)
    assert importlib.reload(labs.switches).SOLUTIONS is False
    monkeypatch.setenv("ECHO_TUTOR_SOLUTIONS", "1")
    assert importlib.reload(labs.switches).SOLUTIONS is True
    monkeypatch.undo()
    importlib.reload(labs.switches)  # back to the environment this run started with
