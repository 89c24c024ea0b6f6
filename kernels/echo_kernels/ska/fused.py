"""SKA's chunk mode as two fused Triton kernels, forward and backward.

Twin: :func:`echo_tutor.ska.ska_chunked` with ``mode="chunk"`` (heads flattened, ``N = B * H``,
``nc`` chunks of ``S`` tokens).

1. ``stats_prefix``: one program per head walks the chunks in order (as fla's ``chunk_h`` does). For
   chunk c it writes what c reads -- the state plus the chunks before c -- then adds c's statistics
   (three ``tl.dot`` products of the chunk's tiles): ``G += ok^T kk``, ``M += ok^T k_lag``,
   ``C += ov^T kk``. Per-chunk sums are never written to memory; the last accumulator is the new state.
2. ``readout``: one program per (head, chunk) inverts its ``r x r`` Gram matrix on chip, then
   ``y = scale * C G^-1 (M G^-1)^K q`` for the chunk's S queries (K + 2 products). Three solvers:
   ``"chol"`` (the default) a masked Cholesky in registers (r right-looking steps) and ``L^-1`` by
   forward substitution, ``G^-1 = L^-T L^-1``; ``"gj"`` Gauss-Jordan in registers (r elimination steps
   of masked rank-1 updates, no pivoting: G is symmetric positive definite); ``"ns"`` Newton-Schulz
   (``X <- X (2I - G X)`` from ``X0 = I / ||G||_F``, matrix products only, converges in about
   log2(cond G) + 5 steps, so its accuracy is bounded by ``ns_iters``: at r = 64 with the default ridge a
   chunk's G can need more than 30). The eliminations floor each pivot at float32's epsilon times the
   mean diagonal (where the reference would retry with jitter), so a singular G gives a finite answer.
   With the spectral norm, ``L^-1`` also gives ``L^-1 M L^-T``, whose largest singular value is
   estimated on chip by the reference's power iterations. G^-1 is written once for the backward.

The backward is two more kernels, the same walks reversed: ``readout`` gets
``dG = -G^-1 dG^-1 G^-1`` (symmetrised) from the saved inverse, ``dM``, ``dC``, ``dq`` and ``dscale``
(recomputing the K power products, K is small); ``stats_prefix`` walks the chunks backwards with the
suffix sums of the prefix gradients and writes the token gradients of ``ok, kk, k_lag, ov`` and the
state's. Everything around the kernels (the key weights, padding to whole chunks, the spectral scale when
``spectral_iters=None`` asks for an exact SVD) is PyTorch under autograd. Float32 inside; fp16/bf16 inputs
are cast at load. Where a GPU lacks the shared memory a kernel needs (Triton's ``OutOfResources``, e.g. the
backward at r = 64 on a card with 99 KB per block), that step runs its PyTorch twin in
:mod:`echo_tutor.ska.ops` instead (same formulas, batched matrix products) and warns once.

The kernels themselves are in :mod:`echo_kernels.ska.fused_kernels`.
"""

from __future__ import annotations

import warnings

import torch
from triton.runtime.errors import OutOfResources

from echo_tutor.errors import BadArgumentError
from echo_tutor.ska import ops as twin
from echo_tutor.ska.reference import SKAState, prepare_inputs

from .fused_kernels import _readout_bwd, _readout_fwd, _stats_prefix_bwd, _stats_prefix_fwd, block_size

__all__ = ["SOLVERS", "stats_prefix", "readout", "fused_forward"]

SOLVERS = ("chol", "gj", "ns")


def _warps(BR: int) -> int:
    """Warps per readout program: its half-dozen [BR, BR] float32 tiles spill registers at BR = 64 with 4."""
    return 8 if BR >= 64 else 4


def _f32(shape, like):
    return torch.empty(shape, device=like.device, dtype=torch.float32)


_WARNED: set[str] = set()


