"""Spectral Koopman Attention (SKA): two pure-PyTorch references that compute the same thing.

Legend, paper symbol -> variable (Sridhar & Johansen 2026, "Echo", arXiv 2605.06997):

    B, T, H        batch, length, SKA heads
    r              rank: key/query width per head            q, k  [B, T, H, r]
    P              value width per head                       v     [B, T, H, P]
    beta_t         write gate (1 if no gate)                  beta  [B, T, H]
    w_t            prefix / action mask weight (1 if none)    weights [B, T, H]
    G              eps*I + sum_t beta_t w_t k_t k_t^T         state.G  [B, H, r, r]
    M              sum_t beta_t w_t w_{t-1} k_t k_{t-1}^T     state.M  [B, H, r, r]
    C              sum_t beta_t w_t v_t k_t^T                 state.C  [B, H, P, r]
    A = M G^-1     Koopman (DMD) one-step key predictor
    A_w            L^-1 M L^-T with G = L L^T (similar to A)
    K              power-filter order                         power_steps
    s              gamma / max(1, sigma_max(A_w)) if spectral_norm else 1
    y_t            eta * s^K * C G^-1 (M G^-1)^K q_t          y [B, T, H, P]

``ska_recurrent`` walks the tokens one by one with rank-1 updates of (G, M, C): slow and obviously
right, the ground truth. ``ska_chunked`` computes the same outputs with einsums over blocks of
``chunk_size`` tokens: per-chunk statistics, a prefix sum over chunks, one Cholesky per
(batch, chunk, head) in chunk mode. Tests hold the two equal, forward and backward.

Two causal modes:

* ``mode="token"``: token t reads statistics over tokens ``<= t`` (decoding; the ground truth).
* ``mode="chunk"``: token t reads statistics over the chunks strictly before its own chunk (the paper's
  training form). Chunk 0 of a fresh sequence therefore outputs zeros, and a binding is recalled only
  once it sits in an earlier chunk. Chunks are aligned to the absolute token count of ``state``.

Statistics and linear algebra run in float32 (float64 when the inputs are float64); the output is cast
back to ``v``'s dtype. Keys are used as given: normalising them is the layer's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import (
    check_choice,
    check_int,
    check_per_head,
    check_positive,
    check_same,
    check_tensor,
)
from ..errors import BadArgumentError
from .linalg import exclusive_prefix, safe_cholesky, sigma_max, whiten
from .state import SKAState, prefix_statistics, write_token

__all__ = ["SKAState", "PreparedInputs", "prepare_inputs", "ska_recurrent", "ska_chunked", "ska_readout"]  # SKAState: state.py


# --------------------------------------------------------------------------------------------------
# The readout
# --------------------------------------------------------------------------------------------------
def _per_head(x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a scalar or ``[H]`` parameter against matrices ``[..., H, a, b]``."""
    if isinstance(x, torch.Tensor):
        x = x.to(like.dtype)
        return x[..., None, None] if x.ndim == 1 else x
    return x


def ska_readout(
    G: torch.Tensor,
    M: torch.Tensor,
    C: torch.Tensor,
    q: torch.Tensor,
    *,
    power_steps: int = 2,
    eta: torch.Tensor | float = 1.0,
    gamma: torch.Tensor | float = 1.0,
    spectral_norm: bool = False,
    spectral_iters: int | None = 6,
) -> torch.Tensor:
    """Read ``n`` queries out of one fitted operator per head.

    Args:
        G, M: ``[..., H, r, r]``; C: ``[..., H, P, r]``; q: ``[..., H, n, r]``.
        eta, gamma: floats or ``[H]`` tensors.
    Returns:
        y: ``[..., H, n, P]`` with ``y = eta * s^K * C G^-1 (M G^-1)^K q``.
    """
    L = safe_cholesky(G)  # G = L L^T
    u = q.transpose(-1, -2)  # [..., H, r, n]
    # (1) the power filter: K applications of the Koopman operator A = M G^-1 to the query
    for _ in range(power_steps):
        u = M @ torch.cholesky_solve(u, L)
    # (2) the ridge readout B_v = C G^-1
    y = C @ torch.cholesky_solve(u, L)  # [..., H, P, n]
    scale = _per_head(eta, y)
    # (3) spectral normalisation: s = gamma / max(1, sigma_max(A_w)), A_w = L^-1 M L^-T (similar to A)
    if spectral_norm and power_steps > 0:
        s = _per_head(gamma, y) / sigma_max(whiten(M, L), spectral_iters).clamp_min(1.0)[..., None, None]
        scale = scale * s**power_steps
    return (scale * y).transpose(-1, -2)


