"""Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864), rotate-half form."""

from __future__ import annotations

import torch

from .._checks import check_tensor
from ..errors import BadArgumentError

__all__ = ["apply_rope", "rotate", "rotate_half"]


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (rotate-half form). x ``[B, H, T, D]`` (D even), positions ``[T]``."""
    check_tensor("x", x, 4, layout="[B, H, T, D]", finite=False)
    D = x.shape[-1]
    if D % 2:
        raise BadArgumentError(f"x must have an even head size D for RoPE, got shape {tuple(x.shape)}")
    if not isinstance(positions, torch.Tensor) or positions.ndim != 1 or positions.shape[0] != x.shape[2]:
        raise BadArgumentError(f"positions must be a 1-D tensor of length T={x.shape[2]}, "
                         f"got {getattr(positions, 'shape', type(positions).__name__)}")
    fdt = torch.float64 if x.dtype == torch.float64 else torch.float32  # angles at least in float32
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=x.device, dtype=fdt) / D))  # [D/2]
    ang = positions.to(fdt)[:, None] * inv_freq[None]  # [T, D/2]
    ang = torch.cat([ang, ang], dim=-1)  # [T, D]: the two halves share their angles
    return rotate(x, torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotate-half pairing (Llama's): ``(x1, x2) -> (-x2, x1)`` on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """Rotate ``x [..., T, D]`` by the angles whose cos and sin (broadcastable to ``x``, each half of D
    repeating the other's angles, as a model's rotary table gives them) are given; ``inverse``: by the
    opposite angles. The one RoPE rotation of the package (SmolLM2's tables included)."""
    return x * cos - rotate_half(x) * sin if inverse else x * cos + rotate_half(x) * sin

