"""Lab 02 (build SKA yourself): exercises, checkers and solutions, one exercise per equation.

All functions work on any leading batch dims ``[...]`` (heads, chunks), so that lab 02 can assemble a layer
from them and train it.

1. ``ska_statistics(k [..., T, r], v [..., T, P], beta [..., T], k_prev [..., r]) -> (G, M, C)``: the sums a
   block of tokens adds to SKA's state, ``G = sum_t beta_t k_t k_t^T``, ``M = sum_t beta_t k_t k_{t-1}^T``
   (``k_{-1} = k_prev``, the key before the block), ``C = sum_t beta_t v_t k_t^T``.
2. ``ridge_readout(G [..., r, r], C [..., P, r], q [..., n, r]) -> y [..., n, P]``: ``y = C G^-1 q`` per
   query row.
3. ``whitened_operator(G, M) -> (L, A_w)``: ``G = L L^T`` (Cholesky) and ``A_w = L^-1 M L^-T``.
4. ``power_filter(G, M, C, q, K, gamma, eta) -> y [..., n, P]``: ``y = eta s^K C G^-1 L A_w^K L^-1 q`` with
   ``s = gamma / max(1, sigma_max(A_w))`` (sigma_max exact, gradient stopped, as the paper does).
5. ``exclusive_prefix_sum(X0 [..., a, b], Xc [..., nc, a, b]) -> (prefix [..., nc, a, b], total [..., a, b])``:
   what chunk ``c`` reads in chunk mode, ``X0 + sum_{c' < c} Xc[c']``, and the state after the last chunk.
"""

from __future__ import annotations

import torch

from ..ska import SKAState, ska_readout, ska_recurrent
from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = [
    "_ska_statistics_solution", "_ridge_readout_solution", "_whitened_operator_solution", "_power_filter_solution",
    "_exclusive_prefix_sum_solution", "check_ska_statistics", "check_ridge_readout", "check_whitened_operator",
    "check_power_filter", "check_exclusive_prefix_sum",
]


# ---------------------------------------------------------------------------------------------- solutions
def _ska_statistics_solution(k, v, beta, k_prev):
    k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], dim=-2)  # k_{t-1}, the first from before the block
    bk = beta[..., None] * k  # beta_t k_t
    return bk.mT @ k, bk.mT @ k_lag, (beta[..., None] * v).mT @ k


def _ridge_readout_solution(G, C, q):
    return (C @ torch.linalg.solve(G, q.mT)).mT  # (C G^-1 q) for every query row


def _whitened_operator_solution(G, M):
    L = torch.linalg.cholesky(G)
    Lm = torch.linalg.solve_triangular(L, M, upper=False)  # L^-1 M
    return L, torch.linalg.solve_triangular(L, Lm.mT, upper=False).mT  # L^-1 M L^-T


def _power_filter_solution(G, M, C, q, K, gamma, eta):
    L, A_w = _whitened_operator_solution(G, M)
    s = gamma / torch.linalg.matrix_norm(A_w.detach(), ord=2).clamp_min(1.0)  # [...]
    u = torch.linalg.solve_triangular(L, q.mT, upper=False)  # L^-1 q   [..., r, n]
    for _ in range(K):
        u = A_w @ u
    u = L @ u  # L A_w^K L^-1 q = (M G^-1)^K q
    return _ridge_readout_solution(G, C, u.mT) * (eta * s**K)[..., None, None]


def _exclusive_prefix_sum_solution(X0, Xc):
    csum = Xc.cumsum(-3)
    prefix = X0[..., None, :, :] + torch.cat([torch.zeros_like(Xc[..., :1, :, :]), csum[..., :-1, :, :]], dim=-3)
    return prefix, X0 + csum[..., -1, :, :]


# ---------------------------------------------------------------------------------------------- checkers
def _spd(g, *shape, r):
    X = torch.randn(*shape, 2 * r, r, generator=g, dtype=torch.float64)
    return X.mT @ X / (2 * r) + 0.1 * torch.eye(r, dtype=torch.float64)


