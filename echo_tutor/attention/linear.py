"""Causal linear attention: the constant-memory teaching baseline.

It keeps ``C = sum_s v_s k_s^T`` (``[B, H, D, D]``) and reads ``y_t = C_t q_t``: one gradient step from zero
on SKA's regression loss (Katharopoulos et al. 2020, arXiv 2006.16236; here with L2-normalised keys and
queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_tensor
from ..errors import BadArgumentError

__all__ = ["LinearAttentionState", "LinearAttention"]


@dataclass
class LinearAttentionState:
    """C ``[B, H, D, D]`` = sum_s v_s k_s^T."""

    C: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.C.numel() * self.C.element_size()



class LinearAttention(nn.Module):
    """Causal linear attention ``y_t = (sum_{s<=t} v_s k_s^T) q_t`` with L2-normalised keys and queries.

    Chunked: inside a chunk ``(Q K^T o causal) V``, across chunks the running ``C``.
    Shapes as :class:`CausalSelfAttention`; the state is ``LinearAttentionState`` (constant in T).
    """

    def __init__(self, d_model: int, n_heads: int, chunk_size: int = 64) -> None:
        super().__init__()
        check_int("d_model", d_model, min_value=1)
        check_int("n_heads", n_heads, min_value=1)
        check_int("chunk_size", chunk_size, min_value=1)
        if d_model % n_heads:
            raise BadArgumentError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.d_model, self.n_heads, self.head_dim, self.chunk_size = d_model, n_heads, d_model // n_heads, chunk_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device=None, dtype=None) -> LinearAttentionState:
        device = device if device is not None else self.qkv.weight.device
        dtype = dtype or self.qkv.weight.dtype
        return LinearAttentionState(torch.zeros(batch, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype))

    def state_nbytes(self, batch: int = 1, context: int = 0) -> int:
        """Bytes of the state ``C`` for ``batch`` sequences, whatever the ``context`` read."""
        return self.init_state(batch, device="meta").nbytes

    def forward(self, x: torch.Tensor, state: LinearAttentionState | None = None, mask: torch.Tensor | None = None):
        """x ``[B, T, d_model]`` -> y ``[B, T, d_model]`` and the state after the last token. ``mask`` (SKA's
        write weights, part of the mixer interface ``models.mixer.Mixer``) is ignored."""
        check_tensor("x", x, 3, layout="[B, T, d_model]")
        B, T, d = x.shape
        if d != self.d_model:
            raise BadArgumentError(f"x must have last dim d_model={self.d_model}, got shape {tuple(x.shape)}")
        C = (state or self.init_state(B, x.device, x.dtype)).C
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        S = self.chunk_size
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
        ys = []
        for s in range(0, T, S):
            qc, kc, vc = q[:, :, s:s + S], k[:, :, s:s + S], v[:, :, s:s + S]
            n = qc.shape[2]
            scores = (qc @ kc.transpose(-1, -2)).masked_fill(~causal[:n, :n], 0)  # [B, H, n, n]
            ys.append(scores @ vc + qc @ C.transpose(-1, -2))  # in-chunk + earlier chunks (C q)
            C = C + vc.transpose(-1, -2) @ kc  # [B, H, D, D]
        y = torch.cat(ys, dim=2).transpose(1, 2).reshape(B, T, d)
        return self.out(y), LinearAttentionState(C)

    def step(self, x_t: torch.Tensor, state: LinearAttentionState):
        check_tensor("x_t", x_t, 2, layout="[B, d_model]")
        if not isinstance(state, LinearAttentionState):
            raise BadArgumentError(f"state must be a LinearAttentionState, got {type(state).__name__}")
        y, state = self.forward(x_t[:, None], state)
        return y[:, 0], state

