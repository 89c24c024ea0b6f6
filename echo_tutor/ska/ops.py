"""The SKA building blocks that ``kernels/echo_kernels/ska`` implements in Triton, as plain PyTorch "twins".

Each function here has exactly the signature of its kernel (``echo_kernels.ska.chunk_stats`` etc.): the
kernels are tested against these, and :func:`ska_chunked_ops` composes them into the chunk-mode
forward that ``echo_kernels.ska.forward`` runs. Heads are flattened into the leading dim: ``N = B * H``.

* :func:`chunk_stats` -- per-chunk G, M (the chunk-boundary term included through the lagged keys)
  and C: ``[N, nc, r, r]`` / ``[N, nc, P, r]``.
* :func:`exclusive_prefix` -- what chunk c reads: the state plus the sum over chunks before c (from
  ``linalg``, shared with the reference).
* :func:`readout_inverse` -- after the factorisation: ``y = scale * C G^-1 (M G^-1)^K q`` for a block
  of queries, from ``G^-1`` (the K+2 products: A^T = G^-1 M^T and B^T = G^-1 C^T, then K + 1 applications).
* :func:`decode_step` -- one token: rank-1 updates of G, M, C, k_prev and of ``G^-1`` (Sherman-Morrison),
  then the readout, all matrix-vector work.
* :func:`stats_prefix` / :func:`stats_prefix_backward`, :func:`readout_forward` / :func:`readout_backward`
  -- the twins of the fused kernels' forward and backward steps (``echo_kernels.ska.fused``), which also
  stand in for a kernel a GPU lacks the resources to run.
"""

from __future__ import annotations

import sys

import torch

from ..errors import BadArgumentError
from .linalg import exclusive_prefix, safe_cholesky, sigma_max, whiten
from .reference import SKAState, prepare_inputs

__all__ = ["chunk_stats", "exclusive_prefix", "readout_inverse", "decode_step", "inverse_gram", "spectral_scale",
           "broadcast_heads", "chunk_inputs", "ska_chunked_ops", "stats_prefix", "stats_prefix_backward",
           "readout_forward", "readout_backward"]


def chunk_stats(ok: torch.Tensor, kk: torch.Tensor, k_lag: torch.Tensor, ov: torch.Tensor, chunk_size: int):
    """Per-chunk statistics.

    Args:
        ok: ``[N, T, r]`` write-weighted keys ``beta_t w_t k_t``; kk: ``[N, T, r]`` keys;
        k_lag: ``[N, T, r]`` lagged keys ``w_{t-1} k_{t-1}`` (the first from the state);
        ov: ``[N, T, P]`` write-weighted values. ``T`` a multiple of ``chunk_size``.
    Returns:
        Gc, Mc ``[N, nc, r, r]`` and Cc ``[N, nc, P, r]`` (sums over each chunk's tokens).
    """
    N, T, r = kk.shape
    nc = T // chunk_size
    sh = lambda x: x.reshape(N, nc, chunk_size, x.shape[-1])  # noqa: E731
    ok, kk, k_lag, ov = map(sh, (ok, kk, k_lag, ov))
    Gc = torch.einsum("ncsi,ncsj->ncij", ok, kk)
    Mc = torch.einsum("ncsi,ncsj->ncij", ok, k_lag)
    Cc = torch.einsum("ncsp,ncsj->ncpj", ov, kk)
    return Gc, Mc, Cc


def readout_inverse(Ginv: torch.Tensor, M: torch.Tensor, C: torch.Tensor, q: torch.Tensor, power_steps: int,
                    scale: torch.Tensor) -> torch.Tensor:
    """``y = scale * C G^-1 (M G^-1)^K q`` from the inverse Gram.

    Args:
        Ginv, M: ``[N, r, r]``; C: ``[N, P, r]``; q: ``[N, n, r]`` (rows are queries); scale: ``[N]``.
    Returns:
        y: ``[N, n, P]``.
    """
    At = Ginv @ M.transpose(-1, -2)            # (M G^-1)^T = G^-1 M^T  (G symmetric)
    Bt = Ginv @ C.transpose(-1, -2)            # (C G^-1)^T             [N, r, P]
    u = q
    for _ in range(power_steps):
        u = u @ At
    return (u @ Bt) * scale[:, None, None]


