"""Lab 02's checkers, tried as an adversary would: each solution passes; each typical wrong answer is refused
with its message; an answer right for one leading batch dim only (``x.cumsum(1)``, ``k[:, None, :]``, a 3-D
einsum, ``(eta * s**K)[:, None, None]``) is refused with the batch-dims hint; a call into the package that
computes the answer (by name, alias, ``getattr``, ``importlib``, a reshape around a kernel's twin) is refused;
the kernel-ridge exercise refuses the primal route; section 6 names the function at fault inside the assembled
layer. The decode step's checker (section 8) is tried in ``test_lab02_decode_checkers.py``."""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest
import torch

from echo_tutor import labs
from echo_tutor.labs import ExerciseError, lab02
from echo_tutor.ska import ska_readout

HINT = "It was right with leading dims"
CHECKS = {
    "ska_statistics": lab02.check_ska_statistics, "ridge_readout": lab02.check_ridge_readout,
    "kernel_ridge_readout": lab02.check_kernel_ridge_readout, "whitened_operator": lab02.check_whitened_operator,
    "power_filter": lab02.check_power_filter, "exclusive_prefix_sum": lab02.check_exclusive_prefix_sum,
    "ska_step": lab02.check_ska_step,
}


def refused(check, fn, *needles):
    with pytest.raises(ExerciseError) as e:
        check(fn)
    for needle in needles:
        assert needle in str(e.value), f"{needle!r} not in: {e.value}"
    return str(e.value)


# ------------------------------------------------------------------------------------------ the solutions pass
@pytest.mark.parametrize("name", list(CHECKS))
def test_the_solution_passes_and_handing_it_in_is_refused(name, capsys):
    solution = getattr(lab02, f"_{name}_solution")
    assert CHECKS[name].__wrapped__(solution) is None
    assert f"{name}: correct" in capsys.readouterr().out
    refused(CHECKS[name], solution, "computes the answer for you")


# ------------------------------------------------------------------------------------------ wrong answers, by hand
def stats_no_gate(k, v, beta, k_prev):
    k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], -2)
    return k.mT @ k, k.mT @ k_lag, v.mT @ k


def stats_m_transposed(k, v, beta, k_prev):
    k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], -2)
    bk = beta[..., None] * k
    return bk.mT @ k, k_lag.mT @ bk, (beta[..., None] * v).mT @ k


def stats_one_lead(k, v, beta, k_prev):
    """Right for exactly one leading dim: k_prev[:, None, :]."""
    k_lag = torch.cat([k_prev[:, None, :], k[:, :-1, :]], 1)
    bk = beta[..., None] * k
    return bk.mT @ k, bk.mT @ k_lag, (beta[..., None] * v).mT @ k


def stats_3d_einsum(k, v, beta, k_prev):
    """Right for exactly one leading dim: a 3-D einsum."""
    k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], -2)
    return (torch.einsum("bt,bti,btj->bij", beta, k, k), torch.einsum("bt,bti,btj->bij", beta, k, k_lag),
            torch.einsum("bt,btp,btj->bpj", beta, v, k))


def ridge_linear_attention(G, C, q):
    return q @ C.mT


def ridge_one_lead(G, C, q):
    """Right for exactly one leading dim: a 3-D einsum."""
    return torch.einsum("bpr,brn->bnp", C, torch.linalg.solve(G, q.mT))


def whitened_unwhitened(G, M):
    return torch.linalg.cholesky(G), M @ torch.linalg.inv(G)


def whitened_half(G, M):
    """L^-1 A L with A = M G^-1, stopped half-way: L^-1 M."""
    L = torch.linalg.cholesky(G)
    return L, torch.linalg.solve_triangular(L, M, upper=False)


def _filter(G, M, C, q, K, gamma, eta, scale_fn):
    L = torch.linalg.cholesky(G)
    Lm = torch.linalg.solve_triangular(L, M, upper=False)
    A_w = torch.linalg.solve_triangular(L, Lm.mT, upper=False).mT
    s = gamma / torch.linalg.matrix_norm(A_w.detach(), ord=2).clamp_min(1.0)
    u = torch.linalg.solve_triangular(L, q.mT, upper=False)
    for _ in range(K):
        u = A_w @ u
    y = (C @ torch.linalg.solve(G, L @ u)).mT
    return scale_fn(y, eta, s, K)


def filter_one_lead(G, M, C, q, K, gamma, eta):
    """Right for exactly one leading dim: (eta * s**K)[:, None, None]."""
    return _filter(G, M, C, q, K, gamma, eta, lambda y, e, s, K: y * (e * s**K)[:, None, None])


