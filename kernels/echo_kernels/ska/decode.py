"""SKA's decode step in Triton: rank-1 updates of the statistics and of ``G^-1`` (Sherman-Morrison), then
the readout, one program per head. Twin: :func:`echo_tutor.ska.ops.decode_step`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from echo_tutor.ska import ops as twin

from .chunk import block_size

__all__ = ["decode_step", "decode"]


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
    gi = gi - (a / denom) * (gk[:, None] * gk[None, :])           # Sherman-Morrison, c (g g^T): symmetric
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
                         w.contiguous(), scale.contiguous(), y, r, P, K=int(power_steps), BR=block_size(r), BP=block_size(P))
    return y, G, Ginv, M, C, k_prev


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
    scale = twin.broadcast_heads(eta, B, H).to(k.device).float()
    y, G2, Gi2, M2, C2, kp2 = decode_step(G, Gi, state.M.reshape(N, r, r), state.C.reshape(N, P, r),
                                          state.k_prev.reshape(N, r), f(q), f(k), f(v), om, w, power_steps, scale)
    if spectral_norm and power_steps > 0:
        y = y * twin.spectral_scale(G2, M2, power_steps, twin.broadcast_heads(gamma, B, H).to(k.device).float(), spectral_iters)[:, None]
    new = twin.SKAState(G2.reshape(B, H, r, r), M2.reshape(B, H, r, r), C2.reshape(B, H, P, r), kp2.reshape(B, H, r),
                        state.count + 1, state.key_scale)
    return y.reshape(B, 1, H, P).to(v.dtype), new, Gi2.reshape(B, H, r, r)
