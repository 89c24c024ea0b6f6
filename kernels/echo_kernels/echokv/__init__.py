"""Triton kernel for EchoKV-lite's read path. Twin: :func:`echo_tutor.echokv.ops.rebuild_heads`.

The kernel and its launcher live in :mod:`echo_kernels.echokv.rebuild`; this package re-exports ``forward``
(what ``echo_tutor.backends.triton_op("echokv")`` looks up) and ``scores``
(:mod:`echo_kernels.echokv.attend`: decode scores against keys rebuilt in registers, never written).
"""

from .attend import scores
from .rebuild import forward

__all__ = ["forward", "scores"]