def _first_wrong(out, typical: dict, tol: float = 1e-6) -> str:
    return next((hint for hint, wrong in typical.items() if wrong is not None and wrong.shape == out.shape
                 and close(out, wrong, tol)), "")


@checker()
def check_ska_statistics(fn) -> None:
    """Check ``fn(k, v, beta, k_prev) -> (G, M, C)`` against the state the reference keeps."""
    name = "ska_statistics"
    for T, r, P in [(9, 4, 3), (1, 5, 2), (13, 3, 6)]:
        g, seed = fresh_generator()
        k = torch.nn.functional.normalize(torch.randn(2, T, r, generator=g, dtype=torch.float64), dim=-1)
        v = torch.randn(2, T, P, generator=g, dtype=torch.float64)
        beta = torch.rand(2, T, generator=g, dtype=torch.float64)
        k_prev = torch.randn(2, r, generator=g, dtype=torch.float64)
        out = call_student(name, fn, k, v, beta, k_prev)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ExerciseError(f"{name}: should return the three sums (G, M, C), got {type(out).__name__}")
        G, M, C = (expect_tensor(name, x, shape, lay) for x, shape, lay in
                   zip(out, [(2, r, r), (2, r, r), (2, P, r)], ["G [..., r, r]", "M [..., r, r]", "C [..., P, r]"]))
        # the reference keeps eps I + sums and starts M from its state's previous key
        st = SKAState.zeros(2, 1, r, P, eps=1.0, dtype=torch.float64)
        st.k_prev = k_prev[:, None].clone()
        _, end = ska_recurrent(k[:, :, None], k[:, :, None], v[:, :, None], beta[:, :, None], eps=1.0, state=st)
        eye = torch.eye(r, dtype=torch.float64)
        want = (end.G[:, 0] - eye, end.M[:, 0], end.C[:, 0])
        for label, got, ref in zip("GMC", (G, M, C), want):
            if close(got, ref, 1e-9):
                continue
            bk = beta[..., None] * k
            k_lag = torch.cat([k_prev[:, None], k[:, :-1]], 1)
            typical = {
                " The gate beta_t is missing (every token must write with its weight beta_t).":
                    {"G": k.mT @ k, "M": k.mT @ k_lag, "C": v.mT @ k}[label],
                " That includes eps I: return the sums only (the state adds eps I once, at the start).":
                    ref + eye if label == "G" else None,
            }
            if label == "M":
                typical.update({
                    " It is transposed: M = sum_t beta_t k_t k_{t-1}^T (the new key on the left).": (bk.mT @ k_lag).mT,
                    " M misses the first term beta_0 k_0 k_prev^T: the key before the block pairs with the first key.":
                        bk[:, 1:].mT @ k[:, :-1] if T > 1 else None,
                    " M pairs each key with itself: M is the lag-one moment, k_t with k_{t-1}.": bk.mT @ k,
                })
            hint = _first_wrong(got, typical, 1e-9)
            raise ExerciseError(f"{name}: wrong {label} for T={T}, r={r}, P={P} (seed {seed}): max abs error "
                                f"{(got - ref).abs().max():.3g}.{hint}")
    return passed(name)


@checker()
def check_ridge_readout(fn) -> None:
    """Check ``fn(G, C, q) -> C G^-1 q`` per query row, with leading batch dims."""
    name = "ridge_readout"
    for r, P, n in [(5, 3, 4), (8, 2, 1)]:
        g, seed = fresh_generator()
        G = _spd(g, 3, r=r)
        C = torch.randn(3, P, r, generator=g, dtype=torch.float64)
        q = torch.randn(3, n, r, generator=g, dtype=torch.float64)
        out = expect_tensor(name, call_student(name, fn, G, C, q), (3, n, P), "y [..., n, P]")
        want = _ridge_readout_solution(G, C, q)
        if close(out, want, 1e-9):
            continue
        typical = {
            " That is linear attention (C q): the ridge readout solves with G first, C G^-1 q.": (C @ q.mT).mT,
            " That is C G q: use the inverse (torch.linalg.solve(G, ...)), not G itself.": (C @ G @ q.mT).mT,
        }
        hint = _first_wrong(out, typical, 1e-9)
        raise ExerciseError(f"{name}: wrong values for r={r}, P={P}, n={n} (seed {seed}): max abs error "
                            f"{(out - want).abs().max():.3g}.{hint}")
    return passed(name)