def _run(what: str, launch, fallback):
    """``launch()``; where the GPU lacks the resources the kernel asks for, ``fallback()`` (its PyTorch twin),
    with a warning once per step."""
    try:
        return launch()
    except OutOfResources as e:
        if what not in _WARNED:
            _WARNED.add(what)
            warnings.warn(f"echo_kernels.ska.fused: the {what} kernel needs more than this GPU offers ({e}); "
                          "running its PyTorch twin (echo_tutor.ska.ops) instead", RuntimeWarning, stacklevel=3)
        return fallback()


def _pad_eye(X: torch.Tensor, n: int) -> torch.Tensor:
    """``[Nc, r, r]`` -> ``[Nc, n, n]`` with the identity in the padding (what the readout kernel stores)."""
    r = X.shape[-1]
    out = torch.eye(n, device=X.device, dtype=X.dtype).repeat(X.shape[0], 1, 1)
    out[:, :r, :r] = X
    return out


class _StatsPrefix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ok, kk, kl, ov, G0, M0, C0, S: int):
        N, T, r = kk.shape
        P, nc = ov.shape[-1], T // S
        ins = [x.contiguous() for x in (ok, kk, kl, ov, G0, M0, C0)]
        Gx, Mx, Cx = _f32((N, nc, r, r), kk), _f32((N, nc, r, r), kk), _f32((N, nc, P, r), kk)
        Gt, Mt, Ct = _f32((N, r, r), kk), _f32((N, r, r), kk), _f32((N, P, r), kk)

        def launch():
            _stats_prefix_fwd[(N,)](*ins, Gx, Mx, Cx, Gt, Mt, Ct, T, r, P, nc, S=S, BR=block_size(r), BP=block_size(P),
                                    num_stages=1)
            return Gx, Mx, Cx, Gt, Mt, Ct
        ctx.save_for_backward(*ins[:4])
        ctx.S = S
        return _run("stats + prefix", launch, lambda: twin.stats_prefix(*(x.float() for x in ins), S))

    @staticmethod
    def backward(ctx, *grads):
        ok, kk, kl, ov = ctx.saved_tensors
        N, T, r = kk.shape
        P, nc = ov.shape[-1], T // ctx.S
        shapes = [(N, nc, r, r), (N, nc, r, r), (N, nc, P, r), (N, r, r), (N, r, r), (N, P, r)]
        g = [torch.zeros(sh, device=kk.device) if d is None else d.float().contiguous() for d, sh in zip(grads, shapes)]
        dok, dkk, dkl, dov = (_f32(x.shape, x) for x in (ok, kk, kl, ov))
        dG0, dM0, dC0 = _f32((N, r, r), kk), _f32((N, r, r), kk), _f32((N, P, r), kk)

        def launch():
            _stats_prefix_bwd[(N,)](ok, kk, kl, ov, *g, dok, dkk, dkl, dov, dG0, dM0, dC0, T, r, P, nc,
                                    S=ctx.S, BR=block_size(r), BP=block_size(P), num_stages=1)
            return dok, dkk, dkl, dov, dG0, dM0, dC0
        grads = _run("stats + prefix backward", launch,
                     lambda: twin.stats_prefix_backward(*(x.float() for x in (ok, kk, kl, ov)), *g, ctx.S))
        return (*grads, None)


def stats_prefix(ok, kk, k_lag, ov, G0, M0, C0, chunk_size: int):
    """Fused :func:`echo_tutor.ska.ops.chunk_stats` + :func:`~echo_tutor.ska.ops.exclusive_prefix` (differentiable).

    ok, kk, k_lag ``[N, T, r]``, ov ``[N, T, P]`` (T a multiple of ``chunk_size``), the state's G0, M0
    ``[N, r, r]`` and C0 ``[N, P, r]`` -> what each chunk reads, Gx, Mx ``[N, nc, r, r]`` and Cx
    ``[N, nc, P, r]``, and the totals Gt, Mt ``[N, r, r]``, Ct ``[N, P, r]`` (float32)."""
    T = kk.shape[1]
    if chunk_size < 16 or chunk_size & (chunk_size - 1) or T % chunk_size:
        raise BadArgumentError(f"chunk_size must be a power of two >= 16 dividing T={T}, got {chunk_size}")
    return _StatsPrefix.apply(ok, kk, k_lag, ov, G0, M0, C0, int(chunk_size))


