"""``EchoKVCache``: a transformers ``Cache`` with full, compressed and simulated modes.

* ``mode="full"``: a plain dynamic cache. Logits are bit-identical to the model without it.
* ``mode="compressed"``: each layer *stores only the retained heads* (post-RoPE keys as the model
  produced them, values). When attention reads layer l, the discarded heads of all past tokens are
  rebuilt from the retained heads of layers l-1..l+1 (keys: RoPE is undone on the retained keys, the
  map runs in pre-RoPE space, RoPE is re-applied at each token's position). Tokens of the current
  forward pass are used exactly; they are stored compressed and rebuilt on later reads.
* ``mode="simulated"``: a full cache whose discarded heads are overwritten with their rebuilt values
  by :meth:`EchoKVCache.compress_now` (same numbers as compressed, no memory saving; quick studies).

``compress_now()`` switches a full cache to compressed (or overwrites, in simulated mode) in the
middle of a generation. Positions are assumed to be 0, 1, 2, ... in cache order (the default
``position_ids`` of transformers' generation).
"""

from __future__ import annotations

from typing import Callable

import torch

from .._checks import check_choice
from ..backends import BACKENDS, resolve_backend, triton_op
from ..errors import BadArgumentError
from .capture import apply_rope, rope_cos_sin, undo_rope
from .model import attention_layout
from .ops import rebuild_heads
from .reconstructor import Reconstructor

_NEEDS_EXTRA = "EchoKVCache needs the echokv extra: pip install 'echo_tutor[echokv]'"

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:
    # transformers is the optional ``echokv`` extra. Fitting, the rebuild op and the Triton kernel
    # (which imports echo_tutor.echokv.ops) do not need it, so importing this package must work
    # without it; only building a cache does. The placeholder fails at construction time instead.
    class _NeedsTransformers:
        """Placeholder base of EchoKVCache and its layers: constructing a subclass raises."""

        def __new__(cls, *args, **kwargs):
            raise ImportError(_NEEDS_EXTRA)

    DynamicCache = DynamicLayer = _NeedsTransformers  # type: ignore[misc,assignment]

MODES = ("full", "compressed", "simulated")