@checker(forbid=("koopman_operator",))
def check_whitened_operator(fn) -> None:
    """Check ``fn(G, M) -> (L, A_w)``: ``L L^T = G`` (lower triangular) and ``A_w = L^-1 M L^-T``."""
    name = "whitened_operator"
    for r in (3, 6):
        g, seed = fresh_generator()
        G = _spd(g, 2, r=r)
        M = torch.randn(2, r, r, generator=g, dtype=torch.float64)
        out = call_student(name, fn, G, M)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ExerciseError(f"{name}: should return (L, A_w), got {type(out).__name__}")
        L, A_w = (expect_tensor(name, x, (2, r, r), lay) for x, lay in zip(out, ["L [..., r, r]", "A_w [..., r, r]"]))
        if not close(L @ L.mT, G, 1e-9) or not close(L, L.tril(), 1e-12):
            raise ExerciseError(f"{name}: L must be the lower-triangular Cholesky factor, L L^T = G "
                                f"(torch.linalg.cholesky) (seed {seed}).")
        L_ref, want = _whitened_operator_solution(G, M)
        if close(A_w, want, 1e-9):
            continue
        Linv = torch.linalg.inv(L_ref)
        typical = {
            " You have L^-1 M L^-1: the right factor is L^-T (the transpose), A_w = L^-1 M L^-T.": Linv @ M @ Linv,
            " That is A = M G^-1, the unwhitened operator (similar to A_w, same eigenvalues, different matrix).":
                M @ torch.linalg.inv(G),
            " You have L^-T M L^-1 (the factors swapped): A_w = L^-1 M L^-T.": Linv.mT @ M @ Linv,
        }
        hint = _first_wrong(A_w, typical, 1e-9)
        raise ExerciseError(f"{name}: wrong A_w for r={r} (seed {seed}): max abs error {(A_w - want).abs().max():.3g}.{hint}")
    return passed(name)


def _power_filter_inputs(g, r, P, n):
    G = _spd(g, 2, r=r)
    M = 1.5 * torch.randn(2, r, r, generator=g, dtype=torch.float64) / r ** 0.5  # sigma_max(A_w) above 1 for one head
    C = torch.randn(2, P, r, generator=g, dtype=torch.float64)
    q = torch.randn(2, n, r, generator=g, dtype=torch.float64)
    return G, M, C, q


