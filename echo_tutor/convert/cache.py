"""``ConvertedCache``: a transformers ``Cache`` for a partly converted model.

Attention layers keep their K/V rows as in a ``DynamicCache``; each converted layer keeps its fixed-size
:class:`~echo_tutor.convert.spec.MixerState` in its own cache layer (:class:`MixerSlot`), so the decode state
lives in the cache object, not on the module, as :class:`~echo_tutor.echokv.cache.EchoKVCache` keeps its
compressed heads. Use it like any cache, inside :func:`~echo_tutor.convert.layers.converted`::

    with converted(model, mixers):
        cache = ConvertedCache(model)
        out = model(ids, cache=cache, use_cache=True)         # prefill: each converted layer builds its state
        out = model(next_id, cache=cache, use_cache=True)     # one token: each converted layer steps it

A slot reports the tokens its layer has read as its sequence length, so the model's positions and masks are
right whichever layers are converted (layer 0 included).
"""

from __future__ import annotations

from ..errors import BadArgumentError
from .mixer import ConvertedAttention
from .spec import MixerState

__all__ = ["ConvertedCache", "MixerSlot"]

_NEEDS_EXTRA = "ConvertedCache needs the echokv extra: pip install 'echo_tutor[echokv]'"

try:
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # transformers is the optional extra: importing this module must work without it
    class _NeedsTransformers:
        """Placeholder base: constructing a subclass raises."""

        def __new__(cls, *args, **kwargs):
            raise ImportError(_NEEDS_EXTRA)

    DynamicCache = DynamicLayer = _NeedsTransformers  # type: ignore[misc,assignment]


class MixerSlot(DynamicLayer):
    """One converted layer's place in the cache: ``state`` (a :class:`MixerState`, None before the prefill)."""

    def __init__(self) -> None:
        super().__init__()
        self.state: MixerState | None = None

    def get_seq_length(self) -> int:
        return 0 if self.state is None else self.state.count

    def update(self, *args, **kwargs):
        raise BadArgumentError("a converted layer keeps a MixerState, not K/V rows: nothing may update its slot")

    def reset(self) -> None:
        super().reset()
        self.state = None

    @property
    def nbytes(self) -> int:
        return 0 if self.state is None else self.state.nbytes


class ConvertedCache(DynamicCache):
    """A cache for ``model`` as it is now: a :class:`MixerSlot` for each layer whose ``self_attn`` is a
    :class:`ConvertedAttention`, a ``DynamicLayer`` for each other one.

    ``nbytes`` counts the tensors held (K/V rows and mixer states); a converted layer's share stops growing once
    its window is full."""

    def __init__(self, model) -> None:
        layers = getattr(getattr(model, "model", None), "layers", None)
        if layers is None:
            raise BadArgumentError(f"model must be a Llama-style causal LM (model.model.layers), got {type(model).__name__}")
        super().__init__()
        self.layers = [MixerSlot() if isinstance(blk.self_attn, ConvertedAttention) else DynamicLayer() for blk in layers]
        self.layer_class_to_replicate = None

    def mixer_slot(self, layer_idx: int | None) -> MixerSlot:
        """The slot of converted layer ``layer_idx`` (a ``BadArgumentError`` if that layer was not converted
        when the cache was made)."""
        if layer_idx is None or not 0 <= layer_idx < len(self.layers) or not isinstance(self.layers[layer_idx], MixerSlot):
            raise BadArgumentError(f"layer {layer_idx} has no mixer slot in this ConvertedCache: make the cache "
                                   "inside `converted(model, mixers)`, after the layers are swapped")
        return self.layers[layer_idx]

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds now."""
        n = 0
        for layer in self.layers:
            if isinstance(layer, MixerSlot):
                n += layer.nbytes
            elif getattr(layer, "is_initialized", False) and layer.keys is not None:
                n += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        return n
