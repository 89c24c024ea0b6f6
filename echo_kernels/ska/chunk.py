"""SKA's chunk mode in Triton: per-chunk statistics, the prefix over chunks, the readout, and ``forward``.

Twins: :mod:`echo_tutor.ska.ops` (same signatures; heads flattened, ``N = B * H``). See the package doc.
"""

from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from echo_tutor.errors import BadArgumentError
from echo_tutor.ska import ops as twin
from echo_tutor.ska.reference import ska_chunked

__all__ = ["chunk_stats", "exclusive_prefix", "readout_inverse", "forward", "block_size"]


def block_size(n: int) -> int:
    """The power-of-two block that holds ``n`` (at least 16, ``tl.dot``'s minimum on a GPU)."""
    return max(16, triton.next_power_of_2(int(n)))


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
class _SKAChunkFn(torch.autograd.Function):
    """Forward through the kernels; backward by recomputation through the PyTorch reference."""

    @staticmethod
    def forward(ctx, kw, q, k, v, beta, weights, G, M, C, k_prev):
        state = kw.pop("_state_meta")
        st = twin.SKAState(G, M, C, k_prev, state["count"], state["key_scale"])
        with torch.no_grad():
            y, new = twin.ska_chunked_ops(q, k, v, beta, weights=weights, state=st, ops=sys.modules[__name__], **kw)
        ctx.kw = kw
        ctx.meta = state
        ctx.save_for_backward(q, k, v, beta, weights, G, M, C, k_prev)
        ctx.count = new.count
        return y, new.G, new.M, new.C, new.k_prev

    @staticmethod
    def backward(ctx, gy, gG, gM, gC, gkp):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in saved]
        q, k, v, beta, weights, G, M, C, k_prev = inputs
        with torch.enable_grad():
            st = twin.SKAState(G, M, C, k_prev, ctx.meta["count"], ctx.meta["key_scale"])
            y, new = ska_chunked(q, k, v, beta, weights=weights, state=st, **ctx.kw)
            outs = [y, new.G, new.M, new.C, new.k_prev]
            grads_out = [gy, gG, gM, gC, gkp]
            pairs = [(o, g) for o, g in zip(outs, grads_out) if g is not None and o.requires_grad]
            need = [t for t in inputs if t is not None and t.requires_grad]
            got = torch.autograd.grad([o for o, _ in pairs], need, [g for _, g in pairs], allow_unused=True) if pairs and need else []
        it = iter(got)
        res = [next(it) if (t is not None and t.requires_grad) else None for t in inputs]
        return (None, *res)


def forward(q, k, v, beta=None, *, power_steps=2, eps=1e-3, eta=1.0, gamma=1.0, spectral_norm=False,
            spectral_iters=6, mode="token", chunk_size=64, weights=None, state=None):
    """Drop-in for :func:`echo_tutor.ska.ska_chunked` (same arguments, shapes and results to rounding).

    q, k ``[B, T, H, r]``; v ``[B, T, H, P]``; beta, weights ``[B, T, H]``; returns y ``[B, T, H, P]`` and
    the new :class:`~echo_tutor.ska.SKAState`."""
    kw = dict(power_steps=power_steps, eps=eps, eta=eta, gamma=gamma, spectral_norm=spectral_norm,
              spectral_iters=spectral_iters, mode=mode, chunk_size=chunk_size)
    if mode != "chunk" or chunk_size < 16 or chunk_size & (chunk_size - 1):
        return ska_chunked(q, k, v, beta, weights=weights, state=state, **kw)
    B, T, H, r = k.shape
    if state is None:
        state = twin.SKAState.zeros(B, H, r, v.shape[-1], eps=eps, dtype=torch.float32, device=k.device)
    meta = {"count": state.count, "key_scale": state.key_scale}
    y, G, M, C, kp = _SKAChunkFn.apply(dict(kw, _state_meta=meta), q, k, v, beta, weights,
                                       state.G, state.M, state.C, state.k_prev)
    return y, twin.SKAState(G, M, C, kp, state.count + T, state.key_scale)


