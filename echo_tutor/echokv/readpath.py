"""EchoKV's compressed decode read, one layer's discarded heads, by path: the shared pieces of
``benchmarks/echokv_read.py`` and lab 07 (inputs at SmolLM2's sizes, the paths)."""

from __future__ import annotations

import torch

from ..backends import triton_op
from .ops import rebuild_attend, rebuild_heads

__all__ = ["read_case", "read_paths"]


def read_case(T: int, J: int, O: int, G: int, D: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Random inputs of one decode read: ``(q [1, O, G, D], xk, xv [1, J, T, D], cos, sin [T, D],
    Wk, bk, Wv, bv)``, the arguments of :func:`echo_tutor.echokv.ops.rebuild_attend`."""
    g = torch.Generator().manual_seed(T)
    xk, xv = (torch.randn(1, J, T, D, generator=g).to(device, dtype) for _ in range(2))
    ang = torch.arange(T)[:, None] * torch.logspace(0, -4, D // 2)[None]
    ang = torch.cat([ang, ang], -1)
    Wk, Wv = (torch.randn(O, J, D, D, generator=g).div(D**0.5 * J**0.5).to(device) for _ in range(2))
    bk, bv = (torch.randn(O, D, generator=g).to(device) for _ in range(2))
    q = torch.randn(1, O, G, D, generator=g).to(device, dtype)
    return q, xk, xv, ang.cos().to(device), ang.sin().to(device), Wk, bk, Wv, bv


def _attend(q, k, v):
    """Softmax attention in the cache's dtype (what a model's read does); float32 out."""
    k, v = k.to(q.dtype), v.to(q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).float()


def read_paths(device: str = "cpu") -> dict:
    """``{name: make}``, ``make(case)`` -> a no-argument function returning the attention output ``[1, O, G, D]``:
    "full" (K and V stored), "rebuild K+V" (what EchoKVCache does), "values after" (keys rebuilt, value maps
    after the average); on CUDA also the Triton rebuild kernel and the Triton scores kernel (ieee and tf32)."""
    def full(c):
        k, v = rebuild_heads(c[1], *c[3:7], True), rebuild_heads(c[2], c[3], c[4], c[7], c[8], False)  # stored
        return lambda: _attend(c[0], k, v)

    out = {"full": full,
           "rebuild K+V": lambda c: lambda: _attend(c[0], rebuild_heads(c[1], *c[3:7], True),
                                                    rebuild_heads(c[2], c[3], c[4], c[7], c[8], False)),
           "values after": lambda c: lambda: rebuild_attend(*c, values="after")[0]}
    # the kernels through backends.triton_op, the one resolution of a fast path (echo_tutor never imports
    # echo_kernels by name: the kernels sit above the package)
    forward, scores = triton_op("echokv", "forward"), triton_op("echokv", "scores")
    if device == "cuda" and forward is not None and scores is not None:
        out["triton rebuild K+V"] = lambda c: lambda: _attend(c[0], forward(c[1], *c[3:7], True),
                                                              forward(c[2], c[3], c[4], c[7], c[8], False))
        out["triton scores + values after"] = lambda c: lambda: rebuild_attend(*c, scores=scores)[0]

        def tf32(*a):
            return scores(*a, precision="tf32")
        out["same, tf32 products"] = lambda c: lambda: rebuild_attend(*c, scores=tf32)[0]
    return out
