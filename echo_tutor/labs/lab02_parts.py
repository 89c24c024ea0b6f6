"""Lab 02, exercises 1-5: the checkers of the functions section 6 assembles into a layer (``ska_statistics``,
``ridge_readout``, ``whitened_operator``, ``power_filter``, ``exclusive_prefix_sum``) and of the readout's
kernel form (``kernel_ridge_readout``, 2b). See :mod:`echo_tutor.labs.lab02`, which re-exports them, for the
exercises."""

from __future__ import annotations

import torch

from ..ska import SKAState, ska_readout, ska_recurrent
from ..ska.linalg import whiten
from . import ExerciseError, NotAttempted, checker, close, expect_tensor, fresh_generator, leading_dims, passed
from .lab02_common import (SECTION6, _call, _dims, _first_wrong, _over_leads, _Refused, _ridge_readout_solution, _spd,
                           _tuple_of, _WatchOps, _whitened_operator_solution)

__all__ = ["check_ska_statistics", "check_ridge_readout", "check_kernel_ridge_readout", "check_whitened_operator",
           "check_power_filter", "check_exclusive_prefix_sum"]


# ---------------------------------------------------------------------------------------------- 1. statistics
@checker()
def check_ska_statistics(fn) -> None:
    """Check ``fn(k, v, beta, k_prev) -> (G, M, C)`` against the state the library's reference keeps, for no,
    one and two leading dims and section 6's three."""
    name = "ska_statistics"
    sizes = {(): (9, 4, 3), (3,): (1, 5, 2), (2, 3): (13, 3, 6)}
    s6 = SECTION6
    sizes[s6["lead"]] = (s6["T"], s6["r"], s6["P"])

    def trial(lead):
        T, r, P = sizes[lead]
        g, seed = fresh_generator()
        k = torch.nn.functional.normalize(torch.randn(*lead, T, r, generator=g, dtype=torch.float64), dim=-1)
        v = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
        beta = torch.rand(*lead, T, generator=g, dtype=torch.float64)
        k_prev = torch.randn(*lead, r, generator=g, dtype=torch.float64)
        out = _tuple_of(name, _call(name, fn, k, v, beta, k_prev), 3, "the three sums (G, M, C)")
        G, M, C = (expect_tensor(name, x, (*lead, *shape), lay) for x, shape, lay in
                   zip(out, [(r, r), (r, r), (P, r)], ["G [..., r, r]", "M [..., r, r]", "C [..., P, r]"]))
        # the library's token-by-token reference, heads = the flattened leading dims; it keeps eps I + the sums
        N = k[..., 0, 0].numel()
        st = SKAState.zeros(1, N, r, P, eps=1.0, dtype=torch.float64)
        st.k_prev = k_prev.reshape(1, N, r).clone()
        flat = lambda x: x.reshape(N, T, -1).transpose(0, 1)[None]  # noqa: E731   [1, T, N, .]
        _, end = ska_recurrent(flat(k), flat(k), flat(v), beta.reshape(N, T).T[None], power_steps=0, eps=1.0, state=st)
        eye = torch.eye(r, dtype=torch.float64)
        want = ((end.G[0] - eye).reshape(*lead, r, r), end.M[0].reshape(*lead, r, r), end.C[0].reshape(*lead, P, r))
        for label, got, ref in zip("GMC", (G, M, C), want):
            if close(got, ref, 1e-9):
                continue
            bk = beta[..., None] * k
            k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], -2)
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
                        bk[..., 1:, :].mT @ k[..., :-1, :] if T > 1 else None,
                    " M pairs each key with itself: M is the lag-one moment, k_t with k_{t-1}.": bk.mT @ k,
                })
            hint = _first_wrong(got, typical, 1e-9)
            return (f"{name}: wrong {label} with {_dims(lead)}, T={T}, r={r}, P={P} (seed {seed}): max abs error "
                    f"{(got - ref).abs().max():.3g}.{hint}")
        return None

    _over_leads(name, leading_dims(s6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 2. ridge readout
@checker()
def check_ridge_readout(fn) -> None:
    """Check ``fn(G, C, q) -> C G^-1 q`` per query row, for no, one and two leading dims and the shapes section
    6's layer reaches it with (through a power filter that calls it)."""
    name = "ridge_readout"
    sizes = {(): (5, 3, 4), (3,): (8, 2, 1), (2, 3): (6, 4, 3)}
    s6 = SECTION6
    sizes[s6["lead"]] = (s6["r"], s6["P"], s6["T"])

    def trial(lead):
        r, P, n = sizes[lead]
        g, seed = fresh_generator()
        G = _spd(g, lead, r)
        C = torch.randn(*lead, P, r, generator=g, dtype=torch.float64)
        q = torch.randn(*lead, n, r, generator=g, dtype=torch.float64)
        out = expect_tensor(name, _call(name, fn, G, C, q), (*lead, n, P), "y [..., n, P]")
        want = ska_readout(G, G, C, q, power_steps=0)  # the library's readout with K = 0
        if close(out, want, 1e-9):
            return None
        typical = {
            " That is linear attention (C q): the ridge solution undoes the keys' overlaps with G^-1, C G^-1 q.":
                (C @ q.mT).mT,
            " That is C G q: the minimiser needs the inverse of G (torch.linalg.solve(G, ...)), not G itself.":
                (C @ G @ q.mT).mT,
        }
        hint = _first_wrong(out, typical, 1e-9)
        return (f"{name}: wrong values with {_dims(lead)}, r={r}, P={P}, n={n} (seed {seed}): max abs error "
                f"{(out - want).abs().max():.3g}.{hint}")

    _over_leads(name, leading_dims(s6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 2b. kernel ridge
_OTHER_EXERCISES = ("ska_statistics", "ridge_readout", "whitened_operator", "power_filter", "exclusive_prefix_sum",
                    "ska_step")


@checker(forbid=_OTHER_EXERCISES)
def check_kernel_ridge_readout(fn) -> None:
    """Check ``fn(k, v, beta, q, eps)`` (the dual form) against the primal ridge readout ``C G^-1 q``: fresh
    inputs with fewer and more tokens than the rank, with and without write weights (one of them 0), no, one
    and two leading dims; refused if it builds an ``r x r`` matrix (the primal route) or calls the lab's other
    exercises."""
    name = "kernel_ridge_readout"
    cases = [((), 5, 9, 3, 2, True), ((), 12, 7, 4, 3, False), ((3,), 6, 11, 2, 4, True), ((3,), 14, 5, 3, 2, False),
             ((2, 3), 4, 7, 5, 3, True), ((2, 3), 10, 6, 2, 5, True)]  # (lead, T, r, P, n, with beta)

    def trial(lead):
        for lead_, T, r, P, n, with_beta in cases:
            if lead_ != lead:
                continue
            g, seed = fresh_generator()
            k = torch.nn.functional.normalize(torch.randn(*lead, T, r, generator=g, dtype=torch.float64), dim=-1)
            v = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
            q = torch.randn(*lead, n, r, generator=g, dtype=torch.float64)
            beta = None
            if with_beta:
                beta = 0.05 + torch.rand(*lead, T, generator=g, dtype=torch.float64)
                beta[..., 1] = 0.0  # a token that writes nothing (a padded one, or a gate shut)
            eps = float(torch.empty(()).uniform_(0.05, 0.5, generator=g))
            where = (f"with {_dims(lead)}, T={T}, r={r}, P={P}, n={n}, "
                     f"{'with' if beta is not None else 'without'} write weights (seed {seed})")
            why = (" The ridge keeps the system solvable: Z Z^T has rank at most r, so without eps I it is singular "
                   "when T > r; and one token here has beta_t = 0 (it writes nothing), so keep B outside any inverse.")
            try:
                out = _call(name, fn, k, v, beta, q, eps, watch=_WatchOps(r, no_rr_output=True))
            except (NotAttempted, _Refused):
                raise
            except ExerciseError as e:
                return f"{e} ({where}).{why}"
            if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
                return f"{name}: the output contains NaN or Inf {where}.{why}"
            out = expect_tensor(name, out, (*lead, n, P), "y [..., n, P]")
            b = torch.ones(*lead, T, dtype=torch.float64) if beta is None else beta
            G = eps * torch.eye(r, dtype=torch.float64) + (b[..., None] * k).mT @ k  # the primal statistics
            C = (b[..., None] * v).mT @ k
            want = ska_readout(G, G, C, q, power_steps=0)
            if close(out, want, 1e-9):
                continue
            eye_T = torch.eye(T, dtype=torch.float64)
            kern = k @ k.mT
            bv = b[..., None] * v
            typical = {
                " The write weights beta_t are missing: each token's squared error counts beta_t times.":
                    (q @ k.mT) @ torch.linalg.solve(eps * eye_T + kern, v) if beta is not None else None,
                " B is on the wrong side: (eps I + K B)^-1 B V is not (eps I + B K)^-1 B V; K = Z Z^T is symmetric, "
                "K B is not.": (q @ k.mT) @ torch.linalg.solve(eps * eye_T + kern * b[..., None, :], bv)
                if beta is not None else None,
                " That is linear attention (q Z^T B V, the kernel matrix never inverted): the ridge solution solves "
                "with eps I + B K first.": (q @ k.mT) @ bv,
                " The ridge eps is missing (the kernel matrix alone is inverted).":
                    (q @ k.mT) @ torch.linalg.solve(kern, v) if beta is None and T <= r else None,
            }
            hint = _first_wrong(out, typical, 1e-8)
            return (f"{name}: wrong values {where}: max abs error {(out - want).abs().max():.3g} from the primal "
                    f"C G^-1 q.{hint}")
        return None

    _over_leads(name, leading_dims(), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 3. whitened operator
@checker(forbid=("koopman_operator",))
def check_whitened_operator(fn) -> None:
    """Check ``fn(G, M) -> (L, A_w)``: ``L L^T = G`` (lower triangular) and ``A_w = L^-1 A L = L^-1 M L^-T``."""
    name = "whitened_operator"
    sizes = {(): 3, (3,): 6, (2, 3): 4, SECTION6["lead"]: SECTION6["r"]}

    def trial(lead):
        r = sizes[lead]
        g, seed = fresh_generator()
        G = _spd(g, lead, r)
        M = torch.randn(*lead, r, r, generator=g, dtype=torch.float64)
        out = _tuple_of(name, _call(name, fn, G, M), 2, "(L, A_w)")
        L, A_w = (expect_tensor(name, x, (*lead, r, r), lay) for x, lay in zip(out, ["L [..., r, r]", "A_w [..., r, r]"]))
        if not close(L @ L.mT, G, 1e-9) or not close(L, L.tril(), 1e-12):
            return (f"{name}: L must be the lower-triangular Cholesky factor, L L^T = G (torch.linalg.cholesky), "
                    f"with {_dims(lead)} (seed {seed}).")
        L_ref = torch.linalg.cholesky(G)
        want = whiten(M, L_ref)  # the library's
        if close(A_w, want, 1e-9):
            return None
        Linv = torch.linalg.inv(L_ref)
        typical = {
            " You have L^-1 M L^-1: the right factor is L^-T (the transpose), A_w = L^-1 M L^-T.": Linv @ M @ Linv,
            " That is A = M G^-1, the unwhitened operator (similar to A_w, same eigenvalues, different matrix).":
                M @ torch.linalg.inv(G),
            " You have L^-T M L^-1 (the factors swapped): A_w = L^-1 M L^-T.": Linv.mT @ M @ Linv,
            " That is L^-1 M: A = M G^-1, so L^-1 A L = L^-1 M G^-1 L, and G^-1 L = L^-T.": Linv @ M,
        }
        hint = _first_wrong(A_w, typical, 1e-9)
        return (f"{name}: wrong A_w with {_dims(lead)}, r={r} (seed {seed}): max abs error "
                f"{(A_w - want).abs().max():.3g}.{hint}")

    _over_leads(name, leading_dims(SECTION6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 4. power filter
def _power_filter_inputs(g, lead, r, P, n):
    G = _spd(g, lead, r)
    M = 1.5 * torch.randn(*lead, r, r, generator=g, dtype=torch.float64) / r ** 0.5  # sigma_max(A_w) often above 1
    C = torch.randn(*lead, P, r, generator=g, dtype=torch.float64)
    q = torch.randn(*lead, n, r, generator=g, dtype=torch.float64)
    return G, M, C, q


@checker()
def check_power_filter(fn) -> None:
    """Check ``fn(G, M, C, q, K, gamma, eta)`` against the library's readout with the exact spectral norm, values
    and gradients (the spectral scale carries no gradient), K = 0, 1, 2, for no, one and two leading dims and
    section 6's call (three leading dims, K = 1, gamma = eta = 1)."""
    name = "power_filter"
    s6 = SECTION6
    sizes = {(): (4, 3, 2), (3,): (5, 2, 3), (2, 3): (3, 2, 1), s6["lead"]: (s6["r"], s6["P"], s6["T"])}

    def trial(lead):
        r, P, n = sizes[lead]
        runs = [(1, 1.0, 1.0)] if lead == s6["lead"] else [(K, 0.8, 1.3) for K in (1, 2, 0)]
        for K, gamma, eta in runs:
            g, seed = fresh_generator()
            G, M, C, q = _power_filter_inputs(g, lead, r, P, n)
            Mg, qg = M.clone().requires_grad_(True), q.clone().requires_grad_(True)
            out = expect_tensor(name, _call(name, fn, G, Mg, C, qg, K, gamma, eta), (*lead, n, P), "y [..., n, P]")
            ref_M, ref_q = M.clone().requires_grad_(True), q.clone().requires_grad_(True)
            want = ska_readout(G, ref_M, C, ref_q, power_steps=K, eta=eta, gamma=gamma, spectral_norm=True,
                               spectral_iters=None)
            if not close(out.detach(), want.detach(), 1e-8):
                A = M @ torch.linalg.inv(G)
                _, A_w = _whitened_operator_solution(G, M)
                sig = torch.linalg.matrix_norm(A_w, ord=2).clamp_min(1.0)
                base = _ridge_readout_solution(G, C, (torch.linalg.matrix_power(A, K) @ q.mT).mT)  # C G^-1 A^K q
                typical = {
                    " The spectral scale is missing: multiply by eta * s^K, s = gamma / max(1, sigma_max(A_w)).":
                        eta * base,
                    " s is applied once: the filter applies A K times, so the scale is s^K.":
                        base * (eta * gamma / sig)[..., None, None] if K != 1 else None,
                    " s divides by sigma_max(A_w) even when it is below 1: s = gamma / max(1, sigma_max(A_w)).":
                        base * (eta * (gamma / torch.linalg.matrix_norm(A_w, ord=2)) ** K)[..., None, None],
                    " That uses G^-1 M, not A = M G^-1 (same eigenvalues, but it does not map k_{t-1} to k_t).":
                        _ridge_readout_solution(G, C, (torch.linalg.matrix_power(torch.linalg.solve(G, M), K)
                                                       @ q.mT).mT) * (eta * (gamma / sig) ** K)[..., None, None],
                }
                hint = _first_wrong(out.detach(), typical, 1e-8)
                return (f"{name}: wrong values with {_dims(lead)}, r={r}, K={K} (seed {seed}): max abs error "
                        f"{(out.detach() - want.detach()).abs().max():.3g}.{hint}")
            w = torch.randn(out.shape, generator=g, dtype=torch.float64)
            got_g = torch.autograd.grad((out * w).sum(), (Mg, qg), allow_unused=True)
            ref_g = torch.autograd.grad((want * w).sum(), (ref_M, ref_q), allow_unused=True)
            for label, a, b in zip(("M", "q"), got_g, ref_g):
                a = torch.zeros_like(M) if a is None else a  # K = 0 does not use M
                b = torch.zeros_like(M) if b is None else b
                if not close(a, b, 1e-7):
                    return (f"{name}: right values, but the gradient with respect to {label} differs with "
                            f"{_dims(lead)}, K={K} (seed {seed}). Stop the gradient through sigma_max, as the "
                            "paper does: torch.linalg.matrix_norm(A_w.detach(), ord=2).")
        return None

    _over_leads(name, leading_dims(s6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 5. exclusive prefix
@checker()
def check_exclusive_prefix_sum(fn) -> None:
    """Check ``fn(X0 [..., a, b], Xc [..., nc, a, b]) -> (prefix, total)`` for no, one and two leading dims and
    section 6's calls (X0 with two leading dims, ten chunks of r x r and P x r sums)."""
    name = "exclusive_prefix_sum"
    s6 = SECTION6
    B, H, nc6 = s6["lead"]
    cases = {(): [(5, 3, 3)], (3,): [(1, 2, 4), (6, 3, 2)], (2, 3): [(7, 4, 2)],
             (B, H): [(nc6, s6["r"], s6["r"]), (nc6, s6["P"], s6["r"])]}

    def trial(lead):
        for nc, a, b in cases[lead]:
            g, seed = fresh_generator()
            X0 = torch.randn(*lead, a, b, generator=g, dtype=torch.float64)
            Xc = torch.randn(*lead, nc, a, b, generator=g, dtype=torch.float64)
            out = _tuple_of(name, _call(name, fn, X0, Xc), 2, "(prefix, total)")
            prefix = expect_tensor(name, out[0], (*lead, nc, a, b), "prefix [..., nc, a, b]")
            total = expect_tensor(name, out[1], (*lead, a, b), "total [..., a, b]")
            csum = torch.cumsum(Xc, dim=len(lead))  # over the chunks, computed here from the left
            want_p = X0[..., None, :, :] + csum - Xc
            want_t = X0 + Xc.sum(len(lead))
            if close(prefix, want_p, 1e-10) and close(total, want_t, 1e-10):
                continue
            if close(prefix, want_p, 1e-10):
                return (f"{name}: the prefix is right, the total is not, with {_dims(lead)} (seed {seed}): the "
                        "state after the last chunk is X0 plus every chunk.")
            typical = {
                " Each chunk reads its own sums too (an inclusive cumsum): chunk c may read only the chunks before it.":
                    X0[..., None, :, :] + csum,
                " X0 (what the state already held before this call) is missing.": want_p - X0[..., None, :, :],
                " That is the chunks' own sums: chunk c reads the sum of every chunk before it.": Xc,
            }
            hint = _first_wrong(prefix, typical, 1e-10)
            return (f"{name}: wrong prefix with {_dims(lead)}, nc={nc} (seed {seed}): max abs error "
                    f"{(prefix - want_p).abs().max():.3g}.{hint}")
        return None

    _over_leads(name, leading_dims((B, H)), trial)
    return passed(name)
