"""The Triton kernel behind EchoKV-lite's fused rebuild. Twin: :func:`echo_tutor.echokv.ops.rebuild_heads`.

``forward(x, cos, sin, W, b, rope)``: one program per (batch x discarded head, block of tokens). For
each retained input head it loads the [BT, D] tile as two halves (Llama's RoPE pairs dim i with
i + D/2), undoes RoPE in registers, multiplies by the four [D/2, D/2] quadrants of that head's map,
and accumulates; then adds the bias, re-applies RoPE and writes the rebuilt [BT, D] tile. The tile
work is the jitted helper ``_rebuild_tile``, which :mod:`echo_kernels.echokv.attend` reuses to score
queries against rebuilt keys without writing them. Inputs may
be fp32 / fp16 / bf16 (cast to fp32 at load); the output has x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from echo_tutor.echokv.ops import check_rebuild_args

__all__ = ["forward"]


@triton.jit
def _rebuild_tile(x_ptr, cs, sn, w_ptr, b_ptr, bi, o, t, h, J, T, HALF, ROPE: tl.constexpr, BT: tl.constexpr,
                  BH: tl.constexpr, PREC: tl.constexpr = "ieee"):
    """Rebuilt head o for the tokens t of batch bi, as two [BT, BH] halves (post-RoPE when ROPE); PREC is
    tl.dot's input precision ("ieee" float32, or "tf32" for tensor cores)."""
    D = 2 * HALF
    mth = (t < T)[:, None] & (h < HALF)[None, :]
    mhh = (h < HALF)[:, None] & (h < HALF)[None, :]
    acc1 = tl.zeros((BT, BH), dtype=tl.float32)
    acc2 = tl.zeros((BT, BH), dtype=tl.float32)
    for j in range(J):
        xb = x_ptr + ((bi * J + j) * T) * D
        x1 = tl.load(xb + t[:, None] * D + h[None, :], mask=mth, other=0.0).to(tl.float32)
        x2 = tl.load(xb + t[:, None] * D + HALF + h[None, :], mask=mth, other=0.0).to(tl.float32)
        if ROPE:   # undo: pre = x cos - rotate_half(x) sin, rotate_half(x1, x2) = (-x2, x1)
            p1 = x1 * cs + x2 * sn
            p2 = x2 * cs - x1 * sn
        else:
            p1 = x1
            p2 = x2
        wb = w_ptr + ((o * J + j) * D) * D
        w11 = tl.load(wb + h[:, None] * D + h[None, :], mask=mhh, other=0.0).to(tl.float32)
        w12 = tl.load(wb + h[:, None] * D + HALF + h[None, :], mask=mhh, other=0.0).to(tl.float32)
        w21 = tl.load(wb + (HALF + h[:, None]) * D + h[None, :], mask=mhh, other=0.0).to(tl.float32)
        w22 = tl.load(wb + (HALF + h[:, None]) * D + HALF + h[None, :], mask=mhh, other=0.0).to(tl.float32)
        acc1 += tl.dot(p1, w11, input_precision=PREC) + tl.dot(p2, w21, input_precision=PREC)
        acc2 += tl.dot(p1, w12, input_precision=PREC) + tl.dot(p2, w22, input_precision=PREC)
    acc1 += tl.load(b_ptr + o * D + h, mask=h < HALF, other=0.0).to(tl.float32)[None, :]
    acc2 += tl.load(b_ptr + o * D + HALF + h, mask=h < HALF, other=0.0).to(tl.float32)[None, :]
    if ROPE:       # re-apply: y cos + rotate_half(y) sin
        y1 = acc1 * cs - acc2 * sn
        y2 = acc2 * cs + acc1 * sn
    else:
        y1 = acc1
        y2 = acc2
    return y1, y2


@triton.jit
def _load_rope(cos_ptr, sin_ptr, t, h, T, HALF):
    """The first halves of the RoPE tables for tokens t: [BT, BH] each (the two halves are equal)."""
    mth = (t < T)[:, None] & (h < HALF)[None, :]
    cs = tl.load(cos_ptr + t[:, None] * 2 * HALF + h[None, :], mask=mth, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + t[:, None] * 2 * HALF + h[None, :], mask=mth, other=0.0).to(tl.float32)
    return cs, sn


@triton.jit
def _rebuild_kernel(x_ptr, cos_ptr, sin_ptr, w_ptr, b_ptr, y_ptr, J, O, T, HALF,
                    ROPE: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
    pid = tl.program_id(0)                # batch * O + o
    bi = pid // O
    o = pid % O
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    h = tl.arange(0, BH)
    cs, sn = _load_rope(cos_ptr, sin_ptr, t, h, T, HALF)
    y1, y2 = _rebuild_tile(x_ptr, cs, sn, w_ptr, b_ptr, bi, o, t, h, J, T, HALF, ROPE, BT, BH)
    mth = (t < T)[:, None] & (h < HALF)[None, :]
    yb = y_ptr + ((bi * O + o) * T) * 2 * HALF
    tl.store(yb + t[:, None] * 2 * HALF + h[None, :], y1.to(y_ptr.dtype.element_ty), mask=mth)
    tl.store(yb + t[:, None] * 2 * HALF + HALF + h[None, :], y2.to(y_ptr.dtype.element_ty), mask=mth)


def forward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
            rope: bool = True) -> torch.Tensor:
    """Triton twin of :func:`echo_tutor.echokv.ops.rebuild_heads` (same arguments and result).

    x ``[B, J, T, D]``, cos/sin ``[T, D]`` (the two halves equal, as in Llama), W ``[O, J, D, D]``,
    b ``[O, D]`` -> ``[B, O, T, D]``."""
    check_rebuild_args(x, cos, sin, W, b)
    B, J, T, D = x.shape
    O = W.shape[0]
    y = torch.empty(B, O, T, D, device=x.device, dtype=x.dtype)
    if O == 0 or T == 0:
        return y
    half = D // 2
    BH = max(16, triton.next_power_of_2(half))
    BT = 32 if T >= 32 else 16
    _rebuild_kernel[(B * O, triton.cdiv(T, BT))](x.contiguous(), cos.contiguous(), sin.contiguous(), W.contiguous(),
                                                 b.contiguous(), y, J, O, T, half, ROPE=bool(rope), BT=BT, BH=BH)
    return y
