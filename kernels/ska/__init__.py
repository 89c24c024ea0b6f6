"""Triton kernels for SKA's chunk mode and decode step. Twins: :mod:`echo_tutor.ska.ops`.

Kernels (same signatures as the twins; heads flattened, ``N = B * H``):

* ``chunk_stats(ok, kk, k_lag, ov, chunk_size)``: one program per (head, chunk): three ``tl.dot``
  products of the chunk's [S, r] / [S, P] tiles -> per-chunk G, M, C.
* ``exclusive_prefix(X0, Xc)``: one program per (head, block of matrix entries), walking the chunks
  in order: the state plus the sum of the chunks before each one.
* ``readout_inverse(Ginv, M, C, q, K, scale)``: one program per (head x chunk, block of queries):
  A^T = G^-1 M^T and B^T = G^-1 C^T in registers, then K + 1 products with the query block.
* ``decode_step(...)``: one program per head: rank-1 updates of G, M, C, k_prev and G^-1
  (Sherman-Morrison), then the readout as matrix-vector products.

``forward`` is a drop-in for :func:`echo_tutor.ska.ska_chunked` (the layer's ``backend="triton"``):
mode "chunk" runs the kernels (the Cholesky for G^-1 and the optional spectral scale run in PyTorch,
r x r per chunk); mode "token" is delegated to the reference. **Backward** is a documented
recomputation: the saved inputs are re-run through the PyTorch reference under autograd and its
gradients returned, so training through ``forward`` is exact but costs a reference forward+backward.

Computation is float32 inside the kernels (fp16/bf16 inputs are loaded and cast at once: the Triton
CPU interpreter cannot do bf16 arithmetic). Under ``TRITON_INTERPRET=1`` everything runs on CPU
tensors, for tests; on a GPU the block sizes are at least 16 (``tl.dot``'s minimum).
"""

from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from echo_tutor.ska import ops as twin
from echo_tutor.ska.reference import ska_chunked

__all__ = ["chunk_stats", "exclusive_prefix", "readout_inverse", "decode_step", "forward", "decode"]