def filter_no_scale(G, M, C, q, K, gamma, eta):
    return _filter(G, M, C, q, K, gamma, eta, lambda y, e, s, K: e * y)


def prefix_cumsum1(X0, Xc):
    """Right for exactly one leading dim: Xc.cumsum(1) (the issue's example)."""
    csum = Xc.cumsum(1)
    return X0[:, None] + csum - Xc, X0 + csum[:, -1]


def prefix_inclusive(X0, Xc):
    return X0[..., None, :, :] + Xc.cumsum(-3), X0 + Xc.sum(-3)


WRONG = [
    ("ska_statistics", stats_no_gate, "gate beta_t is missing"),
    ("ska_statistics", stats_m_transposed, "transposed"),
    ("ridge_readout", ridge_linear_attention, "linear attention"),
    ("whitened_operator", whitened_unwhitened, "unwhitened"),
    ("whitened_operator", whitened_half, "G^-1 L = L^-T"),
    ("power_filter", filter_no_scale, "spectral scale is missing"),
    ("exclusive_prefix_sum", prefix_inclusive, "inclusive"),
]


@pytest.mark.parametrize("name, fn, msg", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_a_typical_wrong_answer_is_refused_with_its_message(name, fn, msg):
    refused(CHECKS[name], fn, msg)


ONE_LEAD = [
    ("ska_statistics", stats_one_lead), ("ska_statistics", stats_3d_einsum), ("ridge_readout", ridge_one_lead),
    ("power_filter", filter_one_lead), ("exclusive_prefix_sum", prefix_cumsum1),
]


@pytest.mark.parametrize("name, fn", ONE_LEAD, ids=[w[1].__name__ for w in ONE_LEAD])
def test_an_answer_right_for_one_leading_dim_only_is_refused_with_the_hint(name, fn):
    msg = refused(CHECKS[name], fn, HINT, "(3,)", "Count dims from the end")
    assert "is wrong with ()" in msg  # the first shape it fails on, named


def test_the_checkers_try_section_6s_shapes():
    """The layer calls the statistics and the power filter with three leading dims: an answer right for up to
    two leading dims but not three is refused too."""
    def stats_up_to_two(k, v, beta, k_prev):
        if k.ndim > 4:  # wrong beyond two leading dims
            return stats_no_gate(k, v, beta, k_prev)
        k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], -2)
        bk = beta[..., None] * k
        return bk.mT @ k, bk.mT @ k_lag, (beta[..., None] * v).mT @ k

    msg = refused(lab02.check_ska_statistics, stats_up_to_two, HINT, "(2, 2, 10)")
    assert "(), (3,), (2, 3)" in msg

    def filter_up_to_two(G, M, C, q, K, gamma, eta):
        y = _filter(G, M, C, q, K, gamma, eta, lambda y, e, s, K: y * (e * s**K)[..., None, None])
        return y if G.ndim < 5 else 2 * y

    refused(lab02.check_power_filter, filter_up_to_two, HINT, "(2, 2, 10)")


# ------------------------------------------------------------------------------------------ shortcuts into the package
def ridge_via_twin_getattr(G, C, q):
    """The fused readout's twin after a reshape, its name built at run time (issue 25's hole)."""
    ops = importlib.import_module("echo_tutor.ska." + "ops")
    twin = getattr(ops, "readout_" + "forward")
    lead, r, P = G.shape[:-2], G.shape[-1], C.shape[-2]
    Gf = G.reshape(-1, r, r)
    y = twin(Gf, Gf, C.reshape(-1, P, r), q.reshape(-1, q.shape[-2], r), 0, torch.ones(Gf.shape[0], dtype=G.dtype))[0]
    return y.reshape(*lead, *y.shape[-2:])


def filter_via_twin_getattr(G, M, C, q, K, gamma, eta):
    ops = importlib.import_module("echo_tutor.ska." + "ops")
    twin = getattr(ops, "readout_" + "forward")
    lead, r, P = G.shape[:-2], G.shape[-1], C.shape[-2]
    N = G[..., 0, 0].numel()
    y = twin(G.reshape(N, r, r), M.reshape(N, r, r), C.reshape(N, P, r), q.reshape(N, q.shape[-2], r), K,
             torch.full((N,), float(eta), dtype=G.dtype), torch.full((N,), float(gamma), dtype=G.dtype), None)[0]
    return y.reshape(*lead, *y.shape[-2:])


