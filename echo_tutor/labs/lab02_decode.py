"""Lab 02, exercise 8 (open-ended): the checker of ``ska_step``, one token of SKA's token-causal decode with
``G^-1`` kept by Sherman-Morrison updates, streamed over whole sequences against the library's token-mode
forward, with the typical mistakes it names (see :mod:`echo_tutor.labs.lab02`, which re-exports it)."""

from __future__ import annotations

import torch

from ..ska import ska_chunked
from . import checker, close, expect_tensor, fresh_generator, leading_dims, passed
from .lab02_common import _call, _dims, _over_leads, _ska_step_solution, _tuple_of, _WatchOps

__all__ = ["check_ska_step", "STEP_DRIFT_LEAD"]


# ---------------------------------------------------------------------------------------------- 8. the decode step
def _ska_step_variant(kind: str):
    """A typical wrong decode step, for the checker's hints."""

    def step(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
        if state is None:
            r, P, lead = k_t.shape[-1], v_t.shape[-1], k_t.shape[:-1]
            eye = torch.eye(r, dtype=k_t.dtype)
            state = ((eye / eps).expand(*lead, r, r), k_t.new_zeros(*lead, r, r), k_t.new_zeros(*lead, P, r),
                     torch.zeros_like(k_t))
        G_inv, M, C, k_prev = state
        b = beta_t[..., None]
        if kind == "read_first":
            y = _ska_step_solution((G_inv, M, C, k_prev), k_t, v_t, q_t, torch.zeros_like(beta_t), K, eps, eta)[0]
            return y, _ska_step_solution(state, k_t, v_t, q_t, beta_t, K, eps, eta)[1]
        g = (G_inv @ k_t[..., None])[..., 0]
        a = torch.ones_like(b) if kind == "no_beta_rank1" else b
        denom = 1.0 + a * (k_t * g).sum(-1, keepdim=True)
        outer = g[..., :, None] * g[..., None, :]
        if kind == "sign":
            G_new = G_inv + (a / denom)[..., None] * outer
        elif kind == "no_denominator":
            G_new = G_inv - a[..., None] * outer
        else:
            G_new = G_inv - (a / denom)[..., None] * outer
        M_new = M + b[..., None] * (k_t[..., :, None] * k_prev[..., None, :])
        C_new = C + b[..., None] * (v_t[..., :, None] * k_t[..., None, :])
        u = q_t
        for _ in range(0 if kind == "no_power" else K):
            u = (M_new @ (G_new @ u[..., None]))[..., 0]
        y = eta * (C_new @ (G_new @ u[..., None]))[..., 0]
        return y, (G_new, M_new, C_new, k_prev if kind == "k_prev_kept" else k_t)

    return step


_STEP_MISTAKES = {
    "sign": " Wrong sign in the Sherman-Morrison update: adding a key to G shrinks G^-1, "
            "(G + b k k^T)^-1 = G^-1 - b g g^T / (1 + b k^T g) with g = G^-1 k.",
    "no_beta_rank1": " beta_t is missing from the rank-1 update of G^-1 (M and C have it): G grows by beta_t k_t k_t^T.",
    "no_denominator": " The Sherman-Morrison denominator 1 + beta_t k_t^T G^-1 k_t is missing.",
    "read_first": " You read before writing token t: that is what chunk mode with S = 1 computes (position t reads "
                  "tokens < t). Decoding writes token t first, then reads (mode='token').",
    "k_prev_kept": " The previous key is never updated: return k_t as the new k_prev, so that M pairs k_{t+1} with k_t.",
    "no_power": " K is ignored: push the query K times through A = M G^-1 (K matrix-vector pairs) before the readout.",
}
_STEP_FORBID = ("inv", "inv_ex", "inverse", "pinv", "pinverse", "tensorinv", "solve", "solve_ex", "tensorsolve",
                "solve_triangular", "triangular_solve", "cholesky", "cholesky_ex", "cholesky_solve", "cholesky_inverse",
                "lstsq", "lu_factor", "lu_solve", "ldl_factor", "ridge_readout", "power_filter", "whitened_operator",
                "kernel_ridge_readout")
STEP_DRIFT_LEAD = (2,)  # the float32 drift cell of section 8 streams two heads


def _stream(step, k, v, q, beta, K, eps, eta, call=None):
    """Stream ``[..., T, *]`` inputs token by token through ``step``; returns (y [..., T, P], last state)."""
    state, ys = None, []
    for t in range(k.shape[-2]):
        args = (state, k[..., t, :], v[..., t, :], q[..., t, :], beta[..., t], K, eps, eta)
        y, state = step(*args) if call is None else call(*args)
        ys.append(y)
    return torch.stack(ys, -2), state


@checker(forbid=_STEP_FORBID)
def check_ska_step(fn) -> None:
    """Check ``fn(state, k_t, v_t, q_t, beta_t, K, eps, eta) -> (y_t, state)`` streamed over whole sequences
    against the library's chunk-parallel forward in token mode (``ska_chunked(..., mode="token")``, spectral
    norm off), K = 0 and 1, float64, no, one and two leading dims and section 8's shape; the state must be
    ``(G^-1, M, C, k_prev)``; refused: an inverse, solve or factorisation, or a product of two r x r matrices,
    inside the step."""
    name = "ska_step"
    r, P, T = 5, 3, 11

    def trial(lead):
        for K, eps in ((0, 1e-3), (1, 0.2)):
            g, seed = fresh_generator()
            k = torch.nn.functional.normalize(torch.randn(*lead, T, r, generator=g, dtype=torch.float64), dim=-1)
            v = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
            q = torch.randn(*lead, T, r, generator=g, dtype=torch.float64)
            beta = torch.rand(*lead, T, generator=g, dtype=torch.float64)
            beta[..., 3] = 0.0  # a token whose gate is shut writes nothing
            eta = 1.3

            def call(state, *args):
                out = _call(name, fn, state, *args, watch=_WatchOps(r, no_factorisation=True, no_rr_product=True))
                y, new = _tuple_of(name, out, 2, "(y_t, state)")
                expect_tensor(name, y, (*lead, P), "y_t [..., P]")
                _tuple_of(name, new, 4, "the state (G_inv, M, C, k_prev)")
                return y, new

            ys, end = _stream(None, k, v, q, beta, K, eps, eta, call=call)
            # the library's chunk-parallel forward, token-causal: heads = the flattened leading dims
            N = k[..., 0, 0].numel()
            flat = lambda x: x.reshape(N, T, -1).transpose(0, 1)[None]  # noqa: E731   [1, T, N, .]
            b_flat = beta.reshape(N, T).T[None]
            ref = dict(power_steps=K, eps=eps, eta=eta, spectral_norm=False)
            y_ref, st = ska_chunked(flat(q), flat(k), flat(v), b_flat, mode="token", chunk_size=4, **ref)
            unflat = lambda y: y[0].transpose(0, 1).reshape(*lead, T, -1)  # noqa: E731
            want = unflat(y_ref)
            G_inv, M, C, k_prev = end
            if close(ys, want, 1e-9):
                shapes = [(r, r), (r, r), (P, r), (r,)]
                wants = [torch.linalg.inv(st.G[0]), st.M[0], st.C[0], st.k_prev[0]]
                for i, (label, got, shape, ref_x) in enumerate(zip(("G_inv", "M", "C", "k_prev"), end, shapes, wants)):
                    expect_tensor(name, got, (*lead, *shape), f"{label} [..., {', '.join(map(str, shape))}]")
                    if not close(got, ref_x.reshape(*lead, *shape), 1e-8):
                        hint = next((msg for kind, msg in _STEP_MISTAKES.items() if close(got, _stream(
                            _ska_step_variant(kind), k, v, q, beta, K, eps, eta)[1][i], 1e-8)), "")
                        what = "G^-1 (the inverse of eps I + sum_t beta_t k_t k_t^T)" if label == "G_inv" else label
                        return (f"{name}: right outputs, but the state's {label} after {T} tokens is not {what} "
                                f"with {_dims(lead)}, K={K} (seed {seed}). Keep (G^-1, M, C, k_prev) in the "
                                f"state.{hint}")
                continue
            bad = (ys - want).abs().amax(-1).reshape(-1, T).amax(0)  # per token
            first = int(torch.argmax((bad > 1e-9 * (1 + float(want.abs().max()))).to(torch.int8)))
            hint = ""
            y_s1 = unflat(ska_chunked(flat(q), flat(k), flat(v), b_flat, mode="chunk", chunk_size=1, **ref)[0])
            if close(ys, y_s1, 1e-9):
                hint = _STEP_MISTAKES["read_first"]
            else:
                for kind, msg in _STEP_MISTAKES.items():
                    if close(ys, _stream(_ska_step_variant(kind), k, v, q, beta, K, eps, eta)[0], 1e-9):
                        hint = msg
                        break
            return (f"{name}: the output first differs from the library's token-mode forward at token {first} of "
                    f"{T} with {_dims(lead)}, K={K}, eps={eps} (seed {seed}): max abs error "
                    f"{(ys - want).abs().max():.3g}.{hint}")
        return None

    _over_leads(name, leading_dims(STEP_DRIFT_LEAD), trial)
    return passed(name)