# --------------------------------------------------------------------------------------------------
# Argument handling shared by both references
# --------------------------------------------------------------------------------------------------
@dataclass
class PreparedInputs:
    q: torch.Tensor  # [B, T, H, r]
    k: torch.Tensor  # [B, T, H, r]
    v: torch.Tensor  # [B, T, H, P]
    omega: torch.Tensor  # [B, T, H]  beta_t * w_t: the write weight of G and C
    w: torch.Tensor  # [B, T, H]  the mask weight alone (for k_prev)
    state: SKAState
    out_dtype: torch.dtype


def prepare_inputs(q, k, v, beta, weights, state, *, power_steps, eps, eta, gamma, mode, chunk_size, spectral_iters):
    """The references' (and their kernels') shared argument checks and conversions: every argument checked
    with a ``BadArgumentError``, the inputs in the compute dtype, the write weight ``omega = beta * w``, a fresh
    state if none was given. Returns a :class:`PreparedInputs`."""
    check_tensor("q", q, 4, layout="[B, T, H, r]")
    check_tensor("k", k, 4, layout="[B, T, H, r]")
    check_tensor("v", v, 4, layout="[B, T, H, P]")
    B, T, H, r = k.shape
    if T < 1:
        raise BadArgumentError(f"k must hold at least one token (T >= 1), got shape {tuple(k.shape)}")
    if r < 1:
        raise BadArgumentError(f"k must have rank r >= 1 (its last dim), got shape {tuple(k.shape)}")
    check_same("q", q, (0, 1, 2, 3), (B, T, H, r), "[B, T, H, r]")
    check_same("v", v, (0, 1, 2), (B, T, H), "[B, T, H, P]")
    if v.shape[-1] < 1:
        raise BadArgumentError(f"v must have a value width P >= 1, got shape {tuple(v.shape)}")
    check_int("power_steps", power_steps, min_value=0)
    check_positive("eps", eps)
    check_choice("mode", mode, ("token", "chunk"))
    check_int("chunk_size", chunk_size, min_value=1)
    if spectral_iters is not None:
        check_int("spectral_iters", spectral_iters, min_value=1)
    check_per_head("eta", eta, H)
    check_per_head("gamma", gamma, H)
    cdtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) else torch.float32
    ones = torch.ones(B, T, H, dtype=cdtype, device=k.device)
    if beta is not None:
        check_tensor("beta", beta, 3, layout="[B, T, H]")
        check_same("beta", beta, (0, 1, 2), (B, T, H), "[B, T, H]")
    if weights is not None:
        check_tensor("weights", weights, 3, layout="[B, T, H]")
        check_same("weights", weights, (0, 1, 2), (B, T, H), "[B, T, H]")
    w = ones if weights is None else weights.to(cdtype)
    omega = w if beta is None else beta.to(cdtype) * w
    P = v.shape[-1]
    if state is None:
        state = SKAState.zeros(B, H, r, P, eps=eps, dtype=cdtype, device=k.device)
    else:
        if not isinstance(state, SKAState):
            raise BadArgumentError(f"state must be an SKAState or None, got {type(state).__name__}")
        if state.shape != (B, H, r, P):
            raise BadArgumentError(f"state has (B, H, r, P) = {state.shape}, expected {(B, H, r, P)} from q, k, v")
        if mode == "chunk" and state.count % chunk_size:
            raise BadArgumentError(
                f"state.count={state.count} is not a multiple of chunk_size={chunk_size}: in mode='chunk' a call "
                "must start on a chunk boundary (decode token by token with mode='token')"
            )
        state = state.to(dtype=cdtype)
    return PreparedInputs(q.to(cdtype), k.to(cdtype), v.to(cdtype), omega, w, state, v.dtype)