def ridge_via_alias(G, C, q):
    return read(G, G, C, q, power_steps=0)


read = ska_readout  # an alias of the library's readout


def stats_via_importlib(k, v, beta, k_prev):
    ref = importlib.import_module("echo_tutor.ska.reference")
    fn = vars(ref)["ska_" + "recurrent"]
    return fn(k, k, v, beta)


def prefix_via_library(X0, Xc):
    from echo_tutor.ska.linalg import exclusive_prefix

    return exclusive_prefix(X0, Xc)


SHORTCUTS = [
    ("ridge_readout", ridge_via_twin_getattr, "echo_tutor.ska.ops.readout_forward"),
    ("power_filter", filter_via_twin_getattr, "echo_tutor.ska.ops.readout_forward"),
    ("ridge_readout", ridge_via_alias, "ska_readout"),
    ("ska_statistics", stats_via_importlib, "ska_recurrent"),
    ("exclusive_prefix_sum", prefix_via_library, "exclusive_prefix"),
]


@pytest.mark.parametrize("name, fn, routine", SHORTCUTS, ids=[s[1].__name__ for s in SHORTCUTS])
def test_a_call_into_the_package_is_refused(name, fn, routine):
    refused(CHECKS[name], fn, "the answer for you", routine)


def test_the_twin_after_a_reshape_would_pass_without_the_guard():
    """The shortcut is numerically right: only the guard stops it (the checks behind the guard accept it)."""
    assert lab02.check_ridge_readout.__wrapped__(ridge_via_twin_getattr) is None
    assert lab02.check_power_filter.__wrapped__(filter_via_twin_getattr) is None


# ------------------------------------------------------------------------------------------ kernel ridge (dual form)
def kernel_ridge(k, v, beta, q, eps):
    """A correct dual form written from scratch."""
    bv = v if beta is None else beta[..., None] * v
    bk = k @ k.mT if beta is None else beta[..., None] * (k @ k.mT)
    return (q @ k.mT) @ torch.linalg.solve(eps * torch.eye(k.shape[-2], dtype=k.dtype) + bk, bv)


def kernel_ridge_primal(k, v, beta, q, eps):
    """The primal route written by hand: forms the r x r Gram."""
    b = torch.ones(k.shape[:-1], dtype=k.dtype) if beta is None else beta
    G = (b[..., None] * k).mT @ k + eps * torch.eye(k.shape[-1], dtype=k.dtype)
    return (q @ torch.linalg.solve(G, ((b[..., None] * v).mT @ k).mT))


def kernel_ridge_no_eps(k, v, beta, q, eps):
    return kernel_ridge(k, v, beta, q, 0.0)


def kernel_ridge_no_beta(k, v, beta, q, eps):
    return kernel_ridge(k, v, None, q, eps)


def kernel_ridge_b_wrong_side(k, v, beta, q, eps):
    if beta is None:
        return kernel_ridge(k, v, beta, q, eps)
    kb = (k @ k.mT) * beta[..., None, :]  # K B
    return (q @ k.mT) @ torch.linalg.solve(eps * torch.eye(k.shape[-2], dtype=k.dtype) + kb, beta[..., None] * v)


def kernel_ridge_one_lead(k, v, beta, q, eps):
    """Right for exactly one leading dim: 3-D einsums."""
    kern = torch.einsum("bti,bsi->bts", k, k)
    bv = v if beta is None else beta[..., None] * v
    bk = kern if beta is None else beta[..., None] * kern
    alpha = torch.linalg.solve(eps * torch.eye(k.shape[-2], dtype=k.dtype) + bk, bv)
    return torch.einsum("bni,bti,btp->bnp", q, k, alpha)


def ridge_readout(G, C, q):  # the learner's own exercise 2, as the lab's exercise object
    return (C @ torch.linalg.solve(G, q.mT)).mT


ridge_readout = labs.exercise(ridge_readout, "lab02")


def kernel_ridge_via_the_other_exercise(k, v, beta, q, eps):
    b = torch.ones(k.shape[:-1], dtype=k.dtype) if beta is None else beta
    return ridge_readout(eps * torch.eye(k.shape[-1], dtype=k.dtype), (b[..., None] * v).mT @ k, q)


def kernel_ridge_via_package(k, v, beta, q, eps):
    from echo_tutor.ska import ska_readout as sr

    G = k.mT @ k
    return sr(G, G, v.mT @ k, q, power_steps=0)