def rebuild_layer(
    rec: Reconstructor,
    layer: int,
    get_kept: Callable[[str, int], torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    fused: Callable | None = None,
    stacks: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full K (post-RoPE) and V of ``layer`` from retained heads.

    Args:
        rec: the reconstructor.
        layer: which layer to rebuild.
        get_kept: ``get_kept(kind, l)`` -> the retained heads of layer ``l`` as [B, h_kept, T, D]
            (keys post-RoPE), in the order of ``rec.kept_heads(kind, l)``.
        cos, sin: RoPE tables for the T positions, [B or 1, T, D].
        fused: an op with the signature of :func:`echo_tutor.echokv.ops.rebuild_heads` (the PyTorch
            twin or ``echo_kernels.echokv.forward``), used for linear maps; None for the per-head path.
        stacks: an optional memo for :meth:`Reconstructor.linear_stack` (valid while the maps are frozen).

    Returns ``(K, V)``, each [B, H, T, D].
    """
    H, L, lw = rec.spec.n_kv_heads, rec.spec.n_layers, rec.spec.layer_window
    out = []
    for kind in ("K", "V"):
        missing = rec.missing_heads(kind, layer)
        here = get_kept(kind, layer)
        stack = None
        if fused is not None and missing:
            if stacks is None:
                stack = rec.linear_stack(kind, layer)
            else:
                if (kind, layer) not in stacks:
                    stacks[(kind, layer)] = rec.linear_stack(kind, layer)
                stack = stacks[(kind, layer)]
        if stack is not None:
            ins, W, b, heads = stack
            xs = []
            for slot in ins:
                l, h = divmod(slot, H)
                src = here if l == layer else get_kept(kind, l)
                xs.append(src[:, rec.kept_heads(kind, l).index(h)])
            B_, _, T_, D_ = here.shape
            x = torch.stack(xs, 1) if xs else here.new_zeros(B_, 0, T_, D_)
            rebuilt = fused(x, cos[0], sin[0], W.to(x.device), b.to(x.device), kind == "K")
            full = [None] * H
            for j, h in enumerate(rec.kept_heads(kind, layer)):
                full[h] = here[:, j]
            for j, h in enumerate(heads):
                full[h] = rebuilt[:, j].to(here.dtype)
            out.append(torch.stack(full, dim=1))  # type: ignore[arg-type]
            continue
        if not missing:
            out.append(here)
            continue
        here_pre = undo_rope(here, cos, sin) if kind == "K" else here
        retained: dict[int, torch.Tensor] = {}
        for l in range(max(0, layer - lw), min(L - 1, layer + lw) + 1):
            x = here if l == layer else get_kept(kind, l)
            if kind == "K":
                x = here_pre if l == layer else undo_rope(x, cos, sin)
            for j, h in enumerate(rec.kept_heads(kind, l)):
                retained[l * H + h] = x[:, j]
        B, _, T, D = here.shape
        heads: list[torch.Tensor | None] = [None] * H
        for j, h in enumerate(rec.kept_heads(kind, layer)):
            heads[h] = here[:, j]
        for h in missing:
            y = rec.rebuild(kind, layer * H + h, retained)
            y = y.expand(B, T, D) if y.ndim == 1 else y
            heads[h] = apply_rope(y, cos, sin) if kind == "K" else y
        out.append(torch.stack(heads, dim=1).to(here.dtype))  # type: ignore[arg-type]
    return out[0], out[1]


def simulate(
    rec: Reconstructor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Replace the discarded heads of full per-layer caches (keys post-RoPE, each [B, H, T, D]) by
    their reconstructions. Differentiable with respect to the reconstructor's parameters."""
    def get_kept(kind: str, l: int) -> torch.Tensor:
        src = keys[l] if kind == "K" else values[l]
        return src[:, rec.kept_heads(kind, l)]

    pairs = [rebuild_layer(rec, l, get_kept, cos, sin) for l in range(len(keys))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class _EchoLayer(DynamicLayer):
    """One layer's storage: all heads (full / simulated) or only the retained ones (compressed)."""

    def __init__(self):
        super().__init__()
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        super().reset()
        self.length = 0


class EchoKVCache(DynamicCache):
    """A KV cache for Llama-style transformers with an on-demand switch to EchoKV-lite compression.

    Args:
        model: the causal LM (checked with :func:`~echo_tutor.echokv.model.attention_layout`).
        reconstructor: a fitted :class:`~echo_tutor.echokv.reconstructor.Reconstructor` (needed unless
            ``mode="full"``; with it, ``compress_now()`` can switch later).
        mode: "full" | "compressed" | "simulated".
        backend: how compressed reads rebuild heads: "auto" (the Triton kernel ``echo_kernels.echokv`` on
            CUDA when installed, else the PyTorch op), "reference" or "triton" (warns once and falls
            back where it cannot run). ``last_backend`` records the path that ran.

    Use it like any cache: ``model(ids, cache=cache, use_cache=True)`` or
    ``model.generate(ids, cache=cache, ...)``. :attr:`nbytes` measures the tensors actually held.
    """

    def __init__(self, model, reconstructor: Reconstructor | None = None, mode: str = "full", *,
                 backend: str = "auto"):
        if mode not in MODES:
            raise BadArgumentError(f"mode must be one of {list(MODES)}, got {mode!r}")
        check_choice("backend", backend, BACKENDS)
        layout = attention_layout(model)
        if mode != "full" and reconstructor is None:
            raise BadArgumentError(f"mode={mode!r} needs a reconstructor (fit one with echo_tutor.echokv.fit_reconstructor)")
        if reconstructor is not None:
            spec = reconstructor.spec
            if (spec.n_layers, spec.n_kv_heads, spec.head_dim) != (layout.n_layers, layout.n_kv_heads, layout.head_dim):
                raise BadArgumentError(
                    f"reconstructor was fitted for (layers, kv heads, head_dim) = "
                    f"{(spec.n_layers, spec.n_kv_heads, spec.head_dim)}, the model has "
                    f"{(layout.n_layers, layout.n_kv_heads, layout.head_dim)}"
                )
        super().__init__()
        self.layers = [_EchoLayer() for _ in range(layout.n_layers)]
        self.layer_class_to_replicate = None
        self.model, self.rec, self.mode, self.layout = model, reconstructor, mode, layout
        self.backend = backend
        self.last_backend: str | None = None  # which rebuild path ran last: "reference" or "triton"
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None
        self._stacks: dict = {}  # stacked linear maps per (kind, layer), built on the first read

    # -- RoPE tables for positions 0..T-1, grown on demand --------------------------------------
    def _rope(self, T: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos is None or self._cos.shape[-2] < T or self._cos.device != like.device:
            n = max(T, 2 * (self._cos.shape[-2] if self._cos is not None else 0), 64)
            self._cos, self._sin = rope_cos_sin(self.model, torch.arange(n, device=like.device))
        return self._cos[:, :T].to(like.dtype), self._sin[:, :T].to(like.dtype)

    def _kept_idx(self, kind: str, layer: int) -> list[int]:
        return self.rec.kept_heads(kind, layer)  # type: ignore[union-attr]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        past, n = layer.length, key_states.shape[-2]
        if self.mode != "compressed":
            keys, values = layer.update(key_states, value_states)
            layer.length = past + n
            return keys, values
        # compressed: store the retained heads only
        k_new = key_states[:, self._kept_idx("K", layer_idx)]
        v_new = value_states[:, self._kept_idx("V", layer_idx)]
        if not layer.is_initialized:
            layer.lazy_initialization(k_new, v_new)
            layer.keys, layer.values = k_new, v_new
        else:
            layer.keys = torch.cat([layer.keys, k_new], dim=-2)
            layer.values = torch.cat([layer.values, v_new], dim=-2)
        layer.length = past + n
        if past == 0:
            return key_states, value_states
        cos, sin = self._rope(past, key_states)

        def get_kept(kind: str, l: int) -> torch.Tensor:
            lay = self.layers[l]
            return (lay.keys if kind == "K" else lay.values)[..., :past, :]

        self.last_backend = resolve_backend(self.backend, "echokv", key_states.device)
        fused = triton_op("echokv") if self.last_backend == "triton" else rebuild_heads
        k_past, v_past = rebuild_layer(self.rec, layer_idx, get_kept, cos, sin, fused, self._stacks)  # type: ignore[arg-type]
        return torch.cat([k_past, key_states], dim=-2), torch.cat([v_past, value_states], dim=-2)

    @torch.no_grad()
    def compress_now(self) -> "EchoKVCache":
        """Switch to compressed storage now (``mode="full"`` -> ``"compressed"``), or, in simulated
        mode, overwrite the discarded heads of every stored token with their reconstructions."""
        if self.rec is None:
            raise BadArgumentError("compress_now() needs a reconstructor: pass one to EchoKVCache(...)")
        if self.mode == "compressed" or self.get_seq_length() == 0:
            if self.mode == "full":
                self.mode = "compressed"
            return self
        T = self.layers[0].length
        cos, sin = self._rope(T, self.layers[0].keys)
        if self.mode == "simulated":
            ks, vs = simulate(self.rec, [l.keys for l in self.layers], [l.values for l in self.layers], cos, sin)
            for lay, k, v in zip(self.layers, ks, vs):
                lay.keys, lay.values = k, v
            return self
        for i, lay in enumerate(self.layers):
            lay.keys = lay.keys[:, self._kept_idx("K", i)].contiguous()
            lay.values = lay.values[:, self._kept_idx("V", i)].contiguous()
        self.mode = "compressed"
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of the K/V tensors this cache holds right now."""
        return sum(
            t.numel() * t.element_size()
            for lay in self.layers if lay.is_initialized
            for t in (lay.keys, lay.values)
        )

    @property
    def full_nbytes(self) -> int:
        """Bytes a full cache of the same length, batch and dtype would hold."""
        lay = next((l for l in self.layers if l.is_initialized), None)
        if lay is None:
            return 0
        B = lay.keys.shape[0]
        return 2 * self.layout.n_layers * self.layout.n_kv_heads * lay.length * self.layout.head_dim * B * lay.keys.element_size()

    def __repr__(self) -> str:
        return f"EchoKVCache(mode={self.mode!r}, tokens={self.get_seq_length()}, bytes={self.nbytes})"
