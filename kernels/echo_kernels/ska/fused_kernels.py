"""The Triton kernels of :mod:`echo_kernels.ska.fused` (see its doc): the stats + prefix walk and its
backward, the on-chip solvers (masked Cholesky, Gauss-Jordan, Newton-Schulz), the spectral norm's
power iterations, and the readout forward and backward. Program ids are int64, so offsets do not
overflow at large B * H * T."""

import triton
import triton.language as tl

__all__ = ["block_size"]


def block_size(n: int) -> int:
    """The power-of-two block that holds ``n`` (at least 16, ``tl.dot``'s minimum on a GPU)."""
    return max(16, triton.next_power_of_2(int(n)))


@triton.jit
def _walk_tiles(r, P, S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    """Index ranges, masks and offsets of one head's [r, r] and [P, r] statistics (both walks)."""
    s = tl.arange(0, S)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    mrr = (i[:, None] < r) & (i[None, :] < r)
    mpr = (p[:, None] < P) & (i[None, :] < r)
    return s, i, p, mrr, mpr, i[:, None] * r + i[None, :], p[:, None] * r + i[None, :]


@triton.jit
def _stats_prefix_fwd(ok_ptr, kk_ptr, kl_ptr, ov_ptr, g0_ptr, m0_ptr, c0_ptr, gx_ptr, mx_ptr, cx_ptr,
                      gt_ptr, mt_ptr, ct_ptr, T, r, P, nc, S: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    s, i, p, mrr, mpr, rr, pr = _walk_tiles(r, P, S, BR, BP)
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
    n = tl.program_id(0).to(tl.int64)
    s, i, p, mrr, mpr, rr, pr = _walk_tiles(r, P, S, BR, BP)
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


@triton.jit
def _gj_inverse(a, i, r, floor):
    """In-place Gauss-Jordan inverse of a symmetric positive definite [BR, BR] tile (identity padding);
    pivots below ``floor`` are raised to it."""
    for j in range(r):
        on = i == j
        rj = tl.sum(tl.where(on[:, None], a, 0.0), axis=0)           # row j
        cj = tl.sum(tl.where(on[None, :], a, 0.0), axis=1)           # column j
        piv = tl.sum(tl.where(on, rj, 0.0), axis=0)
        piv = tl.maximum(piv, floor)
        rj = tl.where(on, 1.0 / piv, rj / piv)
        a = tl.where(on[None, :], 0.0, a) - cj[:, None] * rj[None, :]
        a = tl.where(on[:, None], rj[None, :], a)
    return a


@triton.jit
def _chol_linv(a, i, r, floor):
    """L^-1 for the Cholesky factor L of a symmetric positive definite [BR, BR] tile (identity padding):
    r right-looking elimination steps for L (pivots below ``floor`` raised to it), then r
    forward-substitution steps for L^-1."""
    pad = tl.where((i[:, None] == i[None, :]) & (i[:, None] >= r), 1.0, 0.0)
    lo = pad
    for j in range(r):
        on = i == j
        cj = tl.sum(tl.where(on[None, :], a, 0.0), axis=1)
        piv = tl.sum(tl.where(on, cj, 0.0), axis=0)
        d = tl.sqrt(tl.maximum(piv, floor))     # a floored pivot: the factor of G + (floor - piv) e_j e_j^T
        lj = tl.where(on, d, tl.where(i > j, cj / d, 0.0))
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
def _sigma_max(aw, i, r, ITERS):
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
def _ns_inverse(a, i, r, ITERS):
    """Newton-Schulz: X <- X (2I - A X) from X0 = I / ||A||_F (the norm of the r x r block; converges for SPD A)."""
    eye = tl.where(i[:, None] == i[None, :], 1.0, 0.0)
    real = (i[:, None] < r) & (i[None, :] < r)
    x0 = 1.0 / tl.sqrt(tl.sum(tl.sum(tl.where(real, a * a, 0.0), axis=1), axis=0))
    x = tl.where(real, eye * x0, eye)                # the identity padding is its own inverse: a fixed point
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
                 ITERS, SITERS, K: tl.constexpr, SOLVER: tl.constexpr, SPECTRAL: tl.constexpr, S: tl.constexpr,
                 BR: tl.constexpr, BP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BR)
    p = tl.arange(0, BP)
    j = tl.arange(0, S)
    g = tl.load(g_ptr + b * r * r + i[:, None] * r + i[None, :], mask=(i[:, None] < r) & (i[None, :] < r),
                other=0.0).to(tl.float32)
    g += tl.where((i[:, None] == i[None, :]) & (i[:, None] >= r), 1.0, 0.0)     # identity in the padding
    mm, cc = _load_mc(m_ptr, c_ptr, b, i, p, r, P)
    scale = tl.load(eta_ptr + b).to(tl.float32)
    diag = tl.sum(tl.where(i[:, None] == i[None, :], g, 0.0), axis=1)
    floor = tl.maximum(1.1920928955078125e-07 * tl.sum(tl.where(i < r, diag, 0.0), axis=0) / r, 1e-30)  # eps * mean diag
    if SPECTRAL or SOLVER == 0:
        linv = _chol_linv(g, i, r, floor)
    if SOLVER == 0:
        gi = tl.dot(tl.trans(linv), linv, input_precision="ieee")          # G^-1 = L^-T L^-1
    elif SOLVER == 1:
        gi = _gj_inverse(g, i, r, floor)
    else:
        gi = _ns_inverse(g, i, r, ITERS)
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
    b = tl.program_id(0).to(tl.int64)
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