class _Readout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, G, M, C, q, eta, gamma, K: int, solver: int, iters: int, spectral: bool, siters: int):
        Nc, S, r = q.shape
        P = C.shape[1]
        BR = block_size(r)
        ins = [x.contiguous() for x in (G, M, C, q, eta, gamma)]
        y, Gi, s, sig = _f32((Nc, S, P), q), _f32((Nc, BR, BR), q), _f32((Nc,), q), torch.ones(Nc, device=q.device)

        def launch():
            _readout_fwd[(Nc,)](*ins, y, Gi, s, sig, r, P, iters, siters, K=K, SOLVER=solver, SPECTRAL=spectral, S=S,
                                BR=BR, BP=block_size(P), num_warps=_warps(BR))
            return y, Gi, s, sig

        def fallback():
            f = [x.float() for x in ins]
            y, Gi, s, sig = twin.readout_forward(*f[:4], K, f[4], f[5] if spectral else None, siters if spectral else None)
            return y, _pad_eye(Gi, BR), s, sig
        y, Gi, s, sig = _run("readout", launch, fallback)
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
        dy = dy.float().contiguous()

        def launch():
            _readout_bwd[(Nc,)](Gi, M, C, q, s, dy, dG, dM, dC, dq, ds, r, P, K=ctx.K, S=S,
                                BR=Gi.shape[-1], BP=block_size(P), num_warps=_warps(Gi.shape[-1]))
            return dG, dM, dC, dq, ds
        dG, dM, dC, dq, ds = _run("readout backward", launch, lambda: twin.readout_backward(
            Gi[:, :r, :r], M.float(), C.float(), q.float(), s, dy, ctx.K))
        # s = eta * f, f = (gamma / max(1, sigma))^K with sigma detached (f = 1 without the spectral norm)
        m = sig.clamp_min(1.0)
        f = (gamma / m) ** ctx.K if ctx.spectral else torch.ones_like(s)
        d_eta = ds * f
        d_gamma = ds * eta * ctx.K * (gamma / m) ** (ctx.K - 1) / m if ctx.spectral and ctx.K > 0 else torch.zeros_like(s)
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
    if int(ns_iters) < 1 or (spectral_iters is not None and int(spectral_iters) < 1):
        raise BadArgumentError(f"ns_iters and spectral_iters must be >= 1, got {ns_iters} and {spectral_iters}")
    if spectral_iters is None and gamma is not None:
        raise BadArgumentError("spectral_iters=None (the exact SVD) is not offered on chip: pass an int >= 1")
    gamma = eta if gamma is None else gamma
    return _Readout.apply(G, M, C, q, eta, gamma, int(power_steps), SOLVERS.index(solver), int(ns_iters), spectral,
                          int(spectral_iters or 1))


def fused_forward(q, k, v, beta=None, *, power_steps=2, eps=1e-3, eta=1.0, gamma=1.0, spectral_norm=False,
                  spectral_iters=6, chunk_size=64, weights=None, state=None, solver="chol", ns_iters=30):
    """Chunk-mode SKA through the two fused kernels; arguments, shapes and results as
    :func:`echo_tutor.ska.ska_chunked` with ``mode="chunk"`` (to rounding), differentiable through the
    Triton backward. ``chunk_size`` a power of two >= 16."""
    p = prepare_inputs(q, k, v, beta, weights, state, power_steps=power_steps, eps=eps, eta=eta, gamma=gamma,
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
