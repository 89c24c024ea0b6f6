"""SKA's chunk mode as two fused Triton kernels, forward and backward.

Twin: :func:`echo_tutor.ska.ska_chunked` with ``mode="chunk"`` (heads flattened, ``N = B * H``,
``nc`` chunks of ``S`` tokens).

1. ``stats_prefix``: one program per head walks the chunks in order (as fla's ``chunk_h`` does). For
   chunk c it writes what c reads -- the state plus the chunks before c -- then adds c's statistics
   (three ``tl.dot`` products of the chunk's tiles): ``G += ok^T kk``, ``M += ok^T k_lag``,
   ``C += ov^T kk``. Per-chunk sums are never written to memory; the last accumulator is the new state.
2. ``readout``: one program per (head, chunk) inverts its ``r x r`` Gram matrix on chip, then
   ``y = scale * C G^-1 (M G^-1)^K q`` for the chunk's S queries (K + 2 products). Two solvers:
   ``"gj"`` Gauss-Jordan in registers (r elimination steps of masked rank-1 updates, exact to rounding,
   no pivoting: G is symmetric positive definite) and ``"ns"`` Newton-Schulz (``X <- X (2I - G X)``
   from ``X0 = I / ||G||_F``, matrix products only, converges in about log2(cond G) + 5 steps; its
   accuracy is bounded by ``ns_iters``). G^-1 is written once for the backward.

The backward is two more kernels, the same walks reversed: ``readout`` gets
``dG = -G^-1 dG^-1 G^-1`` (symmetrised) from the saved inverse, ``dM``, ``dC``, ``dq`` and ``dscale``
(recomputing the K power products, K is small); ``stats_prefix`` walks the chunks backwards with the
suffix sums of the prefix gradients and writes the token gradients of ``ok, kk, k_lag, ov`` and the
state's. Everything around the kernels (the key weights, padding, the optional spectral scale, which
is detached) is PyTorch under autograd. Float32 inside; fp16/bf16 inputs are cast at load.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from echo_tutor.errors import BadArgumentError
from echo_tutor.ska import ops as twin
from echo_tutor.ska.reference import SKAState, _prepare

__all__ = ["SOLVERS", "stats_prefix", "readout", "fused_forward"]

SOLVERS = ("chol", "gj", "ns")


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def _warps(BR: int) -> int:
    """Warps per readout program: its half-dozen [BR, BR] float32 tiles spill registers at BR = 64 with 4."""
    return 8 if BR >= 64 else 4


# ---------------------------------------------------------------------------------------------- 1. stats + prefix
@triton.jit
def _stats_prefix_fwd(ok_ptr, kk_ptr, kl_ptr, ov_ptr, g0_ptr, m0_ptr, c0_ptr, gx_ptr, mx_ptr, cx_ptr,
                      gt_ptr, mt_ptr, ct_ptr, T, r, P, nc, S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(0)
    s = tl.arange(0, S)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    mrr = (i[:, None] < r) & (i[None, :] < r)
    mpr = (p[:, None] < P) & (i[None, :] < r)
    rr = i[:, None] * r + i[None, :]
    pr = p[:, None] * r + i[None, :]
    g = tl.load(g0_ptr + n * r * r + rr, mask=mrr, other=0.0).to(tl.float32)
    m = tl.load(m0_ptr + n * r * r + rr, mask=mrr, other=0.0).to(tl.float32)
    cv = tl.load(c0_ptr + n * P * r + pr, mask=mpr, other=0.0).to(tl.float32)
    for c in range(nc):
        out = n * nc + c
        tl.store(gx_ptr + out * r * r + rr, g, mask=mrr)
        tl.store(mx_ptr + out * r * r + rr, m, mask=mrr)
        tl.store(cx_ptr + out * P * r + pr, cv, mask=mpr)
        rows = c * S + s
        tr = n * T * r + rows[:, None] * r + i[None, :]
        msr = (rows[:, None] < T) & (i[None, :] < r)
        ok = tl.load(ok_ptr + tr, mask=msr, other=0.0).to(tl.float32)
        kk = tl.load(kk_ptr + tr, mask=msr, other=0.0).to(tl.float32)
        kl = tl.load(kl_ptr + tr, mask=msr, other=0.0).to(tl.float32)
        ov = tl.load(ov_ptr + n * T * P + rows[:, None] * P + p[None, :],
                     mask=(rows[:, None] < T) & (p[None, :] < P), other=0.0).to(tl.float32)
        okt = tl.trans(ok)
        g += tl.dot(okt, kk, input_precision="ieee")
        m += tl.dot(okt, kl, input_precision="ieee")
        cv += tl.dot(tl.trans(ov), kk, input_precision="ieee")
    tl.store(gt_ptr + n * r * r + rr, g, mask=mrr)
    tl.store(mt_ptr + n * r * r + rr, m, mask=mrr)
    tl.store(ct_ptr + n * P * r + pr, cv, mask=mpr)


@triton.jit
def _stats_prefix_bwd(ok_ptr, kk_ptr, kl_ptr, ov_ptr, dgx_ptr, dmx_ptr, dcx_ptr, dgt_ptr, dmt_ptr, dct_ptr,
                      dok_ptr, dkk_ptr, dkl_ptr, dov_ptr, dg0_ptr, dm0_ptr, dc0_ptr, T, r, P, nc,
                      S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(0)
    s = tl.arange(0, S)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    mrr = (i[:, None] < r) & (i[None, :] < r)
    mpr = (p[:, None] < P) & (i[None, :] < r)
    rr = i[:, None] * r + i[None, :]
    pr = p[:, None] * r + i[None, :]
    # chunk c's sums reach the prefixes of every later chunk and the total: suffix sums, walking backwards
    ag = tl.load(dgt_ptr + n * r * r + rr, mask=mrr, other=0.0).to(tl.float32)
    am = tl.load(dmt_ptr + n * r * r + rr, mask=mrr, other=0.0).to(tl.float32)
    ac = tl.load(dct_ptr + n * P * r + pr, mask=mpr, other=0.0).to(tl.float32)
    for cc in range(nc):
        c = nc - 1 - cc
        rows = c * S + s
        tr = n * T * r + rows[:, None] * r + i[None, :]
        tp = n * T * P + rows[:, None] * P + p[None, :]
        msr = (rows[:, None] < T) & (i[None, :] < r)
        msp = (rows[:, None] < T) & (p[None, :] < P)
        ok = tl.load(ok_ptr + tr, mask=msr, other=0.0).to(tl.float32)
        kk = tl.load(kk_ptr + tr, mask=msr, other=0.0).to(tl.float32)
        kl = tl.load(kl_ptr + tr, mask=msr, other=0.0).to(tl.float32)
        ov = tl.load(ov_ptr + tp, mask=msp, other=0.0).to(tl.float32)
        # G_c = ok^T kk, M_c = ok^T k_lag, C_c = ov^T kk
        dok = tl.dot(kk, tl.trans(ag), input_precision="ieee") + tl.dot(kl, tl.trans(am), input_precision="ieee")
        dkk = tl.dot(ok, ag, input_precision="ieee") + tl.dot(ov, ac, input_precision="ieee")
        dkl = tl.dot(ok, am, input_precision="ieee")
        dov = tl.dot(kk, tl.trans(ac), input_precision="ieee")
        tl.store(dok_ptr + tr, dok, mask=msr)
        tl.store(dkk_ptr + tr, dkk, mask=msr)
        tl.store(dkl_ptr + tr, dkl, mask=msr)
        tl.store(dov_ptr + tp, dov, mask=msp)
        out = n * nc + c
        ag += tl.load(dgx_ptr + out * r * r + rr, mask=mrr, other=0.0).to(tl.float32)
        am += tl.load(dmx_ptr + out * r * r + rr, mask=mrr, other=0.0).to(tl.float32)
        ac += tl.load(dcx_ptr + out * P * r + pr, mask=mpr, other=0.0).to(tl.float32)
    tl.store(dg0_ptr + n * r * r + rr, ag, mask=mrr)
    tl.store(dm0_ptr + n * r * r + rr, am, mask=mrr)
    tl.store(dc0_ptr + n * P * r + pr, ac, mask=mpr)


def _f32(shape, like):
    return torch.empty(shape, device=like.device, dtype=torch.float32)


class _StatsPrefix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ok, kk, kl, ov, G0, M0, C0, S: int):
        N, T, r = kk.shape
        P, nc = ov.shape[-1], T // S
        ins = [x.contiguous() for x in (ok, kk, kl, ov, G0, M0, C0)]
        Gx, Mx, Cx = _f32((N, nc, r, r), kk), _f32((N, nc, r, r), kk), _f32((N, nc, P, r), kk)
        Gt, Mt, Ct = _f32((N, r, r), kk), _f32((N, r, r), kk), _f32((N, P, r), kk)
        _stats_prefix_fwd[(N,)](*ins, Gx, Mx, Cx, Gt, Mt, Ct, T, r, P, nc, S=S, BR=_block(r), BP=_block(P))
        ctx.save_for_backward(*ins[:4])
        ctx.S = S
        return Gx, Mx, Cx, Gt, Mt, Ct

    @staticmethod
    def backward(ctx, *grads):
        ok, kk, kl, ov = ctx.saved_tensors
        N, T, r = kk.shape
        P, nc = ov.shape[-1], T // ctx.S
        shapes = [(N, nc, r, r), (N, nc, r, r), (N, nc, P, r), (N, r, r), (N, r, r), (N, P, r)]
        g = [torch.zeros(sh, device=kk.device) if d is None else d.float().contiguous() for d, sh in zip(grads, shapes)]
        dok, dkk, dkl, dov = (_f32(x.shape, x) for x in (ok, kk, kl, ov))
        dG0, dM0, dC0 = _f32((N, r, r), kk), _f32((N, r, r), kk), _f32((N, P, r), kk)
        _stats_prefix_bwd[(N,)](ok, kk, kl, ov, *g, dok, dkk, dkl, dov, dG0, dM0, dC0, T, r, P, nc,
                                S=ctx.S, BR=_block(r), BP=_block(P))
        return dok, dkk, dkl, dov, dG0, dM0, dC0, None


def stats_prefix(ok, kk, k_lag, ov, G0, M0, C0, chunk_size: int):
    """Fused :func:`echo_tutor.ska.ops.chunk_stats` + :func:`~echo_tutor.ska.ops.exclusive_prefix` (differentiable).

    ok, kk, k_lag ``[N, T, r]``, ov ``[N, T, P]`` (T a multiple of ``chunk_size``), the state's G0, M0
    ``[N, r, r]`` and C0 ``[N, P, r]`` -> what each chunk reads, Gx, Mx ``[N, nc, r, r]`` and Cx
    ``[N, nc, P, r]``, and the totals Gt, Mt ``[N, r, r]``, Ct ``[N, P, r]`` (float32)."""
    T = kk.shape[1]
    if chunk_size < 16 or chunk_size & (chunk_size - 1) or T % chunk_size:
        raise BadArgumentError(f"chunk_size must be a power of two >= 16 dividing T={T}, got {chunk_size}")
    return _StatsPrefix.apply(ok, kk, k_lag, ov, G0, M0, C0, int(chunk_size))


# ---------------------------------------------------------------------------------------------- 2. readout
@triton.jit
def _gj_inverse(a, i, r):
    """In-place Gauss-Jordan inverse of a symmetric positive definite [BR, BR] tile (identity padding)."""
    for j in range(r):
        on = i == j
        rj = tl.sum(tl.where(on[:, None], a, 0.0), axis=0)           # row j
        cj = tl.sum(tl.where(on[None, :], a, 0.0), axis=1)           # column j
        piv = tl.sum(tl.where(on, rj, 0.0), axis=0)
        piv = tl.where(piv > 1e-30, piv, 1e-30)
        rj = tl.where(on, 1.0 / piv, rj / piv)
        a = tl.where(on[None, :], 0.0, a) - cj[:, None] * rj[None, :]
        a = tl.where(on[:, None], rj[None, :], a)
    return a


@triton.jit
def _chol_linv(a, i, r):
    """L^-1 for the Cholesky factor L of a symmetric positive definite [BR, BR] tile (identity padding):
    r right-looking elimination steps for L, then r forward-substitution steps for L^-1."""
    pad = tl.where((i[:, None] == i[None, :]) & (i[:, None] >= r), 1.0, 0.0)
    lo = pad
    for j in range(r):
        on = i == j
        cj = tl.sum(tl.where(on[None, :], a, 0.0), axis=1)
        piv = tl.sum(tl.where(on, cj, 0.0), axis=0)
        lj = tl.where(i >= j, cj, 0.0) / tl.sqrt(tl.where(piv > 1e-30, piv, 1e-30))
        lo = tl.where(on[None, :], lj[:, None], lo)
        a = a - lj[:, None] * lj[None, :]
    x = pad
    for j in range(r):
        on = i == j
        lr = tl.sum(tl.where(on[:, None], lo, 0.0), axis=0)            # row j of L
        acc = tl.sum(lr[:, None] * x, axis=0)                          # sum_{k<j} L[j,k] X[k,:]
        d = tl.sum(tl.where(on, lr, 0.0), axis=0)
        x = tl.where(on[:, None], ((tl.where(on, 1.0, 0.0) - acc) / d)[None, :], x)
    return x


@triton.jit
def _sigma_max(aw, i, r, ITERS: tl.constexpr):
    """Largest singular value of a [BR, BR] tile by ITERS power iterations on aw^T aw from ones / sqrt(r)
    (the reference's :func:`echo_tutor.ska.linalg.sigma_max`)."""
    x = tl.where(i < r, 1.0, 0.0)
    x = x / tl.sqrt(tl.sum(x * x, axis=0))
    for _ in range(ITERS):
        y = tl.sum(aw * x[None, :], axis=1)                            # aw x
        x = tl.sum(aw * y[:, None], axis=0)                            # aw^T aw x
        x = x / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), 1.1754943508222875e-38)
    y = tl.sum(aw * x[None, :], axis=1)
    return tl.sqrt(tl.sum(y * y, axis=0))