def test_kernel_ridge_passes_from_scratch_and_refuses_the_primal_route(capsys):
    lab02.check_kernel_ridge_readout(kernel_ridge)
    assert "kernel_ridge_readout: correct" in capsys.readouterr().out
    refused(lab02.check_kernel_ridge_readout, kernel_ridge_primal, "r x r matrix", "primal")
    refused(lab02.check_kernel_ridge_readout, kernel_ridge_via_the_other_exercise, "`ridge_readout`")
    refused(lab02.check_kernel_ridge_readout, kernel_ridge_via_package, "the answer for you")


@pytest.mark.parametrize("fn, msg", [(kernel_ridge_no_beta, "write weights beta_t"),
                                     (kernel_ridge_b_wrong_side, "wrong side"),
                                     (kernel_ridge_no_eps, "without eps I"), (kernel_ridge_one_lead, HINT)],
                         ids=lambda x: getattr(x, "__name__", x))
def test_kernel_ridge_names_the_typical_mistakes(fn, msg):
    refused(lab02.check_kernel_ridge_readout, fn, msg)


# ------------------------------------------------------------------------------------------ section 6: the layer
def _lab_namespace(**functions):
    """The lab's MySKA class, executed from the notebook's own source with the given exercise objects."""
    src = (pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "02_ska_from_scratch.py").read_text()
    cell = next(c for c in src.split("# %%") if "class MySKA" in c)
    from echo_tutor.ska import SKAState

    ns = {"torch": torch, "SKAState": SKAState, **functions}
    exec(cell, ns)  # noqa: S102  (the lab's own cell)
    return ns


def _named(name, f):
    def run(*args):
        return f(*args)

    run.__name__ = name
    return run


def test_section_6_names_the_function_at_fault_and_falls_back(capsys, monkeypatch):
    from echo_tutor.ska import SpectralKoopmanAttention, ska_chunked

    monkeypatch.delenv("ECHO_TUTOR_SOLUTIONS", raising=False)  # the learner's functions, not the solutions
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        names = lab02.LAYER_FUNCTIONS
        funcs = {n: labs.exercise(_named(n, getattr(lab02, f"_{n}_solution")), "lab02") for n in names}
        # a wrong prefix the learner never checked: it sums each chunk into its own prefix (inclusive)
        funcs["exclusive_prefix_sum"] = labs.exercise(_named("exclusive_prefix_sum", prefix_inclusive), "lab02")
        ns = _lab_namespace(**funcs)
        ref = SpectralKoopmanAttention(32, 2, 8, power_steps=1, chunk_size=16).double()
        mine = ns["MySKA"](32, 2, 8, power_steps=1, chunk_size=16).double()
        mine.load_state_dict(ref.state_dict())
        with torch.no_grad():
            for p in (ref.w_o.weight, mine.w_o.weight):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        x = torch.randn(2, 150, 32, generator=torch.Generator().manual_seed(2))
        qr, kr, vr, br = ref.project(x)
        y_ref, _ = ska_chunked(qr, kr, vr, br, power_steps=1, eps=ref.eps, eta=ref.eta, gamma=ref._gamma(),
                               spectral_norm=True, spectral_iters=None, mode="chunk", chunk_size=16)
        y_ref = ref.w_o(y_ref.reshape(2, 150, -1))
        with lab02.record_calls(ns, names) as calls:
            y_mine, _ = mine(x)
        assert {c[0] for c in calls} >= {"ska_statistics", "exclusive_prefix_sum", "power_filter"}
        assert lab02.check_layer(y_mine, y_ref, calls) is False
        out = capsys.readouterr().out
        assert "The function at fault: `exclusive_prefix_sum`" in out and "prefix differs" in out
        assert "X0 [2, 2, 8, 8], Xc [2, 2, 10, 8, 8] (2 leading dims)" in out
        assert not re.search(r"fault: `(ska_statistics|power_filter)`", out)
        assert funcs["exclusive_prefix_sum"].status == "failed"  # the lab now uses its solution
        y_again, _ = mine(x)
        assert lab02.check_layer(y_again, y_ref, []) is True
        assert ns["exclusive_prefix_sum"] is funcs["exclusive_prefix_sum"]  # the lab's names are put back
    finally:
        torch.set_default_dtype(dtype)


def test_section_6_says_when_the_layer_itself_is_wrong(capsys):
    y = torch.zeros(2, 3)
    assert lab02.check_layer(y + 1, y, []) is False
    assert "the layer's own code" in capsys.readouterr().out
