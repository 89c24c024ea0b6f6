"""EchoKV's compressed decode read without writing rebuilt keys: scores in registers.

Twin: :func:`echo_tutor.echokv.ops.rebuild_scores`; the whole read is
:func:`echo_tutor.echokv.ops.rebuild_attend` with ``scores=echo_kernels.echokv.attend.scores``.

``scores(q, xk, cos, sin, Wk, bk, scale)``: one program per (batch x discarded head, block of BT past
tokens) rebuilds the block's keys in registers (``_rebuild_tile``, the rebuild kernel's tile) and
multiplies them by the head's G queries, writing only the ``[G, BT]`` scores: G floats per token
instead of a rebuilt D-wide key row. The values need no kernel: the softmax weights sum to one, so the
linear value maps apply once to the weighted sum of the retained values (``rebuild_attend(values="after")``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from echo_tutor.echokv.ops import check_rebuild_args
from echo_tutor.errors import BadArgumentError

from .rebuild import _load_rope, _rebuild_tile

__all__ = ["scores"]


@triton.jit
def _scores_kernel(q_ptr, x_ptr, cos_ptr, sin_ptr, w_ptr, b_ptr, s_ptr, J, O, G, T, HALF, scale,
                   BG: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)                # batch * O + o
    bi = pid // O
    o = pid % O
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    h = tl.arange(0, BH)
    g = tl.arange(0, BG)
    cs, sn = _load_rope(cos_ptr, sin_ptr, t, h, T, HALF)
    k1, k2 = _rebuild_tile(x_ptr, cs, sn, w_ptr, b_ptr, bi, o, t, h, J, T, HALF, True, BT, BH, PREC)
    mgh = (g < G)[:, None] & (h < HALF)[None, :]
    qb = q_ptr + (pid * G + g[:, None]) * 2 * HALF
    q1 = tl.load(qb + h[None, :], mask=mgh, other=0.0).to(tl.float32)
    q2 = tl.load(qb + HALF + h[None, :], mask=mgh, other=0.0).to(tl.float32)
    s = tl.dot(q1, tl.trans(k1), input_precision=PREC) + tl.dot(q2, tl.trans(k2), input_precision=PREC)
    tl.store(s_ptr + (pid * G + g[:, None]) * T + t[None, :], s * scale, mask=(g < G)[:, None] & (t < T)[None, :])


def scores(q: torch.Tensor, xk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, Wk: torch.Tensor,
           bk: torch.Tensor, scale: float, precision: str = "ieee") -> torch.Tensor:
    """Triton twin of :func:`echo_tutor.echokv.ops.rebuild_scores`: q ``[B, O, G, D]``, xk ``[B, J, T, D]``
    (post-RoPE), cos/sin ``[T, D]``, Wk ``[O, J, D, D]``, bk ``[O, D]`` -> ``[B, O, G, T]`` float32.
    ``precision``: "ieee" (float32 products) or "tf32" (tensor cores on a GPU: the rebuild is 2 J D
    FLOPs per key element, compute-bound at float32 rates; see benchmarks/echokv_read.py)."""
    if precision not in ("ieee", "tf32"):
        raise BadArgumentError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    check_rebuild_args(xk, cos, sin, Wk, bk)
    B, J, T, D = xk.shape
    O = Wk.shape[0]
    if q.ndim != 4 or tuple(q.shape[:2]) != (B, O) or q.shape[3] != D:
        raise BadArgumentError(f"q must have shape [B, O, G, D] = [{B}, {O}, G, {D}], got {tuple(q.shape)}")
    G = q.shape[2]
    out = torch.empty(B, O, G, T, device=xk.device, dtype=torch.float32)
    if O == 0 or T == 0 or G == 0:
        return out
    BT = 32 if T >= 32 else 16
    _scores_kernel[(B * O, triton.cdiv(T, BT))](q.contiguous(), xk.contiguous(), cos.contiguous(), sin.contiguous(),
                                                Wk.contiguous(), bk.contiguous(), out, J, O, G, T, D // 2, float(scale),
                                                BG=max(16, triton.next_power_of_2(G)), BT=BT,
                                                BH=max(16, triton.next_power_of_2(D // 2)), PREC=precision)
    return out