def decode_step(G, Ginv, M, C, k_prev, q, k, v, omega, w, power_steps: int, scale):
    """One token-causal SKA step on flattened heads.

    Args:
        G, Ginv, M: ``[N, r, r]``; C: ``[N, P, r]``; k_prev, q, k: ``[N, r]``; v: ``[N, P]``;
        omega (``beta_t w_t``), w, scale: ``[N]``.
    Returns:
        ``(y [N, P], G, Ginv, M, C, k_prev)`` after absorbing the token; ``y`` reads the updated
        statistics. ``Ginv`` follows by Sherman-Morrison, exact in exact arithmetic. The rank-1 term is
        formed as ``c (g g^T)``, exactly symmetric in float32 (``(c g) g^T`` is not, and its asymmetry
        accumulates: lab 02, section 8, measures both); over very long decodes refresh it from G with
        :func:`inverse_gram`.
    """
    a = omega[:, None]
    G = G + a[..., None] * k[:, :, None] * k[:, None, :]
    M = M + a[..., None] * k[:, :, None] * k_prev[:, None, :]
    C = C + a[..., None] * v[:, :, None] * k[:, None, :]
    g = (Ginv @ k[:, :, None])[..., 0]                                  # G^-1 k
    denom = 1.0 + a[:, 0] * (k * g).sum(-1)
    Ginv = Ginv - (a[:, 0] / denom)[:, None, None] * (g[:, :, None] * g[:, None, :])  # c (g g^T): symmetric
    k_prev = w[:, None] * k
    u = q
    for _ in range(power_steps):
        u = (M @ (Ginv @ u[:, :, None]))[..., 0]
    y = (C @ (Ginv @ u[:, :, None]))[..., 0] * scale[:, None]
    return y, G, Ginv, M, C, k_prev


def inverse_gram(G: torch.Tensor) -> torch.Tensor:
    """``G^-1`` through a (jittered if needed) Cholesky factorisation."""
    return torch.cholesky_inverse(safe_cholesky(G))


def spectral_scale(G: torch.Tensor, M: torch.Tensor, power_steps: int, gamma, spectral_iters) -> torch.Tensor:
    """``s^K`` with ``s = gamma / max(1, sigma_max(L^-1 M L^-T))``, per matrix: ``[...]``."""
    return (gamma / sigma_max(whiten(M, safe_cholesky(G)), spectral_iters).clamp_min(1.0)) ** power_steps


def broadcast_heads(x, B: int, H: int) -> torch.Tensor:
    """A per-head parameter (a float or an ``[H]`` tensor) broadcast to the flattened heads ``[B*H]``."""
    if isinstance(x, torch.Tensor):
        return x.reshape(1, -1).expand(B, H).reshape(-1)
    return torch.full((B * H,), float(x))


def chunk_inputs(p, chunk_size: int):
    """The flattened, padded per-token inputs of chunk mode, from ``prepare_inputs``'s result ``p``.

    Returns ``((ok, kk, k_lag, ov, q), kw_last, nc)``: five ``[N, T', *]`` tensors with ``N = B * H`` and
    ``T'`` = T rounded up to a multiple of ``chunk_size`` (zero rows add nothing to the statistics), the
    last weighted key ``w_T k_T`` ``[B, H, r]`` (the next call's ``k_prev``) and the chunk count ``nc``."""
    B, T, H, _ = p.k.shape
    kw = p.w[..., None] * p.k
    k_lag = torch.cat([p.state.k_prev[:, None], kw[:, :-1]], dim=1)
    ok = p.omega[..., None] * p.k
    ov = p.omega[..., None] * p.v
    pad = (-T) % chunk_size

    def flat(x):
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)).permute(0, 2, 1, 3)
        return x.reshape(B * H, T + pad, x.shape[-1]).contiguous()

    return tuple(map(flat, (ok, p.k, k_lag, ov, p.q))), kw[:, -1], (T + pad) // chunk_size


