"""Causal softmax attention with RoPE and a KV cache (full, or a sliding window).

Shapes: activations ``[B, T, d_model]``; per head ``[B, H, T, D]`` with ``D = d_model // n_heads``. The KV
cache grows by ``2 H D`` floats per token: exact recall, memory linear in the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_positive, check_tensor
from ..errors import BadArgumentError
from .rope import apply_rope

__all__ = ["KVCache", "CausalSelfAttention"]


@dataclass
class KVCache:
    """The keys and values kept so far: k, v ``[B, H, T_kept, D]`` (keys after RoPE).

    ``dropped`` counts the oldest tokens a sliding window has evicted (0 for full attention), so the next
    token's absolute position is ``dropped + length``."""

    k: torch.Tensor
    v: torch.Tensor
    dropped: int = 0

    @property
    def length(self) -> int:
        return self.k.shape[2]

    @property
    def position(self) -> int:
        return self.dropped + self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v))



class CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention with RoPE (torch SDPA) and a KV cache.

    ``window=None``: full attention, the cache grows by one key and value per token. ``window=W``: sliding-
    window attention, token ``t`` sees tokens ``t-W+1 .. t`` only and the cache keeps the last ``W`` tokens
    (a fixed-size memory: anything further back is gone).

    ``rope=False`` drops the rotary position embedding (NoPE), as hybrids whose recurrent blocks already
    carry position often do (Jamba): then every dimension of q and k can match content at any distance.
    With RoPE, a pair of dimensions rotating by ``theta_i`` per token only matches content reliably over
    distances ``d << 1 / theta_i``.

    Shapes: ``forward(x [B, T, d_model], state=None) -> (y [B, T, d_model], KVCache)``;
    ``step(x_t [B, d_model], cache) -> (y_t [B, d_model], KVCache)``.
    """

    def __init__(self, d_model: int, n_heads: int, rope_base: float = 10000.0, window: int | None = None,
                 rope: bool = True) -> None:
        super().__init__()
        check_int("d_model", d_model, min_value=1)
        check_int("n_heads", n_heads, min_value=1)
        check_positive("rope_base", rope_base)
        if window is not None:
            check_int("window", window, min_value=1)
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise BadArgumentError(f"n_heads={n_heads} must divide d_model={d_model} into an even head size (RoPE)")
        self.d_model, self.n_heads, self.head_dim, self.rope_base = d_model, n_heads, d_model // n_heads, rope_base
        self.window, self.rope = window, bool(rope)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> KVCache:
        device = device if device is not None else self.qkv.weight.device
        dtype = dtype or self.qkv.weight.dtype
        empty = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVCache(empty, empty.clone())

    def state_nbytes(self, batch: int = 1, context: int = 0) -> int:
        """KV-cache bytes after ``context`` tokens: ``2 * min(context, window) * d_model * itemsize`` per sequence."""
        kept = context if self.window is None else min(context, self.window)
        return 2 * batch * kept * self.d_model * self.qkv.weight.element_size()

    def forward(self, x: torch.Tensor, state: KVCache | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """x ``[B, T, d_model]`` -> y ``[B, T, d_model]`` and the KV cache after the last token. ``mask``
        (SKA's write weights, part of the mixer interface ``models.mixer.Mixer``) is ignored."""
        check_tensor("x", x, 3, layout="[B, T, d_model]")
        B, T, d = x.shape
        if d != self.d_model:
            raise BadArgumentError(f"x must have last dim d_model={self.d_model}, got shape {tuple(x.shape)}")
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        past = state.length  # cached tokens; the first new token sits at absolute position state.position
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
        pos = torch.arange(state.position, state.position + T, device=x.device)
        if self.rope:
            q, k = apply_rope(q, pos, self.rope_base), apply_rope(k, pos, self.rope_base)
        k_all, v_all = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)  # [B, H, past+T, D]
        if past == 0 and self.window is None:
            y = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
        else:  # query i (cache index past+i) sees cache indices j <= past+i (and > past+i-W with a window)
            i = torch.arange(T, device=x.device)[:, None] + past
            j = torch.arange(past + T, device=x.device)[None]
            mask = j <= i
            if self.window is not None:
                mask = mask & (j > i - self.window)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, d)
        dropped = state.dropped
        if self.window is not None and k_all.shape[2] > self.window:  # evict what no later token can see
            cut = k_all.shape[2] - self.window
            k_all, v_all, dropped = k_all[:, :, cut:].contiguous(), v_all[:, :, cut:].contiguous(), dropped + cut
        return self.out(y), KVCache(k_all, v_all, dropped)

    def step(self, x_t: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        check_tensor("x_t", x_t, 2, layout="[B, d_model]")
        if not isinstance(state, KVCache):
            raise BadArgumentError(f"state must be a KVCache (from init_state), got {type(state).__name__}")
        y, state = self.forward(x_t[:, None], state)
        return y[:, 0], state

