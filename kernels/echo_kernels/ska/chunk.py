"""SKA's chunk mode in Triton: per-chunk statistics, the prefix over chunks, the readout, and ``forward``.

Twins: :mod:`echo_tutor.ska.ops` (same signatures; heads flattened, ``N = B * H``). See the package doc.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from echo_tutor.errors import BadArgumentError
from echo_tutor.ska.reference import ska_chunked

from .fused import fused_forward
from .fused_kernels import block_size

__all__ = ["chunk_stats", "exclusive_prefix", "readout_inverse", "forward", "block_size"]




# ---------------------------------------------------------------------------------------------- (a)
@triton.jit
def _chunk_stats_kernel(ok_ptr, kk_ptr, kl_ptr, ov_ptr, g_ptr, m_ptr, c_ptr, T, r, P, nc,
                        S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    s = tl.arange(0, S)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    rows = c * S + s
    base = n * T * r
    mr = (rows[:, None] < T) & (i[None, :] < r)
    ok = tl.load(ok_ptr + base + rows[:, None] * r + i[None, :], mask=mr, other=0.0).to(tl.float32)
    kk = tl.load(kk_ptr + base + rows[:, None] * r + i[None, :], mask=mr, other=0.0).to(tl.float32)
    kl = tl.load(kl_ptr + base + rows[:, None] * r + i[None, :], mask=mr, other=0.0).to(tl.float32)
    mp = (rows[:, None] < T) & (p[None, :] < P)
    ov = tl.load(ov_ptr + n * T * P + rows[:, None] * P + p[None, :], mask=mp, other=0.0).to(tl.float32)
    okt = tl.trans(ok)
    g = tl.dot(okt, kk, input_precision="ieee")                    # [BR, BR]  sum_s ok_s kk_s^T
    m = tl.dot(okt, kl, input_precision="ieee")                    # [BR, BR]  sum_s ok_s k_{s-1}^T
    cv = tl.dot(tl.trans(ov), kk, input_precision="ieee")          # [BP, BR]  sum_s ov_s kk_s^T
    out = (n * nc + c)
    mrr = (i[:, None] < r) & (i[None, :] < r)
    tl.store(g_ptr + out * r * r + i[:, None] * r + i[None, :], g, mask=mrr)
    tl.store(m_ptr + out * r * r + i[:, None] * r + i[None, :], m, mask=mrr)
    tl.store(c_ptr + out * P * r + p[:, None] * r + i[None, :], cv, mask=(p[:, None] < P) & (i[None, :] < r))


def chunk_stats(ok: torch.Tensor, kk: torch.Tensor, k_lag: torch.Tensor, ov: torch.Tensor, chunk_size: int):
    """Triton twin of :func:`echo_tutor.ska.ops.chunk_stats` (same arguments and results, float32)."""
    N, T, r = kk.shape
    P = ov.shape[-1]
    if T % chunk_size:
        raise BadArgumentError(f"T={T} must be a multiple of chunk_size={chunk_size}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise BadArgumentError(f"the Triton chunk_stats needs chunk_size a power of two >= 16, got {chunk_size}")
    nc = T // chunk_size
    ok, kk, k_lag, ov = (x.contiguous() for x in (ok, kk, k_lag, ov))
    Gc = torch.empty(N, nc, r, r, device=kk.device, dtype=torch.float32)
    Mc = torch.empty_like(Gc)
    Cc = torch.empty(N, nc, P, r, device=kk.device, dtype=torch.float32)
    _chunk_stats_kernel[(N, nc)](ok, kk, k_lag, ov, Gc, Mc, Cc, T, r, P, nc, S=chunk_size, BR=block_size(r), BP=block_size(P))
    return Gc, Mc, Cc


@triton.jit
def _prefix_kernel(x0_ptr, xc_ptr, out_ptr, tot_ptr, nc, E, BE: tl.constexpr):
    n = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    m = e < E
    acc = tl.load(x0_ptr + n * E + e, mask=m, other=0.0).to(tl.float32)
    for c in range(nc):
        tl.store(out_ptr + (n * nc + c) * E + e, acc, mask=m)
        acc += tl.load(xc_ptr + (n * nc + c) * E + e, mask=m, other=0.0).to(tl.float32)
    tl.store(tot_ptr + n * E + e, acc, mask=m)


def exclusive_prefix(X0: torch.Tensor, Xc: torch.Tensor):
    """Triton twin of :func:`echo_tutor.ska.ops.exclusive_prefix`."""
    N, nc = Xc.shape[:2]
    E = Xc[0, 0].numel()
    X0, Xc = X0.contiguous(), Xc.contiguous()
    out = torch.empty(Xc.shape, device=Xc.device, dtype=torch.float32)
    tot = torch.empty(X0.shape, device=Xc.device, dtype=torch.float32)
    BE = 256
    _prefix_kernel[(N, triton.cdiv(E, BE))](X0, Xc, out, tot, nc, E, BE=BE)
    return out, tot


# ---------------------------------------------------------------------------------------------- (b)
@triton.jit
def _readout_kernel(gi_ptr, m_ptr, c_ptr, q_ptr, s_ptr, y_ptr, n_q, r, P,
                    K: tl.constexpr, BQ: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(0)
    qb = tl.program_id(1)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    j = qb * BQ + tl.arange(0, BQ)
    mrr = (i[:, None] < r) & (i[None, :] < r)
    gi = tl.load(gi_ptr + n * r * r + i[:, None] * r + i[None, :], mask=mrr, other=0.0).to(tl.float32)
    mm = tl.load(m_ptr + n * r * r + i[:, None] * r + i[None, :], mask=mrr, other=0.0).to(tl.float32)
    cc = tl.load(c_ptr + n * P * r + p[:, None] * r + i[None, :], mask=(p[:, None] < P) & (i[None, :] < r),
                 other=0.0).to(tl.float32)
    at = tl.dot(gi, tl.trans(mm), input_precision="ieee")          # (M G^-1)^T   [BR, BR]
    bt = tl.dot(gi, tl.trans(cc), input_precision="ieee")          # (C G^-1)^T   [BR, BP]
    u = tl.load(q_ptr + n * n_q * r + j[:, None] * r + i[None, :], mask=(j[:, None] < n_q) & (i[None, :] < r),
                other=0.0).to(tl.float32)
    for _ in tl.static_range(K):
        u = tl.dot(u, at, input_precision="ieee")
    y = tl.dot(u, bt, input_precision="ieee") * tl.load(s_ptr + n).to(tl.float32)
    tl.store(y_ptr + n * n_q * P + j[:, None] * P + p[None, :], y, mask=(j[:, None] < n_q) & (p[None, :] < P))


def readout_inverse(Ginv, M, C, q, power_steps: int, scale):
    """Triton twin of :func:`echo_tutor.ska.ops.readout_inverse` (y in float32)."""
    N, n_q, r = q.shape
    P = C.shape[1]
    y = torch.empty(N, n_q, P, device=q.device, dtype=torch.float32)
    BQ = min(64, block_size(n_q))
    _readout_kernel[(N, triton.cdiv(n_q, BQ))](Ginv.contiguous(), M.contiguous(), C.contiguous(), q.contiguous(),
                                               scale.contiguous(), y, n_q, r, P, K=int(power_steps), BQ=BQ,
                                               BR=block_size(r), BP=block_size(P))
    return y


# ---------------------------------------------------------------------------------------------- layer entry points
def forward(q, k, v, beta=None, *, power_steps=2, eps=1e-3, eta=1.0, gamma=1.0, spectral_norm=False,
            spectral_iters=6, mode="token", chunk_size=64, weights=None, state=None, solver="chol", ns_iters=30):
    """Drop-in for :func:`echo_tutor.ska.ska_chunked` (same arguments, shapes and results to rounding).

    q, k ``[B, T, H, r]``; v ``[B, T, H, P]``; beta, weights ``[B, T, H]``; returns y ``[B, T, H, P]`` and
    the new :class:`~echo_tutor.ska.SKAState`. Mode "chunk" with a power-of-two ``chunk_size >= 16`` runs
    the two fused kernels of :mod:`echo_kernels.ska.fused` forward and backward (``solver`` "chol", "gj" or "ns", ``ns_iters`` for "ns");
    anything else is delegated to the reference."""
    kw = dict(power_steps=power_steps, eps=eps, eta=eta, gamma=gamma, spectral_norm=spectral_norm,
              spectral_iters=spectral_iters, chunk_size=chunk_size, weights=weights, state=state)
    if mode != "chunk" or chunk_size < 16 or chunk_size & (chunk_size - 1):
        return ska_chunked(q, k, v, beta, mode=mode, **kw)
    return fused_forward(q, k, v, beta, solver=solver, ns_iters=ns_iters, **kw)
