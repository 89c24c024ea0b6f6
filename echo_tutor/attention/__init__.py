"""Attention baselines: causal softmax attention with RoPE and a KV cache, and linear attention.

Shapes: activations ``[B, T, d_model]``; per head ``[B, H, T, D]`` with ``D = d_model // n_heads``.

* :class:`CausalSelfAttention` keeps every key and value (a KV cache that grows by ``2 H D`` floats per
  token): exact recall, memory linear in the context.
* :class:`LinearAttention` keeps ``C = sum_s v_s k_s^T`` (``[B, H, D, D]``) and reads ``y_t = C_t q_t``: the
  constant-memory teaching baseline, one gradient step from zero on SKA's regression loss.

Modules: ``rope`` (apply_rope), ``softmax`` (KVCache, CausalSelfAttention), ``linear`` (LinearAttention).
"""

from .linear import LinearAttention, LinearAttentionState
from .rope import apply_rope
from .softmax import CausalSelfAttention, KVCache

__all__ = ["KVCache", "CausalSelfAttention", "LinearAttention", "LinearAttentionState", "apply_rope"]