def _p2(n: int) -> int:
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
        raise ValueError(f"T={T} must be a multiple of chunk_size={chunk_size}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"the Triton chunk_stats needs chunk_size a power of two >= 16, got {chunk_size}")
    nc = T // chunk_size
    ok, kk, k_lag, ov = (x.contiguous() for x in (ok, kk, k_lag, ov))
    Gc = torch.empty(N, nc, r, r, device=kk.device, dtype=torch.float32)
    Mc = torch.empty_like(Gc)
    Cc = torch.empty(N, nc, P, r, device=kk.device, dtype=torch.float32)
    _chunk_stats_kernel[(N, nc)](ok, kk, k_lag, ov, Gc, Mc, Cc, T, r, P, nc, S=chunk_size, BR=_p2(r), BP=_p2(P))
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
    BQ = min(64, _p2(n_q))
    _readout_kernel[(N, triton.cdiv(n_q, BQ))](Ginv.contiguous(), M.contiguous(), C.contiguous(), q.contiguous(),
                                               scale.contiguous(), y, n_q, r, P, K=int(power_steps), BQ=BQ,
                                               BR=_p2(r), BP=_p2(P))
    return y


# ---------------------------------------------------------------------------------------------- (c)
@triton.jit
def _decode_kernel(g_ptr, gi_ptr, m_ptr, c_ptr, kp_ptr, q_ptr, k_ptr, v_ptr, om_ptr, w_ptr, s_ptr, y_ptr, r, P,
                   K: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(0)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    mi = i < r
    mp = p < P
    mrr = mi[:, None] & mi[None, :]
    mpr = mp[:, None] & mi[None, :]
    a = tl.load(om_ptr + n).to(tl.float32)
    k = tl.load(k_ptr + n * r + i, mask=mi, other=0.0).to(tl.float32)
    kp = tl.load(kp_ptr + n * r + i, mask=mi, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + n * P + p, mask=mp, other=0.0).to(tl.float32)
    rr = n * r * r + i[:, None] * r + i[None, :]
    pr = n * P * r + p[:, None] * r + i[None, :]
    g = tl.load(g_ptr + rr, mask=mrr, other=0.0) + a * k[:, None] * k[None, :]
    m = tl.load(m_ptr + rr, mask=mrr, other=0.0) + a * k[:, None] * kp[None, :]
    c = tl.load(c_ptr + pr, mask=mpr, other=0.0) + a * v[:, None] * k[None, :]
    gi = tl.load(gi_ptr + rr, mask=mrr, other=0.0)
    gk = tl.sum(gi * k[None, :], axis=1)                          # G^-1 k
    denom = 1.0 + a * tl.sum(k * gk, axis=0)
    gi = gi - (a / denom) * gk[:, None] * gk[None, :]             # Sherman-Morrison
    tl.store(g_ptr + rr, g, mask=mrr)
    tl.store(m_ptr + rr, m, mask=mrr)
    tl.store(c_ptr + pr, c, mask=mpr)
    tl.store(gi_ptr + rr, gi, mask=mrr)
    tl.store(kp_ptr + n * r + i, tl.load(w_ptr + n).to(tl.float32) * k, mask=mi)
    u = tl.load(q_ptr + n * r + i, mask=mi, other=0.0).to(tl.float32)
    for _ in tl.static_range(K):
        t = tl.sum(gi * u[None, :], axis=1)                       # G^-1 u
        u = tl.sum(m * t[None, :], axis=1)                        # M G^-1 u
    t = tl.sum(gi * u[None, :], axis=1)
    y = tl.sum(c * t[None, :], axis=1) * tl.load(s_ptr + n).to(tl.float32)
    tl.store(y_ptr + n * P + p, y, mask=mp)


def decode_step(G, Ginv, M, C, k_prev, q, k, v, omega, w, power_steps: int, scale):
    """Triton twin of :func:`echo_tutor.ska.ops.decode_step`. Returns new float32 tensors (the inputs
    are not modified)."""
    N, r = k.shape
    P = v.shape[-1]
    f32 = lambda x: x.to(torch.float32).contiguous().clone()  # noqa: E731
    G, Ginv, M, C, k_prev = map(f32, (G, Ginv, M, C, k_prev))
    y = torch.empty(N, P, device=k.device, dtype=torch.float32)
    _decode_kernel[(N,)](G, Ginv, M, C, k_prev, q.contiguous(), k.contiguous(), v.contiguous(), omega.contiguous(),
                         w.contiguous(), scale.contiguous(), y, r, P, K=int(power_steps), BR=_p2(r), BP=_p2(P))
    return y, G, Ginv, M, C, k_prev


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


def decode(q, k, v, beta, state, G_inv=None, *, power_steps=2, eta=1.0, gamma=1.0, spectral_norm=False,
           spectral_iters=6, weights=None):
    """One decode token for ``[B, 1, H, *]`` inputs through :func:`decode_step`; returns
    ``(y [B, 1, H, P], new_state, new_G_inv)``. Pass the returned ``G_inv`` back in to keep the
    Sherman-Morrison inverse (otherwise it is recomputed from G by Cholesky)."""
    B, _, H, r = k.shape
    P = v.shape[-1]
    N = B * H
    f = lambda x: x[:, 0].reshape(N, -1).float()  # noqa: E731
    G = state.G.reshape(N, r, r)
    Gi = twin.inverse_gram(G.float()) if G_inv is None else G_inv.reshape(N, r, r)
    om = torch.ones(N, device=k.device) if beta is None else beta[:, 0].reshape(N).float()
    w = torch.ones(N, device=k.device) if weights is None else weights[:, 0].reshape(N).float()
    if weights is not None:
        om = om * w
    scale = twin._heads(eta, B, H).to(k.device).float()
    y, G2, Gi2, M2, C2, kp2 = decode_step(G, Gi, state.M.reshape(N, r, r), state.C.reshape(N, P, r),
                                          state.k_prev.reshape(N, r), f(q), f(k), f(v), om, w, power_steps, scale)
    if spectral_norm and power_steps > 0:
        y = y * twin.spectral_scale(G2, M2, power_steps, twin._heads(gamma, B, H).to(k.device).float(), spectral_iters)[:, None]
    new = twin.SKAState(G2.reshape(B, H, r, r), M2.reshape(B, H, r, r), C2.reshape(B, H, P, r), kp2.reshape(B, H, r),
                        state.count + 1, state.key_scale)
    return y.reshape(B, 1, H, P).to(v.dtype), new, Gi2.reshape(B, H, r, r)