@triton.jit
def _ns_inverse(a, i, ITERS: tl.constexpr):
    """Newton-Schulz: X <- X (2I - A X) from X0 = I / ||A||_F (converges for SPD A)."""
    eye = tl.where(i[:, None] == i[None, :], 1.0, 0.0)
    x = eye / tl.sqrt(tl.sum(tl.sum(a * a, axis=1), axis=0))
    for _ in range(ITERS):
        x = tl.dot(x, 2.0 * eye - tl.dot(a, x, input_precision="ieee"), input_precision="ieee")
    return x


@triton.jit
def _load_mc(m_ptr, c_ptr, b, i, p, r, P):
    m = tl.load(m_ptr + b * r * r + i[:, None] * r + i[None, :], mask=(i[:, None] < r) & (i[None, :] < r),
                other=0.0).to(tl.float32)
    c = tl.load(c_ptr + b * P * r + p[:, None] * r + i[None, :], mask=(p[:, None] < P) & (i[None, :] < r),
                other=0.0).to(tl.float32)
    return m, c


@triton.jit
def _readout_fwd(g_ptr, m_ptr, c_ptr, q_ptr, eta_ptr, gam_ptr, y_ptr, gi_ptr, s_ptr, sig_ptr, r, P,
                 K: tl.constexpr, SOLVER: tl.constexpr, ITERS: tl.constexpr, SPECTRAL: tl.constexpr,
                 SITERS: tl.constexpr, S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    b = tl.program_id(0)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    j = tl.arange(0, S)
    g = tl.load(g_ptr + b * r * r + i[:, None] * r + i[None, :], mask=(i[:, None] < r) & (i[None, :] < r),
                other=0.0).to(tl.float32)
    g += tl.where((i[:, None] == i[None, :]) & (i[:, None] >= r), 1.0, 0.0)     # identity in the padding
    mm, cc = _load_mc(m_ptr, c_ptr, b, i, p, r, P)
    scale = tl.load(eta_ptr + b).to(tl.float32)
    if SPECTRAL or SOLVER == 0:
        linv = _chol_linv(g, i, r)
    if SOLVER == 0:
        gi = tl.dot(tl.trans(linv), linv, input_precision="ieee")          # G^-1 = L^-T L^-1
    elif SOLVER == 1:
        gi = _gj_inverse(g, i, r)
    else:
        gi = _ns_inverse(g, i, ITERS)
    if SPECTRAL:   # scale *= (gamma / max(1, sigma_max(L^-1 M L^-T)))^K, sigma detached
        aw = tl.dot(tl.dot(linv, mm, input_precision="ieee"), tl.trans(linv), input_precision="ieee")
        sig = _sigma_max(aw, i, r, SITERS)
        tl.store(sig_ptr + b, sig)
        f = tl.load(gam_ptr + b).to(tl.float32) / tl.maximum(sig, 1.0)
        for _ in tl.static_range(K):
            scale = scale * f
    tl.store(s_ptr + b, scale)
    tl.store(gi_ptr + b * BR * BR + i[:, None] * BR + i[None, :], gi)
    at = tl.dot(gi, tl.trans(mm), input_precision="ieee")          # (M G^-1)^T
    bt = tl.dot(gi, tl.trans(cc), input_precision="ieee")          # (C G^-1)^T
    u = tl.load(q_ptr + b * S * r + j[:, None] * r + i[None, :], mask=i[None, :] < r, other=0.0).to(tl.float32)
    for _ in tl.static_range(K):
        u = tl.dot(u, at, input_precision="ieee")
    y = tl.dot(u, bt, input_precision="ieee") * scale
    tl.store(y_ptr + b * S * P + j[:, None] * P + p[None, :], y, mask=p[None, :] < P)


@triton.jit
def _readout_bwd(gi_ptr, m_ptr, c_ptr, q_ptr, s_ptr, dy_ptr, dg_ptr, dm_ptr, dc_ptr, dq_ptr, ds_ptr, r, P,
                 K: tl.constexpr, S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    b = tl.program_id(0)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    j = tl.arange(0, S)
    mm, cc = _load_mc(m_ptr, c_ptr, b, i, p, r, P)
    gi = tl.load(gi_ptr + b * BR * BR + i[:, None] * BR + i[None, :])
    at = tl.dot(gi, tl.trans(mm), input_precision="ieee")
    bt = tl.dot(gi, tl.trans(cc), input_precision="ieee")
    q = tl.load(q_ptr + b * S * r + j[:, None] * r + i[None, :], mask=i[None, :] < r, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + b * S * P + j[:, None] * P + p[None, :], mask=p[None, :] < P, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + b).to(tl.float32)
    u = q
    for _ in tl.static_range(K):
        u = tl.dot(u, at, input_precision="ieee")
    tl.store(ds_ptr + b, tl.sum(tl.sum(dy * tl.dot(u, bt, input_precision="ieee"), axis=1), axis=0))
    dys = dy * s
    dbt = tl.dot(tl.trans(u), dys, input_precision="ieee")                     # [BR, BP]
    du = tl.dot(dys, tl.trans(bt), input_precision="ieee")                     # [S, BR]
    dat = tl.zeros((BR, BR), dtype=tl.float32)
    for kk in tl.static_range(K):                                              # power step K-1-kk
        uk = q
        for _ in tl.static_range(K - 1 - kk):
            uk = tl.dot(uk, at, input_precision="ieee")
        dat += tl.dot(tl.trans(uk), du, input_precision="ieee")
        du = tl.dot(du, tl.trans(at), input_precision="ieee")
    dgi = tl.dot(dat, mm, input_precision="ieee") + tl.dot(dbt, cc, input_precision="ieee")
    dg = -tl.dot(tl.dot(gi, dgi, input_precision="ieee"), gi, input_precision="ieee")
    dg = 0.5 * (dg + tl.trans(dg))
    mrr = (i[:, None] < r) & (i[None, :] < r)
    rr = b * r * r + i[:, None] * r + i[None, :]
    tl.store(dg_ptr + rr, dg, mask=mrr)
    tl.store(dm_ptr + rr, tl.dot(tl.trans(dat), gi, input_precision="ieee"), mask=mrr)
    tl.store(dc_ptr + b * P * r + p[:, None] * r + i[None, :], tl.dot(tl.trans(dbt), gi, input_precision="ieee"),
             mask=(p[:, None] < P) & (i[None, :] < r))
    tl.store(dq_ptr + b * S * r + j[:, None] * r + i[None, :], du, mask=i[None, :] < r)


class _Readout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, G, M, C, q, eta, gamma, K: int, solver: int, iters: int, spectral: bool, siters: int):
        Nc, S, r = q.shape
        P = C.shape[1]
        BR = _block(r)
        ins = [x.contiguous() for x in (G, M, C, q, eta, gamma)]
        y, Gi, s, sig = _f32((Nc, S, P), q), _f32((Nc, BR, BR), q), _f32((Nc,), q), torch.ones(Nc, device=q.device)
        _readout_fwd[(Nc,)](*ins, y, Gi, s, sig, r, P, K=K, SOLVER=solver, ITERS=iters, SPECTRAL=spectral,
                            SITERS=siters, S=S, BR=BR, BP=_block(P), num_warps=_warps(BR))
        ctx.save_for_backward(Gi, *ins[1:4], s, eta, gamma, sig)
        ctx.K, ctx.spectral = K, spectral
        return y

    @staticmethod
    def backward(ctx, dy):
        Gi, M, C, q, s, eta, gamma, sig = ctx.saved_tensors
        Nc, S, r = q.shape
        P = C.shape[1]
        dG, dM, dC = _f32(M.shape, M), _f32(M.shape, M), _f32(C.shape, C)
        dq, ds = _f32(q.shape, q), _f32(s.shape, s)
        _readout_bwd[(Nc,)](Gi, M, C, q, s, dy.float().contiguous(), dG, dM, dC, dq, ds, r, P, K=ctx.K, S=S,
                            BR=Gi.shape[-1], BP=_block(P), num_warps=_warps(Gi.shape[-1]))
        # s = eta * f, f = (gamma / max(1, sigma))^K with sigma detached (f = 1 without the spectral norm)
        f = (gamma / sig.clamp_min(1.0)) ** ctx.K if ctx.spectral else torch.ones_like(s)
        d_eta = ds * f
        d_gamma = ds * eta * ctx.K * f / gamma if ctx.spectral and ctx.K > 0 else torch.zeros_like(s)
        return dG, dM, dC, dq, d_eta, d_gamma, None, None, None, None, None


def readout(G, M, C, q, power_steps: int, eta, gamma=None, solver: str = "chol", ns_iters: int = 30,
            spectral_iters: int | None = None):
    """``y = s * C G^-1 (M G^-1)^K q`` with ``G^-1`` found on chip (differentiable).

    G, M ``[Nc, r, r]`` (symmetric positive definite G), C ``[Nc, P, r]``, q ``[Nc, S, r]`` (S a power of
    two >= 16), eta ``[Nc]`` -> y ``[Nc, S, P]`` float32. ``s = eta``, or with ``gamma [Nc]`` and
    ``spectral_iters`` given, ``s = eta * (gamma / max(1, sigma_max(L^-1 M L^-T)))^K`` (the spectral
    norm, sigma detached, estimated on chip as the reference does). ``solver``: "chol", "gj" or "ns"."""
    if solver not in SOLVERS:
        raise BadArgumentError(f"solver must be one of {SOLVERS}, got {solver!r}")
    S = q.shape[1]
    if S < 16 or S & (S - 1):
        raise BadArgumentError(f"q must hold a power of two >= 16 of queries per chunk, got {S}")
    spectral = gamma is not None and spectral_iters is not None and power_steps > 0
    if spectral_iters is None and gamma is not None:
        raise BadArgumentError("spectral_iters=None (the exact SVD) is not offered on chip: pass an int >= 1")
    gamma = eta if gamma is None else gamma
    return _Readout.apply(G, M, C, q, eta, gamma, int(power_steps), SOLVERS.index(solver), int(ns_iters), spectral,
                          int(spectral_iters or 1))


# ---------------------------------------------------------------------------------------------- the layer's entry
def fused_forward(q, k, v, beta=None, *, power_steps=2, eps=1e-3, eta=1.0, gamma=1.0, spectral_norm=False,
                  spectral_iters=6, chunk_size=64, weights=None, state=None, solver="chol", ns_iters=30):
    """Chunk-mode SKA through the two fused kernels; arguments, shapes and results as
    :func:`echo_tutor.ska.ska_chunked` with ``mode="chunk"`` (to rounding), differentiable through the
    Triton backward. ``chunk_size`` a power of two >= 16."""
    p = _prepare(q, k, v, beta, weights, state, power_steps=power_steps, eps=eps, eta=eta, gamma=gamma,
                 mode="chunk", chunk_size=chunk_size, spectral_iters=spectral_iters)
    st = p.state
    B, T, H, r = p.k.shape
    P, N, S = p.v.shape[-1], B * H, chunk_size
    (okf, kkf, klf, ovf, qf), kw_last, nc = twin.chunk_inputs(p, S)
    Gx, Mx, Cx, Gt, Mt, Ct = stats_prefix(okf, kkf, klf, ovf, st.G.reshape(N, r, r), st.M.reshape(N, r, r),
                                          st.C.reshape(N, P, r), S)
    Gx, Mx, Cx = Gx.reshape(-1, r, r), Mx.reshape(-1, r, r), Cx.reshape(-1, P, r)
    per_chunk = lambda x: twin.broadcast_heads(x, B, H).to(k.device).float()[:, None].expand(N, nc).reshape(-1)  # noqa: E731
    spectral = spectral_norm and power_steps > 0
    eta_c = per_chunk(eta)
    if spectral and spectral_iters is None:  # the exact SVD: in PyTorch, outside the kernel
        eta_c = eta_c * twin.spectral_scale(Gx, Mx, power_steps, per_chunk(gamma), None)
        spectral = False
    y = readout(Gx, Mx, Cx, qf.reshape(N * nc, S, r), power_steps, eta_c,
                per_chunk(gamma) if spectral else None, solver, ns_iters, spectral_iters if spectral else None)
    y = y.reshape(B, H, nc * S, P)[:, :, :T].permute(0, 2, 1, 3)
    new = SKAState(Gt.reshape(B, H, r, r), Mt.reshape(B, H, r, r), Ct.reshape(B, H, P, r), kw_last.float(),
                   st.count + T, st.key_scale)
    return y.to(p.out_dtype), new