def ska_chunked_ops(q, k, v, beta=None, *, power_steps=2, eps=1e-3, eta=1.0, gamma=1.0, spectral_norm=False,
                    spectral_iters=6, mode="chunk", chunk_size=64, weights=None, state=None, ops=None):
    """Chunk-mode SKA composed from the ops above (``ops`` = a module with the same four functions:
    this module, or ``echo_kernels.ska``). Same arguments and results as
    :func:`~echo_tutor.ska.reference.ska_chunked` with ``mode="chunk"``; the readout uses ``G^-1``
    instead of triangular solves, so results agree to rounding, not bit for bit."""

    ops = ops or sys.modules[__name__]
    if mode != "chunk":
        raise BadArgumentError(f"ska_chunked_ops implements mode='chunk' only, got mode={mode!r}")
    p = prepare_inputs(q, k, v, beta, weights, state, power_steps=power_steps, eps=eps, eta=eta, gamma=gamma,
                 mode=mode, chunk_size=chunk_size, spectral_iters=spectral_iters)
    st = p.state
    B, T, H, r = p.k.shape
    P = p.v.shape[-1]
    S = chunk_size
    (okf, kkf, klf, ovf, qf), kw_last, nc = chunk_inputs(p, S)
    Gc, Mc, Cc = ops.chunk_stats(okf, kkf, klf, ovf, S)
    Gx, G_end = ops.exclusive_prefix(st.G.reshape(B * H, r, r), Gc)
    Mx, M_end = ops.exclusive_prefix(st.M.reshape(B * H, r, r), Mc)
    Cx, C_end = ops.exclusive_prefix(st.C.reshape(B * H, P, r), Cc)
    Gx2, Mx2, Cx2 = Gx.reshape(-1, r, r), Mx.reshape(-1, r, r), Cx.reshape(-1, P, r)
    Ginv = inverse_gram(Gx2)
    scale = broadcast_heads(eta, B, H).to(Gx.dtype).to(Gx.device)[:, None].expand(B * H, nc).reshape(-1)
    if spectral_norm and power_steps > 0:
        g = broadcast_heads(gamma, B, H).to(Gx.dtype).to(Gx.device)[:, None].expand(B * H, nc).reshape(-1)
        scale = scale * spectral_scale(Gx2, Mx2, power_steps, g, spectral_iters)
    y = ops.readout_inverse(Ginv, Mx2, Cx2, qf.reshape(B * H * nc, S, r), power_steps, scale)  # [N*nc, S, P]
    y = y.reshape(B, H, nc * S, P)[:, :, :T].permute(0, 2, 1, 3)
    new = SKAState(G_end.reshape(B, H, r, r), M_end.reshape(B, H, r, r), C_end.reshape(B, H, P, r), kw_last,
                   st.count + T, st.key_scale)
    return y.to(p.out_dtype), new


# ---------------------------------------------------------------------------------------------- the fused kernels' twins
def stats_prefix(ok, kk, k_lag, ov, G0, M0, C0, chunk_size: int):
    """Twin of ``echo_kernels.ska.stats_prefix``: :func:`chunk_stats` then :func:`exclusive_prefix` of each
    statistic -> ``(Gx, Mx, Cx, Gt, Mt, Ct)`` (what each chunk reads ``[N, nc, ...]``, the totals ``[N, ...]``)."""
    stats = chunk_stats(ok, kk, k_lag, ov, chunk_size)
    (Gx, Gt), (Mx, Mt), (Cx, Ct) = (exclusive_prefix(x0, xc) for x0, xc in zip((G0, M0, C0), stats))
    return Gx, Mx, Cx, Gt, Mt, Ct


