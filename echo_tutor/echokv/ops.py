"""The EchoKV-lite rebuild as one op, the PyTorch twin of ``echo_kernels.echokv.forward``.

:func:`rebuild_heads` takes the retained heads a layer's discarded heads are rebuilt from (keys as
cached, i.e. after RoPE), undoes RoPE, applies every discarded head's linear map, adds the bias and
re-applies RoPE: the whole read path of a compressed layer for one kind, for a block of tokens.
"""

from __future__ import annotations

import torch

from .._checks import check_tensor
from ..errors import BadArgumentError
from .capture import apply_rope, undo_rope


def check_rebuild_args(x, cos, sin, W, b) -> None:
    """Shape checks shared by :func:`rebuild_heads` and ``echo_kernels.echokv.forward``."""
    check_tensor("x", x, 4, layout="[B, J, T, D]", finite=False)
    B, J, T, D = x.shape
    if D % 2:
        raise BadArgumentError(f"x's head size D must be even (RoPE pairs dims i and i + D/2), got shape {tuple(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, 2, layout="[T, D]", finite=False)
        if tuple(t.shape) != (T, D):
            raise BadArgumentError(f"{name} must have shape [T, D] = {(T, D)} to match x, got {tuple(t.shape)}")
    check_tensor("W", W, 4, layout="[O, J, D, D]", finite=False)
    if tuple(W.shape[1:]) != (J, D, D):
        raise BadArgumentError(f"W must have shape [O, J={J}, D={D}, D={D}] to match x, got {tuple(W.shape)}")
    check_tensor("b", b, 2, layout="[O, D]", finite=False)
    if tuple(b.shape) != (W.shape[0], D):
        raise BadArgumentError(f"b must have shape [O, D] = {(W.shape[0], D)}, got {tuple(b.shape)}")


def rebuild_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                  rope: bool = True) -> torch.Tensor:
    """Rebuild ``O`` discarded heads from ``J`` retained ones.

    Args:
        x: ``[B, J, T, D]`` retained heads (keys post-RoPE when ``rope``).
        cos, sin: ``[T, D]`` RoPE tables of the T positions.
        W: ``[O, J, D, D]`` the maps (input head j's D dims -> output D dims); b: ``[O, D]``.
        rope: True for keys (undo RoPE on the inputs, re-apply it on the outputs), False for values.
    Returns:
        ``[B, O, T, D]`` in x's dtype.
    """
    check_rebuild_args(x, cos, sin, W, b)
    xf = x.float()
    if rope:
        xf = undo_rope(xf, cos[None].float(), sin[None].float())
    y = torch.einsum("bjtd,ojde->bote", xf, W.float()) + b.float()[None, :, None, :]
    if rope:
        y = apply_rope(y, cos[None].float(), sin[None].float())
    return y.to(x.dtype)
