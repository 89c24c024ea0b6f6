"""The EchoKV-lite rebuild as one op, the PyTorch twin of ``kernels.echokv.forward``.

:func:`rebuild_heads` takes the retained heads a layer's discarded heads are rebuilt from (keys as
cached, i.e. after RoPE), undoes RoPE, applies every discarded head's linear map, adds the bias and
re-applies RoPE: the whole read path of a compressed layer for one kind, for a block of tokens.
"""

from __future__ import annotations

import torch

from .capture import apply_rope, undo_rope


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
    xf = x.float()
    if rope:
        xf = undo_rope(xf, cos[None].float(), sin[None].float())
    y = torch.einsum("bjtd,ojde->bote", xf, W.float()) + b.float()[None, :, None, :]
    if rope:
        y = apply_rope(y, cos[None].float(), sin[None].float())
    return y.to(x.dtype)