def stats_prefix_backward(ok, kk, k_lag, ov, dGx, dMx, dCx, dGt, dMt, dCt, chunk_size: int):
    """The gradients of :func:`stats_prefix` (the twin of the fused backward walk).

    Chunk c's sums reach the prefix of every later chunk and the total, so they receive
    ``dXt + sum_{c' > c} dXx[c']``; the state receives ``dXt + sum_c dXx[c]``. Returns
    ``(dok, dkk, dk_lag, dov, dG0, dM0, dC0)`` with the shapes of the inputs."""
    N, T, _ = kk.shape
    nc = T // chunk_size

    def through(dx, dt):
        later = dx.flip(1).cumsum(1).flip(1) - dx
        return dt[:, None] + later, dt + dx.sum(1)

    (dGc, dG0), (dMc, dM0), (dCc, dC0) = through(dGx, dGt), through(dMx, dMt), through(dCx, dCt)
    okc, kkc, klc, ovc = (x.reshape(N, nc, chunk_size, x.shape[-1]) for x in (ok, kk, k_lag, ov))
    dok = torch.einsum("ncsj,ncij->ncsi", kkc, dGc) + torch.einsum("ncsj,ncij->ncsi", klc, dMc)
    dkk = torch.einsum("ncsi,ncij->ncsj", okc, dGc) + torch.einsum("ncsp,ncpj->ncsj", ovc, dCc)
    dkl = torch.einsum("ncsi,ncij->ncsj", okc, dMc)
    dov = torch.einsum("ncsj,ncpj->ncsp", kkc, dCc)
    flat = lambda x: x.reshape(N, T, x.shape[-1])  # noqa: E731
    return flat(dok), flat(dkk), flat(dkl), flat(dov), dG0, dM0, dC0


def readout_forward(G, M, C, q, power_steps: int, eta, gamma=None, spectral_iters: int | None = None):
    """Twin of the fused readout's forward: ``(y, G^-1, scale, sigma)``.

    G, M ``[Nc, r, r]``, C ``[Nc, P, r]``, q ``[Nc, S, r]``, eta ``[Nc]``; with ``gamma [Nc]`` the scale is
    ``eta * (gamma / max(1, sigma))^K``, sigma the largest singular value of ``L^-1 M L^-T`` by
    ``spectral_iters`` power iterations (detached), else ``eta`` (and sigma 1)."""
    L = safe_cholesky(G)
    Ginv = torch.cholesky_inverse(L)
    sig = torch.ones_like(eta)
    scale = eta
    if gamma is not None:
        sig = sigma_max(whiten(M, L), spectral_iters)
        scale = eta * (gamma / sig.clamp_min(1.0)) ** power_steps
    return readout_inverse(Ginv, M, C, q, power_steps, scale), Ginv, scale, sig


def readout_backward(Ginv, M, C, q, scale, dy, power_steps: int):
    """The gradients of ``y = scale * C G^-1 (M G^-1)^K q`` (the twin of the fused readout's backward).

    Ginv, M ``[Nc, r, r]``, C ``[Nc, P, r]``, q ``[Nc, S, r]``, scale ``[Nc]``, dy ``[Nc, S, P]`` ->
    ``(dG, dM, dC, dq, dscale)``; ``dG = -G^-1 dG^-1 G^-1``, symmetrised (G is symmetric)."""
    At, Bt = Ginv @ M.transpose(-1, -2), Ginv @ C.transpose(-1, -2)
    us = [q]
    for _ in range(power_steps):
        us.append(us[-1] @ At)
    ds = (dy * (us[-1] @ Bt)).sum((-1, -2))
    dys = dy * scale[:, None, None]
    dBt, du = us[-1].transpose(-1, -2) @ dys, dys @ Bt.transpose(-1, -2)
    dAt = torch.zeros_like(At)
    for k in reversed(range(power_steps)):
        dAt = dAt + us[k].transpose(-1, -2) @ du
        du = du @ At.transpose(-1, -2)
    dG = -Ginv @ (dAt @ M + dBt @ C) @ Ginv
    return 0.5 * (dG + dG.transpose(-1, -2)), dAt.transpose(-1, -2) @ Ginv, dBt.transpose(-1, -2) @ Ginv, du, ds