# --------------------------------------------------------------------------------------------------
# Reference 1: token by token (the ground truth)
# --------------------------------------------------------------------------------------------------
def ska_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor | None = None,
    *,
    power_steps: int = 2,
    eps: float = 1e-3,
    eta: torch.Tensor | float = 1.0,
    gamma: torch.Tensor | float = 1.0,
    spectral_norm: bool = False,
    spectral_iters: int | None = 6,
    mode: str = "token",
    chunk_size: int = 64,
    weights: torch.Tensor | None = None,
    state: SKAState | None = None,
) -> tuple[torch.Tensor, SKAState]:
    """SKA, one token at a time over the O(r^2) state (slow; the ground truth).

    Args:
        q, k: ``[B, T, H, r]`` queries and keys (used as given).
        v: ``[B, T, H, P]`` values.
        beta: ``[B, T, H]`` write gate in [0, 1], or None for 1.
        power_steps: K, the power-filter order. ``K = 0`` is exact causal ridge regression (mesa layer).
        eps: ridge strength, > 0 (``G`` starts at ``eps*I``).
        eta, gamma: output scale and spectral gain: floats or ``[H]`` tensors.
        spectral_norm: scale by ``s^K`` with ``s = gamma / max(1, sigma_max(A_w))``.
        spectral_iters: power iterations for ``sigma_max`` (paper: 6); None for the exact value.
        mode: ``"token"`` (statistics over tokens <= t) or ``"chunk"`` (over chunks before t's chunk).
        chunk_size: S, the chunk length of ``mode="chunk"``.
        weights: ``[B, T, H]`` prefix/action mask w_t (M's term gets ``w_t w_{t-1}``), or None for 1.
        state: an ``SKAState`` to continue from, or None for a fresh one.

    Returns:
        y: ``[B, T, H, P]`` in ``v``'s dtype, and the state after the last token.
    """
    p = prepare_inputs(q, k, v, beta, weights, state, power_steps=power_steps, eps=eps, eta=eta, gamma=gamma,
                 mode=mode, chunk_size=chunk_size, spectral_iters=spectral_iters)
    st = start = p.state
    G, M, C = st.G, st.M, st.C
    ro = dict(power_steps=power_steps, eta=eta, gamma=gamma, spectral_norm=spectral_norm, spectral_iters=spectral_iters)
    frozen = (G, M, C)  # the operator chunk-mode queries read: fixed at the start of each chunk
    ys = []
    for t in range(p.k.shape[1]):
        if mode == "chunk" and (start.count + t) % chunk_size == 0:
            frozen = (G, M, C)
        # rank-1 updates of the sufficient statistics (write weight beta_t w_t)
        st = write_token(st, p.k[:, t], p.v[:, t], p.omega[:, t], p.w[:, t])
        G, M, C = st.G, st.M, st.C
        Gr, Mr, Cr = (G, M, C) if mode == "token" else frozen
        q_t = p.q[:, t]  # [B, H, r]
        ys.append(ska_readout(Gr, Mr, Cr, q_t[:, :, None, :], **ro)[:, :, 0])  # [B, H, P]
    y = torch.stack(ys, dim=1)  # [B, T, H, P]
    return y.to(p.out_dtype), SKAState(G, M, C, st.k_prev, st.count, start.key_scale)