@checker()
def check_power_filter(fn) -> None:
    """Check ``fn(G, M, C, q, K, gamma, eta)`` against the reference readout with the exact spectral norm, values
    and gradients (the spectral scale carries no gradient)."""
    name = "power_filter"
    for r, P, n, K in [(4, 3, 2, 1), (5, 2, 3, 2), (3, 2, 1, 0)]:
        g, seed = fresh_generator()
        G, M, C, q = _power_filter_inputs(g, r, P, n)
        gamma, eta = 0.8, 1.3
        Mg, qg = M.clone().requires_grad_(True), q.clone().requires_grad_(True)
        out = expect_tensor(name, call_student(name, fn, G, Mg, C, qg, K, gamma, eta), (2, n, P), "y [..., n, P]")
        ref_M, ref_q = M.clone().requires_grad_(True), q.clone().requires_grad_(True)
        want = ska_readout(G[:, None], ref_M[:, None], C[:, None], ref_q[:, None], power_steps=K, eta=eta, gamma=gamma,
                           spectral_norm=True, spectral_iters=None)[:, 0]
        if not close(out.detach(), want.detach(), 1e-8):
            A = M @ torch.linalg.inv(G)
            _, A_w = _whitened_operator_solution(G, M)
            sig = torch.linalg.matrix_norm(A_w, ord=2).clamp_min(1.0)
            base = _ridge_readout_solution(G, C, (torch.linalg.matrix_power(A, K) @ q.mT).mT)  # C G^-1 A^K q
            typical = {
                " The spectral scale is missing: multiply by eta * s^K, s = gamma / max(1, sigma_max(A_w)).": eta * base,
                " s is applied once: the filter applies A K times, so the scale is s^K.":
                    base * (eta * gamma / sig)[:, None, None] if K != 1 else None,
                " s divides by sigma_max(A_w) even when it is below 1: s = gamma / max(1, sigma_max(A_w)).":
                    base * (eta * (gamma / torch.linalg.matrix_norm(A_w, ord=2)) ** K)[:, None, None],
                " That uses G^-1 M, not A = M G^-1 (same eigenvalues, but it does not map k_{t-1} to k_t).":
                    _ridge_readout_solution(G, C, (torch.linalg.matrix_power(torch.linalg.solve(G, M), K) @ q.mT).mT)
                    * (eta * (gamma / sig) ** K)[:, None, None],
            }
            hint = _first_wrong(out.detach(), typical, 1e-8)
            raise ExerciseError(f"{name}: wrong values for r={r}, K={K} (seed {seed}): max abs error "
                                f"{(out.detach() - want.detach()).abs().max():.3g}.{hint}")
        w = torch.randn(out.shape, generator=g, dtype=torch.float64)
        got_g = torch.autograd.grad((out * w).sum(), (Mg, qg), allow_unused=True)
        ref_g = torch.autograd.grad((want * w).sum(), (ref_M, ref_q), allow_unused=True)
        for label, a, b in zip(("M", "q"), got_g, ref_g):
            a = torch.zeros_like(M) if a is None else a  # K = 0 does not use M
            b = torch.zeros_like(M) if b is None else b
            if not close(a, b, 1e-7):
                raise ExerciseError(f"{name}: right values, but the gradient with respect to {label} differs (seed "
                                    f"{seed}). Stop the gradient through sigma_max, as the paper does: "
                                    "torch.linalg.matrix_norm(A_w.detach(), ord=2).")
    return passed(name)


@checker()
def check_exclusive_prefix_sum(fn) -> None:
    """Check ``fn(X0 [..., a, b], Xc [..., nc, a, b]) -> (prefix, total)``."""
    name = "exclusive_prefix_sum"
    for nc, a, b in [(5, 3, 3), (1, 2, 4), (7, 4, 2)]:
        g, seed = fresh_generator()
        X0 = torch.randn(2, a, b, generator=g, dtype=torch.float64)
        Xc = torch.randn(2, nc, a, b, generator=g, dtype=torch.float64)
        out = call_student(name, fn, X0, Xc)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ExerciseError(f"{name}: should return (prefix, total), got {type(out).__name__}")
        prefix = expect_tensor(name, out[0], (2, nc, a, b), "prefix [..., nc, a, b]")
        total = expect_tensor(name, out[1], (2, a, b), "total [..., a, b]")
        want_p, want_t = _exclusive_prefix_sum_solution(X0, Xc)
        if close(prefix, want_p, 1e-10) and close(total, want_t, 1e-10):
            continue
        if close(prefix, want_p, 1e-10):
            raise ExerciseError(f"{name}: the prefix is right, the total is not (seed {seed}): the state after the "
                                "last chunk is X0 plus every chunk.")
        typical = {
            " Each chunk reads its own sums too (an inclusive cumsum): chunk c may read only the chunks before it.":
                X0[:, None] + Xc.cumsum(1),
            " X0 (what the state already held before this call) is missing.": want_p - X0[:, None],
            " That is the chunks' own sums: chunk c reads the sum of every chunk before it.": Xc,
        }
        hint = _first_wrong(prefix, typical, 1e-10)
        raise ExerciseError(f"{name}: wrong prefix for nc={nc} (seed {seed}): max abs error "
                            f"{(prefix - want_p).abs().max():.3g}.{hint}")
    return passed(name)