# --------------------------------------------------------------------------------------------------
# Reference 2: chunk-parallel
# --------------------------------------------------------------------------------------------------
def ska_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor | None = None,
    *,
    power_steps: int = 2,
    eps: float = 1e-3,
    eta: torch.Tensor | float = 1.0,
    gamma: torch.Tensor | float = 1.0,
    spectral_norm: bool = False,
    spectral_iters: int | None = 6,
    mode: str = "token",
    chunk_size: int = 64,
    weights: torch.Tensor | None = None,
    state: SKAState | None = None,
) -> tuple[torch.Tensor, SKAState]:
    """SKA over blocks of ``chunk_size`` tokens; same arguments and results as :func:`ska_recurrent`.

    ``mode="chunk"``: per-chunk statistics by einsum, an exclusive prefix sum over chunks, one Cholesky
    per (batch, chunk, head), every query of chunk c read against the operator of chunks < c.
    ``mode="token"``: per block, the inclusive prefix sums of the rank-1 terms give every token its own
    statistics; one batched Cholesky for the block's tokens. Memory is O(B S H r^2) per block.

    Shapes: q, k ``[B, T, H, r]``; v ``[B, T, H, P]``; beta, weights ``[B, T, H]``; y ``[B, T, H, P]``.
    """
    p = prepare_inputs(q, k, v, beta, weights, state, power_steps=power_steps, eps=eps, eta=eta, gamma=gamma,
                 mode=mode, chunk_size=chunk_size, spectral_iters=spectral_iters)
    st = p.state
    B, T, H, r = p.k.shape
    S = chunk_size
    ro = dict(power_steps=power_steps, eta=eta, gamma=gamma, spectral_norm=spectral_norm, spectral_iters=spectral_iters)

    # (1) the lagged keys w_{t-1} k_{t-1}; the first comes from the state, so chunk boundaries need no
    #     special case: M's boundary term k_first(c) k_last(c-1)^T is just one of the per-token terms
    kw = p.w[..., None] * p.k  # [B, T, H, r]
    k_lag = torch.cat([st.k_prev[:, None], kw[:, :-1]], dim=1)  # [B, T, H, r]
    ok = p.omega[..., None] * p.k  # beta_t w_t k_t   [B, T, H, r]
    ov = p.omega[..., None] * p.v  # beta_t w_t v_t   [B, T, H, P]

    # (2) pad to a whole number of chunks (padding has zero write weight and is cut off the output)
    pad = (-T) % S
    if pad:
        z = lambda x: torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))  # noqa: E731  pad the T axis
        ok, ov, kk, k_lag, qq = z(ok), z(ov), z(p.k), z(k_lag), z(p.q)
    else:
        kk, qq = p.k, p.q
    nc = (T + pad) // S
    chunks = lambda x: x.reshape(B, nc, S, *x.shape[2:])  # noqa: E731  [B, nc, S, H, .]
    ok, ov, kk, k_lag, qq = map(chunks, (ok, ov, kk, k_lag, qq))

    if mode == "chunk":
        # (3) per-chunk statistics
        Gc = torch.einsum("bcshi,bcshj->bchij", ok, kk)  # [B, nc, H, r, r]
        Mc = torch.einsum("bcshi,bcshj->bchij", ok, k_lag)  # [B, nc, H, r, r]
        Cc = torch.einsum("bcshp,bcshj->bchpj", ov, kk)  # [B, nc, H, P, r]
        # (4) exclusive prefix over chunks, plus what the state already holds
        (Gx, G), (Mx, M), (Cx, C) = (exclusive_prefix(X0, Xc) for X0, Xc in ((st.G, Gc), (st.M, Mc), (st.C, Cc)))
        # (5) one factorisation per (batch, chunk, head); all S queries of the chunk read it
        y = ska_readout(Gx, Mx, Cx, qq.permute(0, 1, 3, 2, 4), **ro)  # [B, nc, H, S, P]
        y = y.permute(0, 1, 3, 2, 4)  # [B, nc, S, H, P]
    else:
        G, M, C = st.G, st.M, st.C
        ys = []
        for c in range(nc):
            # (3') inclusive prefix sums of the rank-1 terms inside the block: statistics at every token
            Gt, Mt, Ct = prefix_statistics(G, M, C, ok[:, c], kk[:, c], k_lag[:, c], ov[:, c])  # [B, S, H, r, r], [B, S, H, P, r]
            ys.append(ska_readout(Gt, Mt, Ct, qq[:, c, :, :, None, :], **ro)[..., 0, :])  # [B, S, H, P]
            G, M, C = Gt[:, -1], Mt[:, -1], Ct[:, -1]
        y = torch.stack(ys, dim=1)  # [B, nc, S, H, P]
    y = y.reshape(B, nc * S, H, -1)[:, :T]
    k_prev = kw[:, -1]
    return y.to(p.out_dtype), SKAState(G, M, C, k_prev, st.count + T, st.key_scale)
